//! `peaqos stream grant`: buyer access files for a published chain.

use serde_json::json;
use stream::access::{pack_files, BuyerIdentity, BUYER_ACCESS_SCHEMA_VERSION};
use stream::layout::{self, Durability};

use store::fetch::Fetch;

use crate::cli::GrantArgs;
use crate::output::{check, input, print_json, CliError, CliResult, Output};
use crate::s3::LocalChain;

pub fn run(args: GrantArgs, out: &Output) -> CliResult {
    if args.max_file_size == 0 {
        return Err(CliError::Input(
            "--max-file-size must be greater than 0".into(),
        ));
    }
    let buyer_id = args.buyer_id.trim();
    if buyer_id.is_empty() {
        return Err(CliError::Input("--buyer-id must not be empty".into()));
    }
    let buyer = BuyerIdentity::new(buyer_id, &args.buyer_public_key)
        .map_err(|e| input(format!("--buyer-public-key: {}", e.reason)))?;
    let granter = super::granter(&args.keyd, &args.owner_private_key_file)?;
    let chain = LocalChain::open(
        "--chunk-dir",
        &args.chunk_dir,
        Fetch::Envelopes,
        &args.s3_options,
    )?;
    let chunks = layout::read_chunks(chain.dir()).map_err(input)?;
    if !args.json {
        out.say(format!(
            "Granting access to {} chunks for buyer {buyer_id}...",
            chunks.len()
        ));
    }
    let entries = granter.grant(&chunks, &buyer).map_err(check)?;
    let files = pack_files(&buyer.public_key_hex, &entries, args.max_file_size);

    std::fs::create_dir_all(&args.output_dir)
        .map_err(|e| input(format!("cannot create {}: {e}", args.output_dir.display())))?;
    for file in &files {
        layout::write_atomic(
            &args.output_dir,
            &file.file_name,
            file.text.as_bytes(),
            Durability::Atomic,
        )
        .map_err(input)?;
    }

    if args.json {
        print_json(&json!({
            "schemaVersion": BUYER_ACCESS_SCHEMA_VERSION,
            "buyerId": buyer_id,
            "chunkCount": chunks.len(),
            "fileCount": files.len(),
            "outputDir": args.output_dir.display().to_string(),
            "files": files.iter().map(|f| json!({"name": f.file_name, "sizeBytes": f.text.len()})).collect::<Vec<_>>(),
        }));
    } else {
        let label = if files.len() == 1 { "file" } else { "files" };
        out.say("");
        out.say(format!(
            "Wrote {} buyer access {label} to {}",
            files.len(),
            args.output_dir.display()
        ));
        out.say("");
        out.say(format!("  Schema:       {BUYER_ACCESS_SCHEMA_VERSION}"));
        out.say(format!("  Buyer ID:     {buyer_id}"));
        out.say(format!("  Chunks:       {}", chunks.len()));
        out.say(format!("  Files:        {}", files.len()));
        out.say("");
        for file in &files {
            out.say(format!(
                "    {}  ({})",
                file.file_name,
                format_size(file.text.len())
            ));
        }
    }
    Ok(())
}

fn format_size(bytes: usize) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else if bytes < 1024 * 1024 {
        format!("{:.1} KB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
    }
}
