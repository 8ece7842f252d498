//! The one reader of Data Event Map files (YAML; JSON is read as JSON), used by the field
//! rules here and by the edge agent for the rest of the map.
//!
//! Every error names the file, the line, and the path of the key (`topics[2].qos.profile`),
//! whether the YAML parser or serde found it (positions from `serde-saphyr`, paths from
//! `serde_path_to_error`); checks made after parsing use [`Spanned`] values for their line.

use serde::de::DeserializeOwned;

pub use serde_saphyr::Spanned;

/// A map that cannot be read, where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.display())]
pub struct MapError {
    /// The map file, as given.
    pub file: String,
    /// 1-based; 0 when the problem has no single line (a missing section).
    pub line: u64,
    /// The key's path (`topics[0].field_rules.rules[1].action`), empty at the top.
    pub key: String,
    /// What is wrong (a parser's message, without the position it added).
    pub message: String,
}

impl MapError {
    /// An error about a key found after parsing.
    pub fn at(file: &str, line: u64, key: impl Into<String>, message: impl Into<String>) -> Self {
        MapError {
            file: file.to_string(),
            line,
            key: key.into(),
            message: message.into(),
        }
    }

    fn display(&self) -> String {
        match (self.line, self.key.is_empty()) {
            (0, true) => format!("{}: {}", self.file, self.message),
            (0, false) => format!("{}: {}: {}", self.file, self.key, self.message),
            (line, true) => format!("{}:{line}: {}", self.file, self.message),
            (line, false) => format!("{}:{line}: {}: {}", self.file, self.key, self.message),
        }
    }
}

/// The line a [`Spanned`] value was read from.
pub fn line_of<T>(value: &Spanned<T>) -> u64 {
    value.referenced.line()
}

/// The message without the position the parser added (the line is reported on its own):
/// `error: line L column C: …` in front, or `… at line L, column C` behind.
fn bare_message(message: &str) -> String {
    let message = message.trim();
    let message = message.strip_prefix("error: ").unwrap_or(message);
    let message = match message
        .strip_prefix("line ")
        .and_then(|r| r.split_once(": "))
    {
        Some((position, rest)) if position.contains("column") => rest,
        _ => message,
    };
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

/// The key's path as the map spells it: without the `value` step a [`Spanned`] adds, and
/// empty at the top.
fn key_path(path: &str) -> String {
    if path == "." {
        return String::new();
    }
    let mut key = path.replace(".value[", "[").replace(".value.", ".");
    if let Some(stripped) = key.strip_suffix(".value") {
        key = stripped.to_string();
    }
    key
}

/// Reads a YAML document (`file` names it in errors).
pub fn from_yaml<T: DeserializeOwned>(text: &str, file: &str) -> Result<T, MapError> {
    let mut path = None;
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
            path = Some(e.path().to_string());
            e.into_inner()
        })
    });
    parsed.map_err(|e| MapError {
        file: file.to_string(),
        line: e.location().map_or(0, |l| l.line()),
        key: path.as_deref().map(key_path).unwrap_or_default(),
        message: bare_message(&e.without_snippet().to_string()),
    })
}

/// Reads a JSON document: JSON is YAML except for its surrogate-pair escapes
/// (`\ud83d\ude00`), which only a JSON reader takes.
pub fn from_json<T: DeserializeOwned>(text: &str, file: &str) -> Result<T, MapError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
        let key = key_path(&e.path().to_string());
        let inner = e.into_inner();
        MapError {
            file: file.to_string(),
            line: inner.line() as u64,
            key,
            message: bare_message(&inner.to_string()),
        }
    })
}

/// Reads a map document: JSON when it is one (it starts with `{`), YAML otherwise.
pub fn from_text<T: DeserializeOwned>(text: &str, file: &str) -> Result<T, MapError> {
    if text.trim_start().starts_with('{') {
        from_json(text, file)
    } else {
        from_yaml(text, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Qos {
        #[allow(dead_code)]
        depth: Option<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Topic {
        topic: Spanned<String>,
        #[serde(default)]
        #[allow(dead_code)]
        qos: Option<Qos>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        topics: Vec<Topic>,
    }

    const THREE: &str = "topics:\n  - topic: /a\n  - topic: /b\n  - topic: /c\n";

    #[test]
    fn errors_name_the_line_and_key_of_later_items_and_nested_keys() {
        let doc: Doc = from_yaml(THREE, "m.yaml").unwrap();
        let lines: Vec<u64> = doc.topics.iter().map(|t| line_of(&t.topic)).collect();
        assert_eq!(lines, [2, 3, 4]);
        let e =
            from_yaml::<Doc>(&format!("{THREE}    qos: {{ dpeth: 3 }}\n"), "m.yaml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (5, "topics[2].qos.dpeth"), "{e}");
        assert!(
            e.to_string()
                .starts_with("m.yaml:5: topics[2].qos.dpeth: unknown field"),
            "{e}"
        );
        let e = from_yaml::<Doc>(&format!("{THREE}    qos:\n      depth: lots\n"), "m.yaml")
            .unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (6, "topics[2].qos.depth"), "{e}");
        let e = from_yaml::<Doc>("topics:\n  - topic: /a\n  - topc: /b\n", "m.yaml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "topics[1].topc"), "{e}");
    }

    #[test]
    fn json_maps_name_lines_too() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Plain {
            #[allow(dead_code)]
            topics: Vec<std::collections::BTreeMap<String, String>>,
        }
        let e =
            from_text::<Plain>("{\n \"topics\": [\n  {\"topic\": 1}\n ]\n}", "m.json").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.key.starts_with("topics[0]"), "{e}");
    }
}
