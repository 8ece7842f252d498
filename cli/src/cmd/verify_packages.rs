//! `peaqos stream verify-packages`: verify signed data packages, one per line.

use std::io::BufRead;

use serde_json::json;
use stream::json;
use stream::package::DataPackage;

use crate::cli::VerifyPackagesArgs;
use crate::output::{input, print_json, CliError, CliResult, Output};

pub fn run(args: VerifyPackagesArgs, out: &Output) -> CliResult {
    let file = std::fs::File::open(&args.input)
        .map_err(|e| input(format!("cannot open --input {}: {e}", args.input.display())))?;
    let mut failed: Vec<(usize, String)> = Vec::new();
    let mut total = 0usize;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = i + 1;
        let line =
            line.map_err(|e| input(format!("{} line {number}: {e}", args.input.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        total += 1;
        let verdict = json::parse(&line)
            .map_err(|e| e.to_string())
            .and_then(|v| DataPackage::from_value(&v).map_err(|e| e.to_string()))
            .and_then(|p| {
                p.verify().map_err(|e| e.to_string())?;
                match args.expect_did.as_deref() {
                    Some(did) if !p.did.eq_ignore_ascii_case(did) => {
                        Err(format!("DID {} is not the expected {did}", p.did))
                    }
                    _ => Ok(()),
                }
            });
        if let Err(reason) = verdict {
            failed.push((number, reason));
        }
    }
    if args.json {
        print_json(&json!({
            "valid": failed.is_empty(),
            "packages": total,
            "failed": failed.iter().map(|(n, r)| json!({"line": n, "reason": r})).collect::<Vec<_>>(),
        }));
    }
    if failed.is_empty() {
        out.say(format!("\u{2713} {total} packages verify"));
        return Ok(());
    }
    for (number, reason) in failed.iter().take(20) {
        out.say(format!("line {number}: {reason}"));
    }
    let lines: Vec<String> = failed.iter().map(|(n, _)| n.to_string()).collect();
    Err(CliError::Check(format!(
        "{} of {total} packages do not verify (lines {})",
        failed.len(),
        if lines.len() > 50 {
            format!("{}, …", lines[..50].join(", "))
        } else {
            lines.join(", ")
        }
    )))
}
