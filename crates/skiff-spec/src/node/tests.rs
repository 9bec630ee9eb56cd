use super::*;

fn one(text: &str) -> Node {
    let mut docs = parse("c.yaml", text, &Limits::default()).unwrap();
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

fn err(text: &str, limits: &Limits) -> String {
    parse("c.yaml", text, limits).unwrap_err().to_string()
}

#[test]
fn positions_are_one_based_line_and_column() {
    let n = one("services:\n  web:\n    image: nginx\n");
    let web = n
        .as_map()
        .unwrap()
        .get("services")
        .unwrap()
        .as_map()
        .unwrap()
        .get("web")
        .unwrap();
    let entry = web.as_map().unwrap().entry("image").unwrap();
    assert_eq!((entry.key_pos.line, entry.key_pos.col), (3, 5));
    assert_eq!((entry.value.pos.line, entry.value.pos.col), (3, 12));
}

#[test]
fn plain_scalars_resolve_by_core_schema_and_quoted_stay_strings() {
    let n = one("a: 3\nb: '3'\nc: true\nd: 0.5\ne: 0440\nf: yes\ng: ~\nh: !!str 4\n");
    let m = n.as_map().unwrap();
    let r = |k: &str| match &m.get(k).unwrap().value {
        Value::Scalar(s) => format!("{:?}", s.resolve()),
        other => format!("{other:?}"),
    };
    assert_eq!(r("a"), "Int(3)");
    assert_eq!(r("b"), "Str(\"3\")");
    assert_eq!(r("c"), "Bool(true)");
    assert_eq!(r("d"), "Float(0.5)");
    assert_eq!(r("e"), "Int(288)");
    assert_eq!(r("f"), "Str(\"yes\")");
    assert_eq!(r("g"), "Null");
    assert_eq!(r("h"), "Str(\"4\")");
}

#[test]
fn merge_keys_fill_in_without_overriding_explicit_keys() {
    let n = one("x: &c {a: 1, b: 2}\ny:\n  <<: *c\n  b: 3\n");
    let y = n.as_map().unwrap().get("y").unwrap().as_map().unwrap();
    assert_eq!(y.get("a").unwrap().as_str(), Some("1"));
    assert_eq!(y.get("b").unwrap().as_str(), Some("3"));
}

#[test]
fn duplicate_keys_are_rejected_with_both_lines() {
    let e = err("a: 1\nb: 2\na: 3\n", &Limits::default());
    assert_eq!(e, "c.yaml:3:1: mapping key \"a\" already defined at line 1");
}

#[test]
fn billion_laughs_is_bounded() {
    let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        s.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let e = err(&s, &Limits::default());
    assert!(e.contains("has more than"), "{e}");
}

#[test]
fn deep_nesting_is_bounded() {
    let s = "[".repeat(10_000);
    let e = err(&s, &Limits::default());
    assert!(e.contains("c.yaml:1:"), "{e}");
}

#[test]
fn oversized_input_is_rejected_before_parsing() {
    let limits = Limits {
        max_bytes: 10,
        ..Limits::default()
    };
    assert!(err("a: 12345678901234", &limits).contains("more than the limit"));
}

#[test]
fn compose_override_tags_are_kept_and_other_tags_rejected() {
    let n = one("a: !reset []\nb: !override {x: 1}\n");
    let m = n.as_map().unwrap();
    assert_eq!(m.get("a").unwrap().tag, Some(Tag::Reset));
    assert_eq!(m.get("b").unwrap().tag, Some(Tag::Override));
    assert!(err("a: !custom 1\n", &Limits::default()).contains("unsupported YAML tag"));
}

#[test]
fn syntax_errors_name_the_position() {
    let e = err("a: [1, 2\nb: 3\n", &Limits::default());
    assert!(e.starts_with("c.yaml:"), "{e}");
    assert!(e.contains("invalid YAML"), "{e}");
}

#[test]
fn go_style_integers() {
    assert_eq!(parse_yaml_int("0x1F"), Some(31));
    assert_eq!(parse_yaml_int("-12"), Some(-12));
    assert_eq!(parse_yaml_int("0o17"), Some(15));
    assert_eq!(parse_yaml_int("09"), None);
    assert_eq!(parse_yaml_int("1e3"), None);
    assert_eq!(parse_yaml_int("99999999999999999999"), None);
}

#[test]
fn non_string_keys_are_rejected_with_their_path() {
    let e = err("services:\n  1:\n    image: x\n", &Limits::default());
    assert_eq!(
        e,
        "c.yaml:2:3: services: mapping key 1 is not a string: quote it (\"1\") if it is meant as one"
    );
    let e = err(
        "services:\n  web:\n    environment:\n      ? [a]\n      : x\n",
        &Limits::default(),
    );
    assert_eq!(
        e,
        "c.yaml:4:9: services.web.environment: mapping key must be a string, got a sequence"
    );
    // Quoted, they are strings.
    one("services:\n  \"1\":\n    image: x\n");
}

#[test]
fn a_tab_in_indentation_names_its_line() {
    let e = err("services:\n  web:\n\timage: x\n", &Limits::default());
    assert!(e.starts_with("c.yaml:3:"), "{e}");
    assert!(e.contains("tab"), "{e}");
}

#[test]
fn an_alias_inside_its_own_anchor_names_the_key_that_holds_it() {
    let e = err("x-a: &a\n  b:\n    c: *a\n", &Limits::default());
    assert_eq!(
        e,
        "c.yaml:3:8: x-a.b.c: alias refers to the anchor that contains it (a cycle): YAML \
         cannot hold a node inside itself"
    );
    let e = err("x-a: &a\n  b: 1\n  <<: *a\n", &Limits::default());
    assert!(
        e.starts_with("c.yaml:3:7: x-a.<<: alias refers to the anchor"),
        "{e}"
    );
    let e = err("x-a: &a [1, *a]\n", &Limits::default());
    assert!(e.starts_with("c.yaml:1:13: x-a[1]: alias refers"), "{e}");
}

#[test]
fn aliases_of_long_strings_are_bounded_by_bytes() {
    let long = "y".repeat(1 << 20);
    let mut s = format!("a: &a \"{long}\"\nb: [");
    for _ in 0..100 {
        s.push_str("*a, ");
    }
    s.push_str("]\n");
    let e = err(&s, &Limits::default());
    assert!(e.contains("b[64]: aliases copy more than"), "{e}");
}
