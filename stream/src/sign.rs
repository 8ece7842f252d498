//! Turning captured messages into signed data packages, a batch at a time:
//! field rules → one field-encryption call → canonical envelopes → one signing call.
//!
//! In two steps, so that a signer's failure costs only the second: [`rule_messages`]
//! applies the field rules and writes each payload's canonical JSON once (a placeholder
//! where each encrypted field's ciphertext goes); [`sign_ruled`] (retried as often as
//! needed, the sequence numbers renumbered in between) encrypts, signs, and lays each
//! package out as its line from the same payload text. [`sign_batch`] does both.

use crate::json::{self, Map, PyNumber, Value};
use crate::package::{self, DataPackage, PackageParts};
use crate::rules::{self, FieldRules, RuleError};
use crate::signer::{FieldEncryptor, PackageSigner, SignerError};

/// A captured message: `{"topic", "fields", "capturedAt", "sequenceNumber", "schemaVersion"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct UnsignedMessage {
    /// The topic the message was captured on; selects its field rules. Not signed.
    pub topic: String,
    /// The message's fields, before the field rules.
    pub fields: Map,
    /// `capturedAt`, signed as the package's `timestamp`.
    pub captured_at: String,
    /// A non-negative JSON integer (any size), kept as written.
    pub sequence_number: serde_json::Number,
    /// `schemaVersion`, a non-empty string, signed as the package's `schemaVersion`.
    pub schema_version: String,
}

/// A message that cannot be signed, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The message is not JSON; holds the parser's message.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The message is not a JSON object.
    #[error("expected a JSON object")]
    NotAnObject,
    /// A field of the message is missing or invalid.
    #[error("field `{field}` {problem}")]
    Field {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The topic's field rules cannot be applied to the message's fields.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The envelope cannot be written as canonical JSON (a non-finite number); holds the
    /// reason.
    #[error("envelope: {0}")]
    Canonical(String),
}

impl UnsignedMessage {
    /// Parses a captured message from JSON text; see [`UnsignedMessage::from_value`].
    pub fn from_json(text: &str) -> Result<Self, MessageError> {
        let value = json::parse(text).map_err(|e| MessageError::Json(e.to_string()))?;
        Self::from_value(value)
    }

    /// Reads a captured message from a JSON object. Fails when a field is missing or of the
    /// wrong type, when `sequenceNumber` is not a non-negative integer (`1.0` is refused),
    /// or when `schemaVersion` is empty. Other keys are ignored.
    pub fn from_value(value: Value) -> Result<Self, MessageError> {
        let Value::Object(mut map) = value else {
            return Err(MessageError::NotAnObject);
        };
        let mut take = |field: &'static str| {
            map.shift_remove(field).ok_or(MessageError::Field {
                field,
                problem: "is missing",
            })
        };
        let string = |field: &'static str, v: Value| match v {
            Value::String(s) => Ok(s),
            _ => Err(MessageError::Field {
                field,
                problem: "must be a string",
            }),
        };
        let topic = string("topic", take("topic")?)?;
        let fields = match take("fields")? {
            Value::Object(m) => m,
            _ => {
                return Err(MessageError::Field {
                    field: "fields",
                    problem: "must be an object",
                })
            }
        };
        let captured_at = string("capturedAt", take("capturedAt")?)?;
        let sequence_number = match take("sequenceNumber")? {
            Value::Number(n) if matches!(json::py_number(&n), PyNumber::Int(t) if !t.starts_with('-')) => {
                n
            }
            _ => {
                return Err(MessageError::Field {
                    field: "sequenceNumber",
                    problem: "must be a non-negative integer (1.0 is not 1)",
                })
            }
        };
        let schema_version = string("schemaVersion", take("schemaVersion")?)?;
        if schema_version.trim().is_empty() {
            return Err(MessageError::Field {
                field: "schemaVersion",
                problem: "must not be empty",
            });
        }
        Ok(UnsignedMessage {
            topic,
            fields,
            captured_at,
            sequence_number,
            schema_version,
        })
    }
}

/// A message after its field rules, ready to sign (again, if a try fails).
#[derive(Debug, Clone)]
pub struct RuledMessage {
    /// Canonical JSON of the payload, a placeholder where each ciphertext goes.
    payload: String,
    /// The placeholders, in the order of `plaintexts`.
    markers: Vec<String>,
    /// Canonical JSON of each value to encrypt.
    plaintexts: Vec<Vec<u8>>,
    /// Canonical JSON of `timestamp` (the message's `capturedAt`).
    timestamp: String,
    /// Canonical JSON of `schemaVersion`.
    schema_version: String,
    /// The sequence number it will be signed with; renumber before a retry if the signer
    /// continues elsewhere.
    pub sequence_number: serde_json::Number,
}

/// A signed package as one JSON line (no newline), as the published chunks hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageLine(String);

impl PackageLine {
    /// The line.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The line, owned.
    pub fn into_string(self) -> String {
        self.0
    }
    /// The package document it holds.
    pub fn to_package(&self) -> Result<DataPackage, crate::package::PackageError> {
        let value = json::parse(&self.0).map_err(crate::package::PackageError::Canonical)?;
        DataPackage::from_value(&value)
    }
}

/// Applies each message's field rules (taking its fields) and writes its payload's
/// canonical JSON once. A message the rules refuse keeps its error in its slot.
pub fn rule_messages<'r>(
    messages: Vec<UnsignedMessage>,
    rules_of: impl Fn(&str) -> Option<&'r FieldRules>,
) -> Vec<Result<RuledMessage, MessageError>> {
    let no_rules = FieldRules::default();
    messages
        .into_iter()
        .map(|m| {
            let ruled = rules::apply_owned(m.fields, rules_of(&m.topic).unwrap_or(&no_rules))?;
            let canonical =
                |v: &Value| json::canonical(v).map_err(|e| MessageError::Canonical(e.to_string()));
            let (markers, plaintexts) = ruled
                .pending
                .into_iter()
                .map(|p| (p.marker().to_string(), p.plaintext))
                .unzip();
            Ok(RuledMessage {
                payload: canonical(&Value::Object(ruled.payload))?,
                markers,
                plaintexts,
                timestamp: canonical(&Value::String(m.captured_at))?,
                schema_version: canonical(&Value::String(m.schema_version))?,
                sequence_number: m.sequence_number,
            })
        })
        .collect()
}

/// Encrypts, signs and lays out a ruled batch: one field-encryption call and one signing
/// call. Per-message problems stay in their slots; a signer or encryptor failure fails the
/// whole batch (nothing is consumed: try again).
pub fn sign_ruled(
    batch: &[Result<RuledMessage, MessageError>],
    signer: &dyn PackageSigner,
    encryptor: &dyn FieldEncryptor,
    signing_key_id: &str,
) -> Result<Vec<Result<PackageLine, MessageError>>, SignerError> {
    // One encryption call for every encrypted field of the batch.
    let plaintexts: Vec<&[u8]> = batch
        .iter()
        .flatten()
        .flat_map(|m| m.plaintexts.iter().map(Vec::as_slice))
        .collect();
    let ciphertexts = if plaintexts.is_empty() {
        Vec::new()
    } else {
        encryptor.encrypt_fields(&plaintexts)?
    };
    if ciphertexts.len() != plaintexts.len() {
        // Ciphertexts would shift between messages: fail the batch, as for signatures.
        return Err(SignerError::Unavailable(format!(
            "{} ciphertexts for {} encrypted fields",
            ciphertexts.len(),
            plaintexts.len()
        )));
    }
    let mut ciphertexts = ciphertexts.into_iter();

    let did = signer.did();
    // Per message: the payload with its ciphertexts, the sequence number, the envelope.
    let prepared: Vec<Result<Prepared, MessageError>> = batch
        .iter()
        .map(|ruled| {
            let m = ruled.as_ref().map_err(Clone::clone)?;
            prepare(m, did, &mut ciphertexts)
        })
        .collect();

    // One signing call for every envelope of the batch.
    let envelopes: Vec<&[u8]> = prepared
        .iter()
        .flatten()
        .map(|p| p.envelope.as_slice())
        .collect();
    let signatures = signer.sign_envelopes(&envelopes)?;
    if signatures.len() != envelopes.len() {
        return Err(SignerError::Unavailable(format!(
            "{} signatures for {} envelopes",
            signatures.len(),
            envelopes.len()
        )));
    }
    let mut signatures = signatures.into_iter();
    Ok(batch
        .iter()
        .zip(prepared)
        .map(|(ruled, prepared)| {
            let Prepared {
                payload, sequence, ..
            } = prepared?;
            let m = ruled.as_ref().map_err(Clone::clone)?;
            let signature = signatures
                .next()
                .map(|s| package::signature_hex(&s))
                .unwrap_or_default();
            Ok(PackageLine(
                PackageParts {
                    did,
                    timestamp: &m.timestamp,
                    schema_version: &m.schema_version,
                    sequence_number: &sequence,
                    payload: &payload,
                }
                .line(&signature, Some(signing_key_id)),
            ))
        })
        .collect())
}

/// One ruled message made ready to sign: its payload with the ciphertexts in place, its
/// sequence number's canonical text, and the envelope to sign.
struct Prepared {
    payload: String,
    sequence: String,
    envelope: Vec<u8>,
}

fn prepare(
    m: &RuledMessage,
    did: &str,
    ciphertexts: &mut impl Iterator<Item = String>,
) -> Result<Prepared, MessageError> {
    let mut payload = m.payload.clone();
    for marker in &m.markers {
        let ciphertext = ciphertexts.next().unwrap_or_default();
        // Base64 needs no escaping in a JSON string. A later rule may have removed the
        // placeholder (dotted keys): the value is gone, as in the reference.
        payload = payload.replacen(&format!("\"{marker}\""), &format!("\"{ciphertext}\""), 1);
    }
    let sequence = json::canonical(&Value::Number(m.sequence_number.clone()))
        .map_err(|e| MessageError::Canonical(e.to_string()))?;
    let envelope = PackageParts {
        did,
        timestamp: &m.timestamp,
        schema_version: &m.schema_version,
        sequence_number: &sequence,
        payload: &payload,
    }
    .envelope();
    Ok(Prepared {
        payload,
        sequence,
        envelope,
    })
}

/// Signs a batch ([`rule_messages`], then [`sign_ruled`]). Per-message problems (a rule
/// error) come back in that message's slot; a signer or encryptor failure fails the whole
/// batch.
pub fn sign_batch<'r>(
    messages: &[UnsignedMessage],
    rules_of: impl Fn(&str) -> Option<&'r FieldRules>,
    signer: &dyn PackageSigner,
    encryptor: &dyn FieldEncryptor,
    signing_key_id: &str,
) -> Result<Vec<Result<PackageLine, MessageError>>, SignerError> {
    let ruled = rule_messages(messages.to_vec(), rules_of);
    sign_ruled(&ruled, signer, encryptor, signing_key_id)
}
