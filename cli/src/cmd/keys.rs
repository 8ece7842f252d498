//! `peaqos keys generate`: development keys as hex files.

use serde_json::json;
use stream::keys::{write_secret_file, BoxKey, ChainKey, IdentityKey, Secret32};

use crate::cli::KeysGenerateArgs;
use crate::output::{input, print_json, CliResult, Output};

pub fn run(args: KeysGenerateArgs, out: &Output) -> CliResult {
    std::fs::create_dir_all(&args.out)
        .map_err(|e| input(format!("cannot create {}: {e}", args.out.display())))?;
    let dir = &args.out;
    let new = || Secret32::random().map_err(input);
    let write = |name: &str, secret: &Secret32, prefix: bool| {
        write_secret_file(&dir.join(name), secret, prefix).map_err(input)
    };
    let write_public = |name: &str, text: &str| {
        std::fs::write(dir.join(name), format!("{text}\n"))
            .map_err(|e| input(format!("cannot write {}: {e}", dir.join(name).display())))
    };

    // The identity key must be a valid secp256k1 scalar; retry on the (negligible) odd draw.
    let (identity_secret, identity) = loop {
        let secret = new()?;
        if let Ok(key) = IdentityKey::from_secret(&secret) {
            break (secret, key);
        }
    };
    write("identity.key", &identity_secret, true)?;
    let did = identity.did();
    write_public("identity.did", &did)?;
    write_public("identity.pub", &identity.public_key_hex())?;

    let chain_secret = new()?;
    let chain = ChainKey::from_secret(&chain_secret);
    write("chain.key", &chain_secret, false)?;
    write_public("chain.pub", &chain.public_key_hex())?;

    let mut boxes = serde_json::Map::new();
    for role in ["owner", "operator", "machine", "buyer"] {
        let secret = new()?;
        let public = BoxKey::from_secret(&secret).public_key_hex();
        write(&format!("{role}.key"), &secret, false)?;
        write_public(&format!("{role}.pub"), &public)?;
        boxes.insert(role.into(), public.into());
    }
    write("field.key", &new()?, false)?;

    let summary = json!({
        "did": did,
        "keyId": format!("{did}#keys-1"),
        "identityPublicKey": identity.public_key_hex(),
        "chainPublicKey": chain.public_key_hex(),
        "boxPublicKeys": boxes,
        "dir": dir.display().to_string(),
    });
    if args.json {
        print_json(&summary);
    } else {
        out.say(format!("Wrote development keys to {}", dir.display()));
        out.say(format!("  DID:          {did}"));
        out.say(format!("  Chain key:    {}", chain.public_key_hex()));
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
