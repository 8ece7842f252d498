"""Deterministic generators of messages and field rules that reach every corner of the
formats: unicode and escapes, floats with exponents, large integers, nested objects,
every rule action and strategy, and the inputs the reference refuses."""

from __future__ import annotations

import math
import random
from decimal import Decimal
from fractions import Fraction

KEYS = ["a", "b", "c", "pos", "name", "secret", "data", "é", "😀", "～", "x.y", "n"]
CHARS = (
    list("abcXYZ019 -_/")
    + ["\n", "\t", '"', "\\", "\b", "\f", "\r", "\x00", "\x1f", "\x7f", "\u2028", "é", "ß", "中", "😀", "🤖", "～"]
)
STRATEGIES = ["hash", "generalize", "redact"]


def rand_string(rng: random.Random) -> str:
    return "".join(rng.choice(CHARS) for _ in range(rng.randint(0, 9)))


def is_repr_tie(x: float) -> bool:
    """Whether x lies exactly halfway between two shortest digit strings (repr takes the even)."""
    d = Decimal(repr(x))
    return abs(Fraction(x) - Fraction(d)) * 2 == Fraction(10) ** d.as_tuple().exponent


def tie_float(rng: random.Random) -> float:
    """A double exactly halfway between two shortest digit strings: x = t * 2^(k-1), t odd,
    with ulp 2^q and k = floor(q log10 2) (ties exist only for q in -77..-2)."""
    while True:
        q = rng.randint(-77, -2)
        k = math.floor(q * math.log10(2))
        bits = q + 54 - k
        t = rng.getrandbits(bits) | (1 << (bits - 1)) | 1
        x = math.ldexp(t, k - 1) * rng.choice([1, -1])
        if is_repr_tie(x):
            return x


def rand_float(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.15:
        return rng.choice([0.0, -0.0, 0.1, 0.3, 0.7, 1e16, 1e-5, 1e-7, 1e15, 1e22, 1e23, 123.456, -2.5, 1.5e300, 2.5e-300])
    mantissa = rng.uniform(-10, 10)
    return mantissa * 10.0 ** rng.randint(-25, 25)


def rand_int(rng: random.Random) -> int:
    pick = rng.random()
    if pick < 0.2:
        return rng.choice([0, 1, -1, 2**63, 2**64, -(2**64), 10**30, -(10**25), 37, -5])
    return rng.randint(-(10**6), 10**6)


def rand_value(rng: random.Random, depth: int = 0):
    kind = rng.random()
    if depth < 3 and kind < 0.18:
        return {rng.choice(KEYS): rand_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if depth < 3 and kind < 0.28:
        return [rand_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind < 0.45:
        return rand_string(rng)
    if kind < 0.62:
        return rand_float(rng)
    if kind < 0.8:
        return rand_int(rng)
    if kind < 0.9:
        return rng.choice([True, False])
    return None


def rand_fields(rng: random.Random) -> dict:
    return {key: rand_value(rng) for key in rng.sample(KEYS, rng.randint(1, 7))}


def rand_paths(rng: random.Random) -> str:
    first = rng.choice(KEYS)
    if rng.random() < 0.4:
        return f"{first}.{rng.choice(KEYS)}"
    return first


def rand_rules(rng: random.Random, allow_missing_strategy: bool) -> dict:
    rules = []
    for _ in range(rng.randint(0, 6)):
        action = rng.choice(["include", "exclude", "encrypt", "anonymize", "anonymize"])
        rule = {"field_path": rand_paths(rng), "action": action}
        if action == "anonymize" and (not allow_missing_strategy or rng.random() < 0.95):
            rule["anonymize_strategy"] = rng.choice(STRATEGIES)
        elif action != "anonymize" and rng.random() < 0.1:
            rule["anonymize_strategy"] = rng.choice(STRATEGIES)  # ignored on other actions
        rules.append(rule)
    default = rng.choice([None, "include", "include", "exclude", "encrypt"])
    out = {"rules": rules}
    if default is not None:
        out["default_action"] = default
    return out


def generate(seed: int, count: int, topics: int = 8):
    """Returns (map document, messages): `count` messages over `topics` topics."""
    rng = random.Random(seed)
    topic_docs = []
    for t in range(topics):
        rules = rand_rules(rng, allow_missing_strategy=True)
        if t % 2:  # half the topics in camelCase, which the map must accept too
            rules = {
                ("defaultAction" if k == "default_action" else k): v for k, v in rules.items()
            }
            rules["rules"] = [
                {{"field_path": "fieldPath", "anonymize_strategy": "anonymizeStrategy"}.get(k, k): v for k, v in r.items()}
                for r in rules["rules"]
            ]
            topic_docs.append({"topic": f"/t{t}", "type": "std_msgs/msg/String", "fieldRules": rules})
        else:
            topic_docs.append({"topic": f"/t{t}", "type": "std_msgs/msg/String", "field_rules": rules})
    messages = []
    ties = random.Random(seed + 1)  # a stream of its own: the rest of the corpus stays as it was
    for i in range(count):
        messages.append(
            {
                "topic": f"/t{rng.randrange(topics + 1)}",  # one topic is not in the map: no rules
                "fields": rand_fields(rng),
                "capturedAt": f"2026-11-22T10:{i // 60 % 60:02d}:{i % 60:02d}Z",
                "sequenceNumber": i + 1,
                "schemaVersion": rng.choice(["1", "1.0.0", "v2-é"]),
            }
        )
        if i % 4 == 0:  # a tie float under a key the rules act on (include, hash, encrypt, ...)
            messages[-1]["fields"][ties.choice(KEYS)] = tie_float(ties)
    return {"topics": topic_docs}, messages


def snake_rules(doc: dict) -> dict:
    """A topic's field_rules in snake_case, whichever spelling the map used."""
    rules = doc.get("field_rules") or doc.get("fieldRules") or {}
    return {
        "default_action": rules.get("default_action", rules.get("defaultAction")),
        "rules": [
            {
                "field_path": r.get("field_path", r.get("fieldPath")),
                "action": r["action"],
                "anonymize_strategy": r.get("anonymize_strategy", r.get("anonymizeStrategy")),
            }
            for r in rules.get("rules", [])
        ],
    }
