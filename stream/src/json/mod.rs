//! JSON as the reference implementation (Python's `json` module) reads and writes it.
//!
//! Values are `serde_json::Value` built with `arbitrary_precision` (every number keeps
//! the exact text it was written with, so integers of any size stay exact and `1`
//! and `1.0` stay different) and `preserve_order` (objects keep insertion order,
//! like Python dicts; a repeated key keeps its first position and its last value).
//!
//! Two writers:
//! - [`canonical`]: FORMATS.md §1, what gets signed and hashed (sorted keys, compact).
//! - [`python_dumps`]: `json.dumps(value, indent=…)` with Python's defaults, used for
//!   the documents the reference writes (chunk envelopes, manifests, access files), so
//!   ours are byte-identical.

mod pyfloat;

pub use pyfloat::repr as python_float_repr;
pub use serde_json::Value;

/// A JSON object in insertion order.
pub type Map = serde_json::Map<String, Value>;

use std::fmt::Write as _;

/// A JSON value that cannot be written in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// NaN or an infinity (also a literal such as `1E400` that overflows a double).
    #[error("number {text} at {path} is not finite; canonical JSON has no NaN or infinity")]
    NonFinite {
        /// Where the number is: `$`, then the keys and array indices down to it, joined by
        /// dots (`$.a.1`).
        path: String,
        /// The number's text, as parsed (`1E400` reads as `1e+400`).
        text: String,
    },
    /// The input is not JSON.
    #[error("invalid JSON: {0}")]
    Syntax(String),
}

/// What a JSON number is, in Python's terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PyNumber<'a> {
    /// Written without fraction or exponent: a Python `int` (any size), as its text.
    Int(&'a str),
    /// Written with a fraction or an exponent: a Python `float`.
    Float(f64),
}

/// Classifies a number the way Python's `json.loads` does.
pub fn py_number(n: &serde_json::Number) -> PyNumber<'_> {
    let text = n.as_str();
    if text.contains(['.', 'e', 'E']) {
        // Rust's parser rounds correctly, as does Python's float(); overflow gives inf.
        PyNumber::Float(text.parse::<f64>().unwrap_or(f64::NAN))
    } else {
        PyNumber::Int(text)
    }
}

/// Parses JSON text, keeping number values exactly (an exponent's spelling may be
/// normalized: `1E2` reads as `1e+2`) and key order.
pub fn parse(text: &str) -> Result<Value, JsonError> {
    serde_json::from_str(text).map_err(|e| JsonError::Syntax(e.to_string()))
}

/// Parses JSON bytes, keeping number texts and key order.
pub fn parse_slice(bytes: &[u8]) -> Result<Value, JsonError> {
    serde_json::from_slice(bytes).map_err(|e| JsonError::Syntax(e.to_string()))
}

/// Canonical JSON (FORMATS.md §1) as a string.
pub fn canonical(value: &Value) -> Result<String, JsonError> {
    let mut out = String::with_capacity(128);
    write_canonical(value, &mut out)?;
    Ok(out)
}

/// Canonical JSON as bytes.
pub fn canonical_bytes(value: &Value) -> Result<Vec<u8>, JsonError> {
    canonical(value).map(String::into_bytes)
}

/// Appends the canonical JSON of `value` to `out`. On failure `out` holds a partial write.
pub fn write_canonical(value: &Value, out: &mut String) -> Result<(), JsonError> {
    if write_canonical_fast(value, out).is_ok() {
        return Ok(());
    }
    // Only on failure: find where, so the error names the path.
    let (path, text) =
        find_non_finite(value, &mut Vec::new()).unwrap_or_else(|| ("$".into(), "?".into()));
    Err(JsonError::NonFinite { path, text })
}

fn write_canonical_fast(value: &Value, out: &mut String) -> Result<(), ()> {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_canonical_fast(item, out)?;
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical_fast(item, out)?;
            }
            out.push(']');
        }
        other => write_scalar(other, out).map_err(|_| ())?,
    }
    Ok(())
}

/// The path and text of the first non-finite number in `value`.
fn find_non_finite(value: &Value, stack: &mut Vec<String>) -> Option<(String, String)> {
    match value {
        Value::Number(n) => match py_number(n) {
            PyNumber::Float(x) if !x.is_finite() => Some((path_of(stack), n.as_str().to_string())),
            _ => None,
        },
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            stack.push(i.to_string());
            let found = find_non_finite(item, stack);
            stack.pop();
            found
        }),
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            entries.into_iter().find_map(|(key, item)| {
                stack.push(key.clone());
                let found = find_non_finite(item, stack);
                stack.pop();
                found
            })
        }
        _ => None,
    }
}

fn path_of(stack: &[String]) -> String {
    if stack.is_empty() {
        "$".to_string()
    } else {
        format!("$.{}", stack.join("."))
    }
}

/// Writes a scalar; on a non-finite float returns its text.
fn write_scalar(value: &Value, out: &mut String) -> Result<(), String> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::String(s) => write_string(s, out),
        Value::Number(n) => write_number(n, out)?,
        Value::Array(_) | Value::Object(_) => unreachable!("containers are not scalars"),
    }
    Ok(())
}

fn write_number(n: &serde_json::Number, out: &mut String) -> Result<(), String> {
    match py_number(n) {
        PyNumber::Int(text) => out.push_str(if text == "-0" { "0" } else { text }),
        PyNumber::Float(x) if x.is_finite() => pyfloat::write_repr(x, out),
        PyNumber::Float(_) => return Err(n.as_str().to_string()),
    }
    Ok(())
}

/// Writes a string as Python's `json.dumps` with `ensure_ascii=True`.
pub fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
        }
    }
    out.push('"');
}

/// How [`python_dumps`] lays a document out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `json.dumps(v, separators=(",", ":"))`
    Compact,
    /// `json.dumps(v, indent=2)`
    Indent2,
}

/// `json.dumps(value, …)` with Python's defaults (`ensure_ascii`, insertion order).
/// Fails only on a non-finite float, which Python would write as `NaN`/`Infinity`.
pub fn python_dumps(value: &Value, layout: Layout) -> Result<String, JsonError> {
    let mut out = String::with_capacity(512);
    dumps_into(value, layout, 0, &mut out, &mut Vec::new())?;
    Ok(out)
}

fn newline_indent(out: &mut String, level: usize) {
    out.push('\n');
    for _ in 0..level {
        out.push_str("  ");
    }
}

fn dumps_into(
    value: &Value,
    layout: Layout,
    level: usize,
    out: &mut String,
    stack: &mut Vec<String>,
) -> Result<(), JsonError> {
    let (item_sep, key_sep) = match layout {
        Layout::Compact => (",", ":"),
        Layout::Indent2 => (",", ": "),
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                if layout == Layout::Indent2 {
                    newline_indent(out, level + 1);
                }
                write_string(key, out);
                out.push_str(key_sep);
                stack.push(key.clone());
                dumps_into(item, layout, level + 1, out, stack)?;
                stack.pop();
            }
            if layout == Layout::Indent2 {
                newline_indent(out, level);
            }
            out.push('}');
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                if layout == Layout::Indent2 {
                    newline_indent(out, level + 1);
                }
                stack.push(i.to_string());
                dumps_into(item, layout, level + 1, out, stack)?;
                stack.pop();
            }
            if layout == Layout::Indent2 {
                newline_indent(out, level);
            }
            out.push(']');
        }
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
        other => write_scalar(other, out).map_err(|text| JsonError::NonFinite {
            path: path_of(stack),
            text,
        })?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        canonical(&parse(text).unwrap()).unwrap()
    }

    #[test]
    fn formats_examples() {
        assert_eq!(
            canon(r#""é😀\u007f\u2028/""#),
            r#""\u00e9\ud83d\ude00\u007f\u2028/""#
        );
        assert_eq!(
            canon(r#"{"😀":2,"～":1}"#),
            r#"{"\uff5e":1,"\ud83d\ude00":2}"#
        );
        assert_eq!(
            canon("[18446744073709551616, 123456789012345678901234567890, -0, 0]"),
            "[18446744073709551616,123456789012345678901234567890,0,0]"
        );
        assert_eq!(
            canon("[1e2, 0.0001, 1e-5, 1e-7, 1e15, 1e16, 12345678901234567.0, 1.23e-18, -0.0, 1, 1.0]"),
            "[100.0,0.0001,1e-05,1e-07,1000000000000000.0,1e+16,1.2345678901234568e+16,1.23e-18,-0.0,1,1.0]"
        );
        assert_eq!(
            canon(r#"{"b":[true,false,null],"a":{"d":"\b\f\n\r\t\"\\","c":{}}}"#),
            r#"{"a":{"c":{},"d":"\b\f\n\r\t\"\\"},"b":[true,false,null]}"#
        );
    }

    #[test]
    fn non_finite_is_an_error_naming_the_path() {
        let err = canonical(&parse(r#"{"a":[1,1E400]}"#).unwrap()).unwrap_err();
        assert_eq!(
            err,
            JsonError::NonFinite {
                path: "$.a.1".into(),
                text: "1e+400".into()
            }
        );
    }

    #[test]
    fn duplicate_keys_keep_first_position_last_value() {
        let v = parse(r#"{"a":1,"b":2,"a":3}"#).unwrap();
        assert_eq!(
            python_dumps(&v, Layout::Compact).unwrap(),
            r#"{"a":3,"b":2}"#
        );
    }

    #[test]
    fn python_indent_layout() {
        let v = parse(r#"{"a":[1,{"b":null}],"c":{},"d":[],"e":"é"}"#).unwrap();
        assert_eq!(
            python_dumps(&v, Layout::Indent2).unwrap(),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": null\n    }\n  ],\n  \"c\": {},\n  \"d\": [],\n  \"e\": \"\\u00e9\"\n}"
        );
    }
}
