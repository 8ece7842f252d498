//! The `anonymize` strategies (FORMATS.md §3): `hash`, `redact`, `generalize`.

use crate::json::{self, py_number, Map, PyNumber, Value};

use super::{RuleError, Strategy};

const STARS: &str = "***";

/// The `{"__anonymized": true, "value": V, "strategy": S}` wrapper.
pub fn anonymize(value: &Value, strategy: Strategy, path: &str) -> Result<Value, RuleError> {
    let replaced = match strategy {
        Strategy::Hash => {
            let canonical = json::canonical(value).map_err(|e| RuleError::Value {
                path: path.to_string(),
                reason: e.to_string(),
            })?;
            Value::String(crate::hexenc::sha256_0x(canonical.as_bytes()))
        }
        Strategy::Redact => Value::String("[REDACTED]".into()),
        Strategy::Generalize => generalize(value, path)?,
    };
    let mut map = Map::with_capacity(3);
    map.insert("__anonymized".into(), Value::Bool(true));
    map.insert("value".into(), replaced);
    map.insert("strategy".into(), Value::String(strategy.name().into()));
    Ok(Value::Object(map))
}

fn generalize(value: &Value, path: &str) -> Result<Value, RuleError> {
    Ok(match value {
        Value::Null | Value::Bool(_) => Value::String(STARS.into()),
        Value::Number(n) => {
            let x = match py_number(n) {
                PyNumber::Float(x) if !x.is_finite() => return Ok(Value::String(STARS.into())),
                PyNumber::Float(x) => x,
                // Python: float(int), correctly rounded; too large raises OverflowError.
                PyNumber::Int(text) => {
                    let x = text.parse::<f64>().unwrap_or(f64::INFINITY);
                    if !x.is_finite() {
                        return Err(RuleError::Value {
                            path: path.to_string(),
                            reason: format!("integer {text} is too large to generalize"),
                        });
                    }
                    x
                }
            };
            Value::String(bucket(x).ok_or_else(|| RuleError::Value {
                path: path.to_string(),
                reason: format!(
                    "number {} cannot be generalized (magnitude below 1e-323 or at least 1e308)",
                    n.as_str()
                ),
            })?)
        }
        Value::String(s) => {
            let count = s.chars().count();
            Value::String(if count <= 1 {
                "*".into()
            } else if count <= 4 {
                STARS.into()
            } else {
                let mut out: String = s.chars().take(2).collect();
                out.push_str(STARS);
                out.extend(s.chars().last());
                out
            })
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| generalize(item, &format!("{path}.{i}")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), generalize(v, &format!("{path}.{k}"))?)))
                .collect::<Result<_, RuleError>>()?,
        ),
    })
}

/// The decade bucket `"lower-upper"` of a finite number, computed with the reference's
/// float arithmetic. `None` where the reference raises (division by a zero step for
/// the smallest subnormals, overflow of the bounds near the top of the double range).
pub fn bucket(x: f64) -> Option<String> {
    if x == 0.0 {
        return Some("0-1".into());
    }
    let exponent = x.abs().log10().floor() as i32;
    let (lower, upper) = if exponent >= 0 {
        // Python: step = 10**e is an exact int; x / step divides by float(10**e);
        // lower = floor(...) * 10**e stays exact until formatted as a float.
        let step = format!("1e{exponent}").parse::<f64>().ok()?;
        let q = (x / step).floor();
        let lower = format!("{q}e{exponent}").parse::<f64>().ok()?;
        let upper = format!("{}e{exponent}", q + 1.0).parse::<f64>().ok()?;
        (lower, upper)
    } else {
        // Python: 10**e with a negative exponent is the float pow(10.0, e).
        let step = 10f64.powf(exponent as f64);
        if step == 0.0 {
            return None;
        }
        let lower = (x / step).floor() * step;
        (lower, lower + step)
    };
    if !lower.is_finite() || !upper.is_finite() {
        return None;
    }
    Some(format!("{}-{}", fmt10(lower), fmt10(upper)))
}

/// `format(n, ".10f").rstrip("0").rstrip(".") or "0"`.
fn fmt10(n: f64) -> String {
    let text = format!("{n:.10}");
    let trimmed = text.trim_end_matches('0').trim_end_matches('.');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_formats_examples() {
        let cases: &[(f64, Option<&str>)] = &[
            (0.0, Some("0-1")),
            (-0.0, Some("0-1")),
            (37.0, Some("30-40")),
            (0.042, Some("0.04-0.05")),
            (-5.0, Some("-5--4")),
            (0.3, Some("0.2-0.3")),
            (0.7, Some("0.6-0.7")),
            (1e-12, Some("0-0")),
            (-1e-12, Some("-0-0")),
            (
                1e23,
                Some("99999999999999991611392-199999999999999983222784"),
            ),
            (5e-324, None),
            (1e308, None),
            (-1.5e308, None),
            (1000.0, Some("1000-2000")),
        ];
        for (x, want) in cases {
            assert_eq!(bucket(*x).as_deref(), *want, "bucket({x:e})");
        }
    }

    #[test]
    fn strings_by_code_point() {
        let g = |s: &str| generalize(&Value::String(s.into()), "p").unwrap();
        assert_eq!(g(""), Value::String("*".into()));
        assert_eq!(g("é"), Value::String("*".into()));
        assert_eq!(g("abcd"), Value::String("***".into()));
        assert_eq!(g("héllo😀"), Value::String("hé***😀".into()));
    }
}
