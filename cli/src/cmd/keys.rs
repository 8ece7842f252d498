//! `peaqos keys generate`: development keys as hex files.

use serde_json::json;
use stream::devkeys::write_development_keys;

use crate::cli::KeysGenerateArgs;
use crate::output::{input, print_json, CliResult, Output};

pub fn run(args: KeysGenerateArgs, out: &Output) -> CliResult {
    let dir = &args.out;
    let keys = write_development_keys(dir).map_err(input)?;
    let boxes: serde_json::Map<String, serde_json::Value> = keys
        .box_public_hex
        .iter()
        .map(|(role, public)| ((*role).to_string(), public.clone().into()))
        .collect();
    let did = &keys.did;
    let summary = json!({
        "did": did,
        "keyId": format!("{did}#keys-1"),
        "identityPublicKey": keys.identity_public_hex,
        "chainPublicKey": keys.chain_public_hex,
        "boxPublicKeys": boxes,
        "dir": dir.display().to_string(),
    });
    if args.json {
        print_json(&summary);
    } else {
        out.say(format!("Wrote development keys to {}", dir.display()));
        out.say(format!("  DID:          {did}"));
        out.say(format!("  Chain key:    {}", keys.chain_public_hex));
        for (role, public) in summary["boxPublicKeys"].as_object().into_iter().flatten() {
            out.say(format!(
                "  {:<13} {}",
                format!("{role}:"),
                public.as_str().unwrap_or("")
            ));
        }
        out.say("  Secret files (*.key) are mode 0600. These are development keys: production keys live in keyd.");
    }
    Ok(())
}
