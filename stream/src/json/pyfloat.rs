//! Python's `repr(float)`: the shortest digits that round-trip, fixed notation for decimal
//! exponents in `-4..16`, otherwise `d.ddde±XX` with at least two exponent digits.
//!
//! Which digits: when more than one shortest digit string reads back as the same double,
//! Python (David Gay's `dtoa`, mode 0) takes the one nearest the exact binary value, and on
//! an exact tie the one whose last digit is even (`1700000000123456.25` → `…456.2`,
//! `…456.75` → `…456.8`). Rust's `{:e}` does not promise that (it writes `…456.3`); Ryū
//! does: it picks the shortest, then the closest, rounding half to even, with the same
//! round-trip interval as Python's reader. The `ryu` crate gives the digits; this module only
//! lays them out. `tests/float_repr_python.rs` checks millions of values against Python.

use std::fmt::Write as _;

/// The significant digits of a finite double and the decimal exponent of the first one.
struct Digits {
    negative: bool,
    /// ASCII digits, no leading or trailing zeros (`"0"` for zero). 17 at most.
    digits: [u8; 24],
    len: usize,
    /// `x = 0.d1d2…dn × 10^(exponent + 1)`, i.e. the scientific exponent.
    exponent: i32,
}

impl Digits {
    fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored.
        std::str::from_utf8(&self.digits[..self.len]).unwrap_or("0")
    }
}

/// Reads Ryū's shortest text (`-1.2345e-7`, `100.0`, `0.0001`, `1e16`, …) into digits and
/// a scientific exponent.
fn shortest_digits(x: f64) -> Digits {
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(x).as_bytes();
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let (mantissa, exp10) = match text.iter().position(|&b| b == b'e' || b == b'E') {
        Some(at) => {
            let exp = std::str::from_utf8(&text[at + 1..])
                .ok()
                .and_then(|s| s.parse::<i32>().ok())
                .unwrap_or(0);
            (&text[..at], exp)
        }
        None => (text, 0),
    };
    let mut out = Digits {
        negative,
        digits: [b'0'; 24],
        len: 0,
        exponent: 0,
    };
    let mut after_point = false;
    // Significant digits before the point; zeros between the point and the first one.
    let mut integer_digits = 0i32;
    let mut zeros_after_point = 0i32;
    for &b in mantissa {
        if b == b'.' {
            after_point = true;
            continue;
        }
        if !b.is_ascii_digit() {
            continue;
        }
        if out.len == 0 && b == b'0' {
            if after_point {
                zeros_after_point += 1;
            }
            continue;
        }
        if !after_point {
            integer_digits += 1;
        }
        if out.len < out.digits.len() {
            out.digits[out.len] = b;
            out.len += 1;
        }
    }
    while out.len > 1 && out.digits[out.len - 1] == b'0' {
        out.len -= 1;
    }
    if out.len == 0 {
        out.len = 1; // zero
        out.exponent = 0;
        return out;
    }
    out.exponent = exp10
        + if integer_digits > 0 {
            integer_digits - 1
        } else {
            -(zeros_after_point + 1)
        };
    out
}

/// Writes `x` as Python's `repr(x)` would. `x` must be finite.
pub fn write_repr(x: f64, out: &mut String) {
    debug_assert!(x.is_finite());
    let d = shortest_digits(x);
    let digits = d.as_str();
    let exp = d.exponent;
    if d.negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(digits);
                for _ in digits.len()..int_len {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            out.push_str(digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let abs = exp.unsigned_abs();
        if abs < 10 {
            out.push('0');
        }
        let _ = write!(out, "{abs}");
    }
}

/// `repr(x)` as a new string.
pub fn repr(x: f64) -> String {
    let mut s = String::new();
    write_repr(x, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::repr;

    #[test]
    fn matches_python_repr() {
        let cases: &[(f64, &str)] = &[
            (1.0, "1.0"),
            (100.0, "100.0"),
            (0.0001, "0.0001"),
            (1e-5, "1e-05"),
            (1e-7, "1e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345678901234568e16, "1.2345678901234568e+16"),
            (1.23e-18, "1.23e-18"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (123456.789, "123456.789"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (1e100, "1e+100"),
            (0.00012, "0.00012"),
            (9999999999999998.0, "9999999999999998.0"),
            (2.9802322387695312e-08, "2.9802322387695312e-08"),
            (7.120236347223045e-307, "7.120236347223045e-307"),
        ];
        for (x, want) in cases {
            assert_eq!(repr(*x), *want, "repr({x:e})");
        }
    }

    /// Exact ties between two shortest digit strings go to the even one, as in Python.
    #[test]
    #[allow(clippy::excessive_precision)] // exactly representable: that is what makes them ties
    fn ties_round_half_to_even() {
        let cases: &[(f64, &str)] = &[
            (1700000000123456.25, "1700000000123456.2"),
            (1700000000123456.75, "1700000000123456.8"),
            (-1113178120592002.2, "-1113178120592002.2"),
            (-233891771783429.62, "-233891771783429.62"),
        ];
        for (x, want) in cases {
            assert_eq!(repr(*x), *want);
        }
    }
}
