//! Field rules from a Data Event Map (YAML; JSON is valid YAML).
//!
//! Only `topics[].topic` and `topics[].field_rules` are read here; other keys of the map
//! belong to the edge agent. Inside `field_rules` every key is checked, snake_case or
//! camelCase, and an unknown key, action or strategy is an error naming the file, line
//! and key (a typo must never silently publish a field in the clear).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::{Action, FieldRules, Rule, Strategy};
use crate::mapfile::{self, line_of, Spanned};

/// A map file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The map file could not be read.
    #[error("cannot read map {path}: {source}")]
    Read {
        /// The map file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Names the file, the line and the key.
    #[error(transparent)]
    Invalid(#[from] crate::mapfile::MapError),
}

/// Field rules per topic name.
#[derive(Debug, Clone, Default)]
pub struct TopicRules {
    by_topic: HashMap<String, FieldRules>,
}

impl TopicRules {
    /// The rules of `topic`; a topic not in the map gets no rules (everything included).
    pub fn for_topic(&self, topic: &str) -> Option<&FieldRules> {
        self.by_topic.get(topic)
    }
    /// The number of topics in the map.
    pub fn len(&self) -> usize {
        self.by_topic.len()
    }
    /// True when the map has no topics.
    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }
}

#[derive(Deserialize)]
struct MapDoc {
    #[serde(default)]
    topics: Vec<TopicDoc>,
}

#[derive(Deserialize)]
struct TopicDoc {
    topic: Spanned<String>,
    #[serde(default, alias = "fieldRules")]
    field_rules: Option<FieldRulesDoc>,
}

/// `field_rules` as written in a map; other map readers (the edge agent) embed it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRulesDoc {
    #[serde(default, alias = "defaultAction")]
    default_action: Option<ActionName>,
    #[serde(default)]
    rules: Vec<RuleDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    #[serde(alias = "fieldPath")]
    field_path: String,
    action: ActionName,
    #[serde(default, alias = "anonymizeStrategy")]
    anonymize_strategy: Option<StrategyName>,
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct ActionName(Action);

impl TryFrom<String> for ActionName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        match Action::parse(&name) {
            Action::Other(other) => Err(format!(
                "unknown action {other:?} (expected include, exclude, encrypt or anonymize)"
            )),
            action => Ok(ActionName(action)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct StrategyName(Strategy);

impl TryFrom<String> for StrategyName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        Strategy::parse(&name).map(StrategyName).ok_or_else(|| {
            format!("unknown anonymize_strategy {name:?} (expected hash, generalize or redact)")
        })
    }
}

impl FieldRulesDoc {
    /// The rules it describes, in order.
    pub fn into_rules(self) -> FieldRules {
        FieldRules {
            default_action: self.default_action.map(|a| a.0),
            rules: self
                .rules
                .into_iter()
                .map(|r| Rule {
                    field_path: r.field_path,
                    action: r.action.0,
                    anonymize_strategy: r.anonymize_strategy.map(|s| s.0),
                })
                .collect(),
        }
    }
}

/// Parses map text; `origin` names the file in errors.
pub fn parse_map(text: &str, origin: &str) -> Result<TopicRules, MapError> {
    let doc: MapDoc = mapfile::from_text(text, origin)?;
    let mut by_topic = HashMap::new();
    for (i, topic) in doc.topics.into_iter().enumerate() {
        let rules = topic
            .field_rules
            .map(FieldRulesDoc::into_rules)
            .unwrap_or_default();
        let line = line_of(&topic.topic);
        if by_topic.insert(topic.topic.value.clone(), rules).is_some() {
            return Err(crate::mapfile::MapError::at(
                origin,
                line,
                format!("topics[{i}].topic"),
                format!("{:?} appears twice", topic.topic.value),
            )
            .into());
        }
    }
    Ok(TopicRules { by_topic })
}

/// Reads and parses a map file.
pub fn load_map_file(path: &Path) -> Result<TopicRules, MapError> {
    let text = std::fs::read_to_string(path).map_err(|source| MapError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_map(&text, &path.display().to_string())
}
