use serde::Deserialize;

use super::*;
use crate::node::{Limits, parse};

#[derive(Debug, Deserialize, PartialEq)]
struct Deploy {
    replicas: Option<u32>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(flatten)]
    x: Extensions,
}

#[derive(Debug, Deserialize)]
struct Svc {
    image: Option<String>,
    deploy: Option<Deploy>,
    #[serde(flatten)]
    x: Extensions,
}

fn read<T: for<'a> Deserialize<'a>>(text: &str) -> Result<T, String> {
    let doc = parse("compose.yaml", text, &Limits::default())
        .unwrap()
        .remove(0);
    from_node::<T>(&doc, "services.web").map_err(|e| e.to_string())
}

#[test]
fn wrong_type_names_file_line_column_and_field_path() {
    let e = read::<Svc>("image: web\ndeploy:\n  replicas: three\n").unwrap_err();
    assert_eq!(
        e,
        "compose.yaml:3:13: services.web.deploy.replicas: expected a non-negative integer, got \"three\""
    );
}

#[test]
fn integers_are_read_from_quoted_strings_as_compose_does() {
    let s = read::<Svc>("deploy: {replicas: \"3\"}\n").unwrap();
    assert_eq!(s.deploy.unwrap().replicas, Some(3));
}

#[test]
fn strings_are_read_from_numbers() {
    let s = read::<Svc>("image: 5\n").unwrap();
    assert_eq!(s.image.as_deref(), Some("5"));
}

#[test]
fn unknown_field_points_at_the_key_and_suggests_the_right_name() {
    let e = read::<Svc>("imagee: web:1\n").unwrap_err();
    assert_eq!(
        e,
        "compose.yaml:1:1: services.web.imagee: unknown field, did you mean \"image\"?"
    );
    let e = read::<Svc>("deploy:\n  zzz: 1\n").unwrap_err();
    assert!(
        e.starts_with("compose.yaml:2:3: services.web.deploy.zzz: unknown field"),
        "{e}"
    );
}

#[test]
fn x_prefixed_fields_are_kept_anywhere() {
    let s = read::<Svc>("x-a: 1\ndeploy: {x-b: {c: [1, two]}}\n").unwrap();
    assert_eq!(s.x.0["x-a"], serde_json::json!(1));
    assert_eq!(
        s.deploy.unwrap().x.0["x-b"],
        serde_json::json!({"c": [1, "two"]})
    );
}

#[test]
fn errors_inside_sequences_carry_the_index() {
    let e = read::<Svc>("deploy:\n  labels: [a, {b: 1}]\n").unwrap_err();
    assert_eq!(
        e,
        "compose.yaml:2:15: services.web.deploy.labels[1]: expected a string, got a mapping"
    );
}

#[test]
fn negative_and_huge_integers_are_rejected_with_the_value() {
    let e = read::<Svc>("deploy: {replicas: -1}\n").unwrap_err();
    assert!(
        e.ends_with("expected a non-negative integer, got \"-1\""),
        "{e}"
    );
    let e = read::<Svc>("deploy: {replicas: 99999999999}\n").unwrap_err();
    assert!(e.contains("out of range"), "{e}");
}
