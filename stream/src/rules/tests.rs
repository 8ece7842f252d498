use super::*;
use crate::json::parse;

fn rule(path: &str, action: &str, strategy: Option<&str>) -> Rule {
    Rule {
        field_path: path.into(),
        action: Action::parse(action),
        anonymize_strategy: strategy.and_then(Strategy::parse),
    }
}

fn run(fields: &str, rules: Vec<Rule>, default_action: Option<&str>) -> Result<String, RuleError> {
    let fields = parse(fields).unwrap();
    let ruled = apply(
        fields.as_object().unwrap(),
        &FieldRules {
            rules,
            default_action: default_action.map(Action::parse),
        },
    )?;
    let n = ruled.pending.len();
    let map = ruled.fill((0..n).map(|i| format!("CT{i}")).collect())?;
    Ok(crate::json::canonical(&Value::Object(map)).unwrap())
}

#[test]
fn child_rule_before_parent_rule() {
    assert_eq!(
        run(
            r#"{"a":{"b":1,"c":2}}"#,
            vec![rule("a.b", "exclude", None), rule("a", "exclude", None)],
            None
        )
        .unwrap(),
        r#"{"a":{}}"#
    );
    assert_eq!(
        run(
            r#"{"a":{"b":1,"c":2}}"#,
            vec![rule("a", "exclude", None)],
            None
        )
        .unwrap(),
        "{}"
    );
}

#[test]
fn top_level_nulls_untouched_nested_nulls_not() {
    assert_eq!(
        run(
            r#"{"a":null,"b":1}"#,
            vec![rule("a", "exclude", None), rule("b", "exclude", None)],
            None
        )
        .unwrap(),
        r#"{"a":null}"#
    );
    assert_eq!(
        run(
            r#"{"a":{"n":null}}"#,
            vec![rule("a.n", "anonymize", Some("generalize"))],
            None
        )
        .unwrap(),
        r#"{"a":{"n":{"__anonymized":true,"strategy":"generalize","value":"***"}}}"#
    );
}

#[test]
fn prefix_is_not_an_ancestor_and_lists_are_leaves() {
    assert_eq!(
        run(r#"{"gps":1}"#, vec![rule("gp", "exclude", None)], None).unwrap(),
        r#"{"gps":1}"#
    );
    assert_eq!(
        run(r#"{"a":[1,2]}"#, vec![rule("a.0", "exclude", None)], None).unwrap(),
        r#"{"a":[1,2]}"#
    );
}

#[test]
fn empty_object_is_a_leaf() {
    assert_eq!(
        run(
            r#"{"a":{}}"#,
            vec![rule("a", "anonymize", Some("hash"))],
            None
        )
        .unwrap(),
        format!(
            r#"{{"a":{{"__anonymized":true,"strategy":"hash","value":"{}"}}}}"#,
            crate::hexenc::sha256_0x(b"{}")
        )
    );
}

#[test]
fn anonymize_without_strategy_is_an_error() {
    assert_eq!(
        run(r#"{"a":1}"#, vec![rule("a", "anonymize", None)], None),
        Err(RuleError::MissingStrategy { path: "a".into() })
    );
    assert_eq!(
        run(r#"{"x":{"y":1}}"#, vec![], Some("anonymize")),
        Err(RuleError::MissingStrategy { path: "x".into() })
    );
}

#[test]
fn unknown_action_includes_and_strategy_on_other_action_is_ignored() {
    assert_eq!(
        run(r#"{"a":1}"#, vec![rule("a", "shred", None)], None).unwrap(),
        r#"{"a":1}"#
    );
    assert_eq!(
        run(r#"{"a":1}"#, vec![rule("a", "exclude", Some("hash"))], None).unwrap(),
        "{}"
    );
}

#[test]
fn encrypt_wraps_and_generalize_goes_element_by_element() {
    assert_eq!(
        run(
            r#"{"p":{"lat":37.5,"name":"robot-7"},"k":[1,true,"ab"]}"#,
            vec![
                rule("p.lat", "encrypt", None),
                rule("p", "anonymize", Some("generalize")),
                rule("k", "anonymize", Some("generalize"))
            ],
            None
        )
        .unwrap(),
        r#"{"k":{"__anonymized":true,"strategy":"generalize","value":["1-2","***","***"]},"p":{"lat":{"__encrypted":true,"algorithm":"AES-256-GCM","ciphertext":"CT0"},"name":{"__anonymized":true,"strategy":"generalize","value":"ro***7"}}}"#
    );
}

#[test]
fn generalize_errors_name_the_field() {
    let err = run(
        r#"{"v":{"w":5e-324}}"#,
        vec![rule("v", "anonymize", Some("generalize"))],
        None,
    )
    .unwrap_err();
    assert!(
        matches!(&err, RuleError::Value { path, .. } if path == "v.w"),
        "{err}"
    );
    assert!(run(
        r#"{"v":1e308}"#,
        vec![rule("v", "anonymize", Some("generalize"))],
        None
    )
    .is_err());
    assert!(run(
        &format!(r#"{{"v":1{}}}"#, "0".repeat(400)),
        vec![rule("v", "anonymize", Some("generalize"))],
        None
    )
    .is_err());
}

#[test]
fn dotted_keys_follow_the_reference_path_semantics() {
    // The reference addresses "a.b" as a nested path: exclude finds nothing to delete.
    assert_eq!(
        run(r#"{"a.b":1}"#, vec![rule("a.b", "exclude", None)], None).unwrap(),
        r#"{"a.b":1}"#
    );
    // ... and a replacement is written at the nested path.
    assert_eq!(
        run(
            r#"{"a.b":1}"#,
            vec![rule("a.b", "anonymize", Some("redact"))],
            None
        )
        .unwrap(),
        r#"{"a":{"b":{"__anonymized":true,"strategy":"redact","value":"[REDACTED]"}},"a.b":1}"#
    );
}

#[test]
fn map_file_errors_name_line_and_key() {
    let err = parse_map("topics:\n  - topic: /a\n    field_rules:\n      rules:\n        - field_path: x\n          actoin: exclude\n", "m.yaml").unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("m.yaml:6: topics[0].field_rules.rules[0].actoin: unknown field"),
        "{text}"
    );
    let err = parse_map("topics:\n  - topic: /a\n    fieldRules:\n      rules:\n        - fieldPath: x\n          action: exclud\n", "m.yaml").unwrap_err();
    assert!(err.to_string().contains("exclud"), "{err}");
    let err = parse_map("topics:\n  - topic: /a\n    field_rules:\n      rules:\n        - field_path: x\n          action: anonymize\n          anonymize_strategy: blur\n", "m.yaml").unwrap_err();
    assert!(err.to_string().contains("blur"), "{err}");
    let ok = parse_map(r#"{"topics":[{"topic":"/a","type":"std_msgs/msg/String","fieldRules":{"defaultAction":"exclude","rules":[{"fieldPath":"data","action":"include"}]}}]}"#, "m.json").unwrap();
    assert_eq!(ok.for_topic("/a").unwrap().rules.len(), 1);
    let emoji = parse_map(r#"{"topics":[{"topic":"/a","field_rules":{"rules":[{"field_path":"\ud83d\ude00","action":"exclude"}]}}]}"#, "m.json").unwrap();
    assert_eq!(emoji.for_topic("/a").unwrap().rules[0].field_path, "😀");
    let err = parse_map(
        "{\n\"topics\": [{\"topic\": \"/a\", \"field_rules\": {\"rulez\": []}}]}",
        "m.json",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("m.json:2: topics[0].field_rules.rulez: unknown field"),
        "{err}"
    );
    // A topic named twice: the second one's line.
    let err = parse_map(
        "topics:\n  - topic: /a\n  - topic: /b\n  - topic: /a\n",
        "m.yaml",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "m.yaml:4: topics[2].topic: \"/a\" appears twice"
    );
    assert!(ok.for_topic("/b").is_none());
}
