use std::collections::HashMap;

use super::*;
use crate::node::{Limits, parse};

fn doc(name: &str, text: &str) -> Node {
    parse(name, text, &Limits::default()).unwrap().remove(0)
}

fn files(
    map: &[(&'static str, &'static str)],
) -> impl FnMut(&str, &Pos) -> Result<Node, SpecError> {
    let map: HashMap<&str, &str> = map.iter().copied().collect();
    move |rel: &str, at: &Pos| match map.get(rel) {
        Some(text) => Ok(doc(rel, text)),
        None => Err(SpecError::at(
            at,
            "",
            format!("cannot read {rel}: no such file"),
        )),
    }
}

fn get<'a>(n: &'a Node, path: &[&str]) -> Option<&'a Node> {
    path.iter().try_fold(n, |n, k| n.as_map()?.get(k))
}

fn resolve(text: &str, others: &[(&'static str, &'static str)]) -> Result<Node, String> {
    let mut d = doc("compose.yaml", text);
    resolve_extends(&mut d, "compose.yaml", &mut files(others)).map_err(|e| e.to_string())?;
    Ok(d)
}

#[test]
fn extends_in_the_same_file_inherits_and_merges() {
    let d = resolve(
        "services:\n  base:\n    image: b:1\n    environment: {A: \"1\"}\n  child:\n    extends: {service: base}\n    environment: {B: \"2\"}\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        get(&d, &["services", "child", "image"]).unwrap().as_str(),
        Some("b:1")
    );
    let env: Vec<&str> = get(&d, &["services", "child", "environment"])
        .unwrap()
        .as_seq()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(env, vec!["A=1", "B=2"]);
    assert!(get(&d, &["services", "child", "extends"]).is_none());
}

#[test]
fn short_form_and_chains_resolve() {
    let d = resolve(
        "services:\n  a: {image: a, user: x}\n  b: {extends: a, user: y}\n  c: {extends: b, hostname: h}\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        get(&d, &["services", "c", "image"]).unwrap().as_str(),
        Some("a")
    );
    assert_eq!(
        get(&d, &["services", "c", "user"]).unwrap().as_str(),
        Some("y")
    );
}

#[test]
fn extends_from_another_file_rebases_relative_paths() {
    let d = resolve(
        "services:\n  web:\n    extends: {file: common/base.yaml, service: app}\n",
        &[("common/base.yaml", "services:\n  app:\n    build: ./src\n    env_file: app.env\n    volumes: [\"./data:/data\", \"named:/n\"]\n")],
    )
    .unwrap();
    assert_eq!(
        get(&d, &["services", "web", "build"]).unwrap().as_str(),
        Some("common/src")
    );
    assert_eq!(
        get(&d, &["services", "web", "env_file"]).unwrap().as_str(),
        Some("common/app.env")
    );
    let vols: Vec<&str> = get(&d, &["services", "web", "volumes"])
        .unwrap()
        .as_seq()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(vols, vec!["common/data:/data", "named:/n"]);
}

#[test]
fn nested_file_extends_are_loaded_relative_to_their_own_file() {
    let d = resolve(
        "services:\n  web:\n    extends: {file: a/one.yaml, service: one}\n",
        &[
            (
                "a/one.yaml",
                "services:\n  one:\n    extends: {file: b/two.yaml, service: two}\n",
            ),
            ("a/b/two.yaml", "services:\n  two:\n    image: deep\n"),
        ],
    )
    .unwrap();
    assert_eq!(
        get(&d, &["services", "web", "image"]).unwrap().as_str(),
        Some("deep")
    );
}

#[test]
fn cycles_are_reported_with_their_chain() {
    let e = resolve(
        "services:\n  a: {image: x, extends: b}\n  b: {extends: a}\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(
        e,
        "compose.yaml:2:26: services.a.extends: circular extends a -> b -> a"
    );
}

#[test]
fn a_missing_base_names_the_service_and_file() {
    let e = resolve("services:\n  a:\n    extends: nope\n", &[]).unwrap_err();
    assert!(e.contains("services.a.extends: cannot extend service \"a\": service \"nope\" not found in compose.yaml"), "{e}");
    let e = resolve(
        "services:\n  a:\n    extends: {file: base.yaml, service: x}\n",
        &[("base.yaml", "services:\n  y: {image: y}\n")],
    )
    .unwrap_err();
    assert!(e.contains("service \"x\" not found in base.yaml"), "{e}");
}

#[test]
fn include_adds_resources_and_rejects_conflicts() {
    let mut d = doc(
        "compose.yaml",
        "include: [sub/db.yaml]\nservices:\n  web: {image: w}\n",
    );
    let mut load = files(&[(
        "sub/db.yaml",
        "services:\n  db: {image: d, build: ./ctx}\nvolumes:\n  data: {}\n",
    )]);
    resolve_include(&mut d, &mut load).unwrap();
    assert_eq!(
        get(&d, &["services", "db", "build"]).unwrap().as_str(),
        Some("sub/ctx")
    );
    assert!(get(&d, &["volumes", "data"]).is_some());
    assert!(get(&d, &["include"]).is_none());

    let mut d = doc(
        "compose.yaml",
        "include:\n  - path: sub/db.yaml\nservices:\n  db: {image: mine}\n",
    );
    let mut load = files(&[("sub/db.yaml", "services:\n  db: {image: d}\n")]);
    let e = resolve_include(&mut d, &mut load).unwrap_err().to_string();
    assert!(e.starts_with("compose.yaml:4:3: services.db: conflicts with the services entry \"db\" included from sub/db.yaml"), "{e}");
}
