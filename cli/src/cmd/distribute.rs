//! `peaqos stream distribute`: wait for a buyer's payment, grant the buyer every chunk of
//! the chain, and deliver the order's bundle so that `consume --download-url` (ours or the
//! reference's) gets the data.
//!
//! The reference's flags and polling contract (see `deliver::confirm`); where it differs on
//! purpose: a `"failed"` status ends the wait at once; the access files are camelCase (as
//! `consume` reads them) and travel inside the bundle with the chain, so the printed URL
//! is one `consume --download-url` accepts; `--delivery http` serves the bundle from this
//! process; `--keyd` grants with the machine's key.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use store::fetch::{fetch_chain, Fetch};
use store::{ChainPlace, S3Path};
use stream::access::{pack_files, BuyerIdentity};
use stream::layout;

use crate::cli::{Delivery, DistributeArgs};
use crate::deliver::bundle::{self, Ciphertexts};
use crate::deliver::confirm::{wait_for_payment, Polling};
use crate::deliver::serve::{self, Ended, ServeOptions};
use crate::deliver::{web, zipped};
use crate::output::{check, input, print_json, CliError, CliResult, Output};

/// An order id goes into object keys and URL paths: kept to what is safe in both.
fn check_order_id(order_id: &str) -> Result<(), CliError> {
    let ok = !order_id.is_empty()
        && order_id.len() <= 128
        && order_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !order_id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(CliError::Input(format!(
            "--order-id {order_id:?}: use 1 to 128 of A-Z a-z 0-9 . _ - (not starting with '.')"
        )))
    }
}

pub fn run(args: DistributeArgs, out: &Output) -> CliResult {
    // Everything that can be checked before the wait is checked before it.
    for (value, flag) in [
        (args.poll_interval, "--poll-interval"),
        (args.timeout, "--timeout"),
        (args.presign_expiry, "--presign-expiry"),
        (args.max_file_size as u64, "--max-file-size"),
    ] {
        if value == 0 {
            return Err(CliError::Input(format!(
                "{flag} must be a positive integer"
            )));
        }
    }
    check_order_id(&args.order_id)?;
    let confirmation_url = reqwest::Url::parse(&args.confirmation_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| input("--confirmation-url must be an http:// or https:// URL"))?;
    let s3_target = match args.delivery {
        Delivery::S3 => {
            let text = args.s3.as_deref().ok_or_else(|| {
                input("--s3 is required when --delivery is s3 (e.g. --s3 s3://my-bucket/prefix/)")
            })?;
            Some(S3Path::parse("--s3", text).map_err(input)?)
        }
        Delivery::Http => {
            if args.listen.is_none() {
                return Err(input("--listen is required when --delivery is http"));
            }
            None
        }
    };
    let granter = super::granter(&args.keyd, &args.owner_private_key_file)?;
    let runtime = crate::s3::runtime()?;
    let s3_bucket = s3_target
        .as_ref()
        .map(|path| crate::s3::open(path, &args.s3_options))
        .transpose()?;

    // The chain: its envelopes here (to grant), its ciphertexts where they are.
    let place = match args.chunk_dir.to_str() {
        Some(text) => ChainPlace::parse("--chunk-dir", text).map_err(input)?,
        None => ChainPlace::Dir(args.chunk_dir.clone()),
    };
    let envelopes_copy;
    let mut chain_bucket = None;
    let (envelopes_dir, chain_prefix): (&Path, Option<&S3Path>) = match &place {
        ChainPlace::Dir(dir) => (dir.as_path(), None),
        ChainPlace::S3(path) => {
            let bucket = chain_bucket.insert(crate::s3::open(path, &args.s3_options)?);
            envelopes_copy = tempfile::Builder::new()
                .prefix("peaqos-chain-")
                .tempdir()
                .map_err(|e| input(format!("cannot make a temporary directory: {e}")))?;
            runtime
                .block_on(fetch_chain(
                    bucket,
                    path,
                    envelopes_copy.path(),
                    Fetch::Envelopes,
                ))
                .map_err(|e| CliError::Network(format!("--chunk-dir {path}: {e}")))?;
            (envelopes_copy.path(), Some(path))
        }
    };
    let chunks = layout::read_chunks(envelopes_dir).map_err(input)?;
    if layout::read_manifest(envelopes_dir)
        .map_err(input)?
        .is_none()
    {
        return Err(input(format!(
            "--chunk-dir {}: no manifest.json (a chain is delivered with its manifest)",
            place
        )));
    }

    out.say(format!(
        "Waiting for payment confirmation (polling every {}s)...",
        args.poll_interval
    ));
    let client = web::client()?;
    let payment = runtime.block_on(wait_for_payment(
        &client,
        &confirmation_url,
        &args.order_id,
        Polling {
            interval: Duration::from_secs(args.poll_interval),
            timeout: Duration::from_secs(args.timeout),
        },
        &|why| out.say(why),
    ))?;
    out.say(format!(
        "Payment confirmed for buyer {} (tx: {})",
        payment.buyer_id, payment.tx_hash
    ));

    // The grant: every chunk, re-wrapped to the buyer's key; nothing is re-encrypted.
    let buyer =
        BuyerIdentity::new(&payment.buyer_id, &payment.buyer_public_key_hex).map_err(|e| {
            CliError::Check(format!(
                "the confirmation's buyer_public_key_hex: {}",
                e.reason
            ))
        })?;
    let entries = granter.grant(&chunks, &buyer).map_err(check)?;
    let access = pack_files(&buyer.public_key_hex, &entries, args.max_file_size);
    let access_count = access.len();
    let access_files: Vec<(String, String)> =
        access.into_iter().map(|f| (f.file_name, f.text)).collect();
    let bundle = match (chain_prefix, &chain_bucket) {
        (Some(path), Some(bucket)) => {
            let listed = runtime
                .block_on(bucket.list(&path.prefix))
                .map_err(|e| CliError::Network(format!("--chunk-dir {path}: {e}")))?;
            bundle::assemble(
                envelopes_dir,
                Ciphertexts::S3 {
                    bucket,
                    prefix: &path.prefix,
                    listed: &listed,
                },
                access_files,
            )?
        }
        _ => bundle::assemble(envelopes_dir, Ciphertexts::Dir(envelopes_dir), access_files)?,
    };

    let expiry = Duration::from_secs(args.presign_expiry);
    let delivered_at = layout::utc_now_iso8601();
    let result = |channel: &str, url: &str, extra: serde_json::Value| {
        let mut delivery = json!({
            "channel": channel,
            "download_url": url,
            "delivered_at": delivered_at,
            "presign_expiry": args.presign_expiry,
            "files": bundle.files.len(),
            "bytes": bundle.size(),
        });
        if let (Some(d), Some(e)) = (delivery.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        json!({
            "order_id": args.order_id,
            "buyer_id": payment.buyer_id,
            "tx_hash": payment.tx_hash,
            "chunks_distributed": chunks.len(),
            "access_files_count": access_count,
            "delivery": delivery,
        })
    };
    let report = |value: &serde_json::Value| {
        // One line per order in the log (never the URL: it is a bearer credential).
        out.say(format!(
            "order {}: buyer {}, {} chunks, {} files, {} bytes, link valid {}s",
            args.order_id,
            payment.buyer_id,
            chunks.len(),
            bundle.files.len(),
            bundle.size(),
            args.presign_expiry
        ));
        if args.json {
            print_json(value);
        } else {
            let url = value["delivery"]["download_url"].as_str().unwrap_or("—");
            println!("\nDistributing {} chunks\n", chunks.len());
            println!("  Buyer ID:      {}", payment.buyer_id);
            println!("  Access Files:  {access_count}");
            println!("  Download URL:  {url}");
            println!("  Expires:       {}s", args.presign_expiry);
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    };

    match args.delivery {
        Delivery::S3 => {
            let (Some(bucket), Some(path)) = (&s3_bucket, &s3_target) else {
                return Err(input("--s3 is required when --delivery is s3"));
            };
            let delivered =
                zipped::deliver(&bundle, bucket, path, &args.order_id, expiry, &runtime)?;
            report(&result(
                "s3",
                &delivered.url,
                json!({"object": delivered.object}),
            ));
            Ok(())
        }
        Delivery::Http => {
            let listen = args
                .listen
                .ok_or_else(|| input("--listen is required when --delivery is http"))?;
            let token = serve::new_token()?;
            let tls = match (&args.tls_cert, &args.tls_key) {
                (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                _ => None,
            };
            let options = ServeOptions {
                listen,
                public_url: args.public_url.as_deref(),
                tls,
                expiry,
                until: args.serve_until,
            };
            let ended = runtime.block_on(serve::serve(
                bundle.clone(),
                &args.order_id,
                token,
                options,
                |url| report(&result("http", url, json!({}))),
            ))?;
            match ended {
                Ended::Delivered => {
                    out.say(format!("order {}: delivered", args.order_id));
                    Ok(())
                }
                Ended::Expired if args.serve_until == serve::Until::Expiry => {
                    out.say(format!("order {}: link expired; stopped", args.order_id));
                    Ok(())
                }
                Ended::Expired => Err(CliError::Check(format!(
                    "order {}: the link expired before the buyer had every file",
                    args.order_id
                ))),
            }
        }
    }
}
