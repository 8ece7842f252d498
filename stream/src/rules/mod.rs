//! The field rules engine (FORMATS.md §3), faithful to the reference, including its
//! dot-path semantics (a key containing `.` is addressed as if it were nested).
//!
//! `encrypt` is deferred: [`apply`] leaves a placeholder wrapper and returns the
//! plaintexts to encrypt, so a caller can encrypt a whole batch of messages in one
//! call (in process, or through keyd). [`Ruled::fill`] puts the ciphertexts in.

mod anonymize;
mod map;

pub use anonymize::bucket;
pub use map::{load_map_file, parse_map, FieldRulesDoc, MapError, TopicRules};

use crate::json::{self, Map, Value};

/// What a rule does to the fields it governs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Keep the value as it is.
    Include,
    /// Delete the key.
    Exclude,
    /// Replace the value by an `__encrypted` wrapper: AES-256-GCM of its canonical JSON.
    Encrypt,
    /// Replace the value by an `__anonymized` wrapper, by the rule's [`Strategy`].
    Anonymize,
    /// An action name the reference does not know: it behaves as `include` there, so here
    /// too. Map files reject unknown actions before they get this far.
    Other(String),
}

impl Action {
    /// The action named `name` (`include`, `exclude`, `encrypt`, `anonymize`; case
    /// matters); any other name is [`Action::Other`].
    pub fn parse(name: &str) -> Action {
        match name {
            "include" => Action::Include,
            "exclude" => Action::Exclude,
            "encrypt" => Action::Encrypt,
            "anonymize" => Action::Anonymize,
            other => Action::Other(other.to_string()),
        }
    }
}

/// How `anonymize` replaces a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// `0x` + sha256 hex of the value's canonical JSON.
    Hash,
    /// A coarser value: a decade bucket for a number, a masked string, `***` for a boolean
    /// or null; lists and objects element by element.
    Generalize,
    /// `"[REDACTED]"`.
    Redact,
}

impl Strategy {
    /// The strategy named `name` (`hash`, `generalize`, `redact`), or `None`.
    pub fn parse(name: &str) -> Option<Strategy> {
        match name {
            "hash" => Some(Strategy::Hash),
            "generalize" => Some(Strategy::Generalize),
            "redact" => Some(Strategy::Redact),
            _ => None,
        }
    }
    /// The strategy's name, as written into the `__anonymized` wrapper.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Hash => "hash",
            Strategy::Generalize => "generalize",
            Strategy::Redact => "redact",
        }
    }
}

/// One rule: `{fieldPath, action, anonymizeStrategy?}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Keys joined by dots: the rule governs this path and every path under it.
    pub field_path: String,
    /// What the rule does to the fields it governs.
    pub action: Action,
    /// The strategy of `anonymize`; ignored for other actions.
    pub anonymize_strategy: Option<Strategy>,
}

/// A topic's ordered rules and its default action (`include` when absent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldRules {
    /// The rules, in order: the first one that matches a path governs it.
    pub rules: Vec<Rule>,
    /// The action for paths no rule governs; `None` is `include`.
    pub default_action: Option<Action>,
}

/// A rule that cannot be applied to a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// `anonymize` governs a field but names no strategy (also when it is the default
    /// action, which has none).
    #[error("field {path}: anonymize needs an anonymize_strategy (hash, generalize or redact)")]
    MissingStrategy {
        /// The field's dot path.
        path: String,
    },
    /// A value cannot be processed: a non-finite number to encrypt or hash, a number
    /// `generalize` cannot bucket (as the reference raises), or, from [`Ruled::fill`], a
    /// wrong number of ciphertexts.
    #[error("field {path}: {reason}")]
    Value {
        /// The field's dot path; `$` for the whole payload.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// A value waiting for field encryption: the canonical JSON plaintext and where it goes.
#[derive(Debug, Clone)]
pub struct PendingEncryption {
    segments: Vec<String>,
    marker: String,
    /// Canonical JSON of the value: what AES-256-GCM encrypts.
    pub plaintext: Vec<u8>,
}

/// The payload after the rules, with `encrypt` placeholders still to fill.
#[derive(Debug, Clone)]
pub struct Ruled {
    /// The fields after the rules, with a placeholder `ciphertext` in each encrypted wrapper.
    pub payload: Map,
    /// The values waiting for encryption, in the order [`Ruled::fill`] takes their
    /// ciphertexts.
    pub pending: Vec<PendingEncryption>,
}

/// The field encryption algorithm name written into encrypted wrappers.
pub const FIELD_ALGORITHM: &str = "AES-256-GCM";

impl Ruled {
    /// Puts each ciphertext (base64 of iv ‖ ciphertext ‖ tag) in place of its placeholder.
    pub fn fill(mut self, ciphertexts: Vec<String>) -> Result<Map, RuleError> {
        if ciphertexts.len() != self.pending.len() {
            return Err(RuleError::Value {
                path: "$".into(),
                reason: format!(
                    "{} field ciphertexts for {} encrypted fields",
                    ciphertexts.len(),
                    self.pending.len()
                ),
            });
        }
        for (pending, ciphertext) in self.pending.iter().zip(ciphertexts) {
            // A later rule may have replaced or deleted the placeholder (dotted keys), in
            // which case the reference's value is gone too.
            if let Some(Value::Object(wrapper)) = get_path_mut(&mut self.payload, &pending.segments)
            {
                if wrapper.get("ciphertext").and_then(Value::as_str) == Some(&pending.marker) {
                    wrapper.insert("ciphertext".into(), Value::String(ciphertext));
                }
            }
        }
        Ok(self.payload)
    }

    /// True when no field waits for encryption.
    pub fn is_complete(&self) -> bool {
        self.pending.is_empty()
    }
}

/// The placeholders' prefix: printable (so it reads the same in canonical JSON) and random
/// per process, so no captured value can be mistaken for one.
fn marker_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| {
        let mut random = [0u8; 16];
        // Without randomness the prefix is still unusual; it only has to be unlike data.
        let _ = getrandom::getrandom(&mut random);
        format!("peaq-pending-ciphertext-{}-", hex::encode(random))
    })
}

/// Applies `rules` to `fields`, taking them (a topic without rules keeps its fields as they
/// are, without a copy).
pub fn apply_owned(fields: Map, rules: &FieldRules) -> Result<Ruled, RuleError> {
    let includes_all = rules.rules.is_empty()
        && matches!(
            rules.default_action,
            None | Some(Action::Include) | Some(Action::Other(_))
        );
    if includes_all {
        return Ok(Ruled {
            payload: fields,
            pending: Vec::new(),
        });
    }
    apply(&fields, rules)
}

impl PendingEncryption {
    /// The placeholder string standing where the ciphertext goes.
    pub fn marker(&self) -> &str {
        &self.marker
    }
}

/// Applies `rules` to `fields`.
pub fn apply(fields: &Map, rules: &FieldRules) -> Result<Ruled, RuleError> {
    let default_action = rules.default_action.clone().unwrap_or(Action::Include);
    let mut engine = Engine {
        rules: &rules.rules,
        default_action: &default_action,
        output: fields.clone(),
        pending: Vec::new(),
    };
    for (key, value) in fields {
        if value.is_null() {
            continue;
        }
        engine.process(key.clone(), value)?;
    }
    Ok(Ruled {
        payload: engine.output,
        pending: engine.pending,
    })
}

struct Engine<'a> {
    rules: &'a [Rule],
    default_action: &'a Action,
    output: Map,
    pending: Vec<PendingEncryption>,
}

impl Engine<'_> {
    /// Index of the first rule whose path is `path` or an ancestor of it.
    fn governing(&self, path: &str) -> Option<usize> {
        self.rules.iter().position(|rule| {
            let fp = rule.field_path.as_str();
            path == fp
                || (path.len() > fp.len()
                    && path.starts_with(fp)
                    && path.as_bytes()[fp.len()] == b'.')
        })
    }

    fn uniform(&self, value: &Map, path: &str, rule: Option<usize>) -> bool {
        value.iter().all(|(key, child)| {
            let child_path = format!("{path}.{key}");
            match child {
                Value::Object(inner) if !inner.is_empty() => self.uniform(inner, &child_path, rule),
                _ => self.governing(&child_path) == rule,
            }
        })
    }

    fn process(&mut self, path: String, value: &Value) -> Result<(), RuleError> {
        let rule = self.governing(&path);
        if let Value::Object(map) = value {
            if !map.is_empty() && !self.uniform(map, &path, rule) {
                for (key, child) in map {
                    self.process(format!("{path}.{key}"), child)?;
                }
                return Ok(());
            }
        }
        let action = match rule {
            Some(i) => self.rules[i].action.clone(),
            None => self.default_action.clone(),
        };
        match action {
            Action::Include | Action::Other(_) => {}
            Action::Exclude => delete_path(&mut self.output, &path),
            Action::Encrypt => {
                let plaintext = json::canonical_bytes(value).map_err(|e| RuleError::Value {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                let marker = format!("{}{}", marker_prefix(), self.pending.len());
                let mut wrapper = Map::with_capacity(3);
                wrapper.insert("__encrypted".into(), Value::Bool(true));
                wrapper.insert("ciphertext".into(), Value::String(marker.clone()));
                wrapper.insert("algorithm".into(), Value::String(FIELD_ALGORITHM.into()));
                let segments = split_path(&path);
                set_path(&mut self.output, &segments, Value::Object(wrapper));
                self.pending.push(PendingEncryption {
                    segments,
                    marker,
                    plaintext,
                });
            }
            Action::Anonymize => {
                let strategy = rule
                    .and_then(|i| self.rules[i].anonymize_strategy)
                    .ok_or_else(|| RuleError::MissingStrategy { path: path.clone() })?;
                let replaced = anonymize::anonymize(value, strategy, &path)?;
                set_path(&mut self.output, &split_path(&path), replaced);
            }
        }
        Ok(())
    }
}

fn split_path(path: &str) -> Vec<String> {
    if path.is_empty() {
        Vec::new()
    } else {
        path.split('.').map(str::to_string).collect()
    }
}

/// The reference's `set_field_at_path`: creates (or replaces non-objects with) objects
/// along the way.
fn set_path(root: &mut Map, segments: &[String], value: Value) {
    let Some((last, parents)) = segments.split_last() else {
        return;
    };
    let mut current = root;
    for segment in parents {
        let entry = current.entry(segment.clone()).or_insert(Value::Null);
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        current = match entry {
            Value::Object(map) => map,
            _ => unreachable!("just made an object"),
        };
    }
    current.insert(last.clone(), value);
}

/// The reference's `delete_field_at_path`: removes the key only when the whole path exists.
fn delete_path(root: &mut Map, path: &str) {
    let segments = split_path(path);
    let Some((last, parents)) = segments.split_last() else {
        return;
    };
    let mut current = root;
    for segment in parents {
        match current.get_mut(segment) {
            Some(Value::Object(map)) => current = map,
            _ => return,
        }
    }
    // shift_remove keeps the order of the remaining keys, as Python's dict.pop does.
    current.shift_remove(last);
}

fn get_path_mut<'a>(root: &'a mut Map, segments: &[String]) -> Option<&'a mut Value> {
    let (last, parents) = segments.split_last()?;
    let mut current = root;
    for segment in parents {
        match current.get_mut(segment) {
            Some(Value::Object(map)) => current = map,
            _ => return None,
        }
    }
    current.get_mut(last)
}

#[cfg(test)]
mod tests;
