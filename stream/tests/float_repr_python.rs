//! Canonical JSON writes floats as Python's `repr`. This checks ours against Python itself on
//! more than a million doubles: random bit patterns, powers of two and their neighbours
//! (where the round-trip interval is lopsided), subnormals, and exact ties between two
//! shortest digit strings constructed at every binary exponent where ties can exist. One Python
//! process gets the whole batch and also says which constructed values are genuine ties, so
//! the test proves it reached them.
//!
//! Needs `python3` (or `$PYTHON`) on the PATH: it is the reference.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use stream::json::python_float_repr;

/// SplitMix64: a small deterministic generator (no seeds to keep in sync with Python).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `S × 2^q` for a 53-bit significand `S` (top bit set), as a normal double.
fn normal(significand: u64, q: i32) -> f64 {
    debug_assert!(significand >> 52 == 1);
    let biased = (q + 1075) as u64;
    f64::from_bits((biased << 52) | (significand & ((1 << 52) - 1)))
}

/// Values exactly halfway between two shortest candidates, when both round-trip.
///
/// A tie sits at `(2d + 1) × 10^k / 2` with the last digit at `10^k`. For it to be a double
/// with ulp `2^q`: `k < 0`, `x = t × 2^(k-1)` with `t` odd and `q ≤ k - 1`; for both
/// neighbours to round-trip, `10^k ≤ 2^q`; for no shorter string to exist, `2^q < 10^(k+1)`,
/// so `k = floor(q log10 2)`. `t` has `q + 54 - k` bits, which leaves `q` from -77 to -2:
/// ties exist only for doubles from about 1e-7 to 2^53 (about 9e15); larger ones (ulp ≥ 1)
/// and smaller ones never tie.
fn tie_candidates(rng: &mut Rng, out: &mut Vec<f64>) {
    for q in -77i32..=-2 {
        let k = (f64::from(q) * std::f64::consts::LOG10_2).floor() as i32;
        let bits = (q + 54 - k) as u32;
        assert!((1..=53).contains(&bits), "q {q}: {bits} bits");
        for i in 0..2000 {
            let t = (rng.next() & ((1u64 << bits) - 1)) | (1 << (bits - 1)) | 1;
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            out.push(sign * normal(t << (53 - bits), q));
        }
    }
}

fn subnormals(rng: &mut Rng, count: usize, out: &mut Vec<f64>) {
    for _ in 0..count {
        let bits = rng.next() & ((1u64 << 52) - 1) | (rng.next() & (1 << 63));
        out.push(f64::from_bits(bits));
    }
}

fn random_bit_patterns(rng: &mut Rng, count: usize, out: &mut Vec<f64>) {
    while out.len() < count {
        let x = f64::from_bits(rng.next());
        if x.is_finite() {
            out.push(x);
        }
    }
}

fn powers_of_two_and_neighbours(out: &mut Vec<f64>) {
    for e in -1074i32..=1023 {
        let x = 2f64.powi(e);
        if x == 0.0 || !x.is_finite() {
            continue;
        }
        for delta in -3i64..=3 {
            let bits = x.to_bits() as i64 + delta;
            let y = f64::from_bits(bits as u64);
            if y.is_finite() && y > 0.0 {
                out.push(y);
                out.push(-y);
            }
        }
    }
    out.extend([0.0, -0.0, f64::MIN_POSITIVE, f64::MAX, -f64::MAX, 5e-324]);
}

/// Python: for each hex bit pattern, `repr(x)` and, when asked, whether x is exactly
/// halfway between two candidates of repr's length.
const PYTHON: &str = r#"
import struct, sys
from decimal import Decimal
from fractions import Fraction
out = []
for line in sys.stdin:
    flag, bits = line.split()
    x = struct.unpack("<d", struct.pack("<Q", int(bits, 16)))[0]
    r = repr(x)
    tie = 0
    if flag == "t":
        d = Decimal(r)
        step = Fraction(10) ** d.as_tuple().exponent
        tie = int(abs(Fraction(x) - Fraction(d)) * 2 == step)
    out.append(f"{r} {tie}\n")
sys.stdout.write("".join(out))
"#;

#[test]
fn floats_are_written_as_python_repr_writes_them() {
    let mut rng = Rng(0x7065_6171_2d6f_7321);
    let mut ties = Vec::new();
    tie_candidates(&mut rng, &mut ties);
    let mut others = Vec::new();
    powers_of_two_and_neighbours(&mut others);
    subnormals(&mut rng, 20_000, &mut others);
    random_bit_patterns(&mut rng, 1_100_000 - ties.len(), &mut others);
    let total = ties.len() + others.len();
    assert!(total >= 1_000_000, "only {total} values");

    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(&python)
        .args(["-c", PYTHON])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python} (the reference for repr): {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let batch: Vec<(bool, f64)> = ties
        .iter()
        .map(|&x| (true, x))
        .chain(others.iter().map(|&x| (false, x)))
        .collect();
    let feed = batch.clone();
    let writer = std::thread::spawn(move || {
        let mut text = String::with_capacity(feed.len() * 20);
        for (tie, x) in &feed {
            text.push_str(if *tie { "t " } else { "r " });
            text.push_str(&format!("{:016x}\n", x.to_bits()));
        }
        stdin.write_all(text.as_bytes()).expect("feeding python");
    });
    let stdout = child.stdout.take().expect("piped stdout");
    let mut mismatches = Vec::new();
    let mut genuine_ties = 0usize;
    let mut tie_exponents = std::collections::BTreeSet::new();
    let mut lines = 0usize;
    for (line, (is_candidate, x)) in BufReader::new(stdout).lines().zip(&batch) {
        let line = line.expect("python output");
        let (want, tie) = line.split_once(' ').expect("repr and flag");
        lines += 1;
        let ours = python_float_repr(*x);
        if ours != want && mismatches.len() < 20 {
            mismatches.push(format!("{:016x}: python {want}, ours {ours}", x.to_bits()));
        }
        if *is_candidate && tie == "1" {
            genuine_ties += 1;
            tie_exponents.insert((x.to_bits() >> 52) & 0x7ff);
        }
    }
    writer.join().expect("writer");
    assert!(child.wait().expect("python exits").success());
    assert_eq!(lines, batch.len(), "python answered every value");
    assert!(
        mismatches.is_empty(),
        "differs from Python:\n{}",
        mismatches.join("\n")
    );
    // The constructed ties are real, and they span the exponents where ties exist.
    assert!(genuine_ties > 50_000, "only {genuine_ties} genuine ties");
    assert!(
        tie_exponents.len() >= 45,
        "ties at only {} binary exponents",
        tie_exponents.len()
    );
}
