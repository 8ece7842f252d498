//! Turning captured messages into signed data packages, a batch at a time:
//! field rules → one field-encryption call → canonical envelopes → one signing call.

use crate::json::{self, Map, PyNumber, Value};
use crate::package::{self, DataPackage};
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

/// Signs a batch. Per-message problems (a rule error) come back in that message's slot;
/// a signer or encryptor failure fails the whole batch.
pub fn sign_batch<'r>(
    messages: &[UnsignedMessage],
    rules_of: impl Fn(&str) -> Option<&'r FieldRules>,
    signer: &dyn PackageSigner,
    encryptor: &dyn FieldEncryptor,
    signing_key_id: &str,
) -> Result<Vec<Result<DataPackage, MessageError>>, SignerError> {
    let no_rules = FieldRules::default();
    let ruled: Vec<Result<rules::Ruled, MessageError>> = messages
        .iter()
        .map(|m| {
            rules::apply(&m.fields, rules_of(&m.topic).unwrap_or(&no_rules))
                .map_err(MessageError::from)
        })
        .collect();

    // One encryption call for every encrypted field of the batch.
    let plaintexts: Vec<&[u8]> = ruled
        .iter()
        .flatten()
        .flat_map(|r| r.pending.iter().map(|p| p.plaintext.as_slice()))
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

    let did = signer.did().to_string();
    let mut results: Vec<Result<(Value, Vec<u8>), MessageError>> =
        Vec::with_capacity(messages.len());
    for (message, ruled) in messages.iter().zip(ruled) {
        results.push(ruled.and_then(|r| {
            let n = r.pending.len();
            let payload = Value::Object(r.fill(ciphertexts.by_ref().take(n).collect())?);
            let bytes = package::canonical_envelope(
                &did,
                &Value::String(message.captured_at.clone()),
                &Value::String(message.schema_version.clone()),
                &Value::Number(message.sequence_number.clone()),
                &payload,
            )
            .map_err(|e| MessageError::Canonical(e.to_string()))?;
            Ok((payload, bytes))
        }));
    }

    // One signing call for every envelope of the batch.
    let envelopes: Vec<&[u8]> = results
        .iter()
        .flatten()
        .map(|(_, b)| b.as_slice())
        .collect();
    let mut signatures = signer.sign_envelopes(&envelopes)?.into_iter();
    if signatures.len() != envelopes.len() {
        return Err(SignerError::Unavailable(format!(
            "{} signatures for {} envelopes",
            signatures.len(),
            envelopes.len()
        )));
    }
    Ok(messages
        .iter()
        .zip(results)
        .map(|(message, result)| {
            result.map(|(payload, _)| DataPackage {
                did: did.clone(),
                timestamp: Value::String(message.captured_at.clone()),
                schema_version: Value::String(message.schema_version.clone()),
                sequence_number: Value::Number(message.sequence_number.clone()),
                payload,
                signature: package::signature_hex(&signatures.next().expect("counted above")),
                signing_key_id: Some(signing_key_id.to_string()),
            })
        })
        .collect())
}
