//! Where a machine's topic is published: `<prefix>.<DID address, lowercase hex>.<topic>`,
//! the topic's `/` turned into `.` (`/robot/imu` → `robot.imu`), so that `<prefix>.>`
//! is every machine, `<prefix>.<address>.>` every topic of one machine.

use crate::FeedError;

/// One chain's subject, in its parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChainSubject {
    /// The subject prefix (`peaq.stream`).
    pub prefix: String,
    /// The machine's address: 40 lowercase hex digits, no `0x`.
    pub address: String,
    /// The topic's tokens, joined by `.` (`robot.imu`).
    pub topic_tokens: String,
}

/// Checks a subject prefix: dot-separated tokens, none empty, no wildcard or space.
pub fn check_prefix(what: &str, prefix: &str) -> Result<(), FeedError> {
    tokens_ok(prefix).map_err(|reason| FeedError::Setting {
        what: what.to_string(),
        reason: format!("{prefix:?} is not a subject prefix: {reason}"),
    })
}

fn tokens_ok(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("it is empty".into());
    }
    for token in text.split('.') {
        if token.is_empty() {
            return Err("it has an empty token".into());
        }
        if let Some(c) = token
            .chars()
            .find(|c| c.is_whitespace() || matches!(c, '*' | '>') || c.is_control())
        {
            return Err(format!("{c:?} is not allowed in a subject"));
        }
    }
    Ok(())
}

/// The address of `did:peaq:0x…` (or of a bare `0x…` address), lowercase hex without `0x`.
pub fn did_address(did: &str) -> Result<String, FeedError> {
    let bad = |reason: &str| FeedError::Setting {
        what: "DID".into(),
        reason: format!("{did:?} {reason}"),
    };
    let rest = did.strip_prefix("did:peaq:").unwrap_or(did);
    let hex = rest
        .strip_prefix("0x")
        .or_else(|| rest.strip_prefix("0X"))
        .ok_or_else(|| bad("is not did:peaq:0x followed by a 20-byte address"))?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("does not name a 20-byte hex address"));
    }
    Ok(hex.to_ascii_lowercase())
}

impl ChainSubject {
    /// The subject of `topic` (`/robot/imu`) of the machine `did`, under `prefix`.
    pub fn new(prefix: &str, did: &str, topic: &str) -> Result<Self, FeedError> {
        check_prefix("subject prefix", prefix)?;
        let address = did_address(did)?;
        let tokens = topic.trim_start_matches('/').replace('/', ".");
        tokens_ok(&tokens).map_err(|reason| FeedError::Setting {
            what: "topic".into(),
            reason: format!("{topic:?} cannot be a subject: {reason}"),
        })?;
        Ok(ChainSubject {
            prefix: prefix.to_string(),
            address,
            topic_tokens: tokens,
        })
    }

    /// Reads a subject under `prefix` back into its parts; `None` if it is not one.
    pub fn parse(prefix: &str, subject: &str) -> Option<Self> {
        let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
        let (address, topic) = rest.split_once('.')?;
        if address.len() != 40
            || !address
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            || tokens_ok(topic).is_err()
        {
            return None;
        }
        Some(ChainSubject {
            prefix: prefix.to_string(),
            address: address.to_string(),
            topic_tokens: topic.to_string(),
        })
    }

    /// The subject itself.
    pub fn subject(&self) -> String {
        format!("{}.{}.{}", self.prefix, self.address, self.topic_tokens)
    }

    /// The topic as ROS names it (`/robot/imu`).
    pub fn topic(&self) -> String {
        format!("/{}", self.topic_tokens.replace('.', "/"))
    }

    /// Whether a chunk's `signature.machineDid` names this subject's machine.
    pub fn is_machine(&self, machine_did: &str) -> bool {
        did_address(machine_did).is_ok_and(|a| a == self.address)
    }
}

/// The subjects of every chain under `prefix` (`<prefix>.>`), or of one machine's.
pub fn wildcard(prefix: &str, address: Option<&str>) -> String {
    match address {
        Some(a) => format!("{prefix}.{a}.>"),
        None => format!("{prefix}.>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DID: &str = "did:peaq:0xAbCdEf0123456789aBcDeF0123456789abcdef01";

    #[test]
    fn a_topic_of_a_machine_has_one_subject_and_reads_back() {
        let s = ChainSubject::new("peaq.stream", DID, "/robot/imu").unwrap();
        assert_eq!(
            s.subject(),
            "peaq.stream.abcdef0123456789abcdef0123456789abcdef01.robot.imu"
        );
        assert_eq!(
            ChainSubject::parse("peaq.stream", &s.subject()),
            Some(s.clone())
        );
        assert_eq!(s.topic(), "/robot/imu");
        assert!(s.is_machine(&DID.to_lowercase()));
        assert!(!s.is_machine("did:peaq:0x0000000000000000000000000000000000000000"));
    }

    #[test]
    fn bad_prefixes_dids_and_subjects_are_named() {
        for prefix in ["", "a..b", "a.*", "a b", "a.>"] {
            let e = ChainSubject::new(prefix, DID, "/t")
                .unwrap_err()
                .to_string();
            assert!(e.contains("subject prefix"), "{e}");
        }
        let e = ChainSubject::new("p", "did:peaq:0x12", "/t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("20-byte"), "{e}");
        assert!(ChainSubject::new("p", DID, "/").is_err());
        assert_eq!(ChainSubject::parse("p", "p.xyz.t"), None);
        assert_eq!(
            ChainSubject::parse("p", "q.abcdef0123456789abcdef0123456789abcdef01.t"),
            None
        );
    }
}
