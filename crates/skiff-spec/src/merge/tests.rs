use super::*;
use crate::node::{Limits, parse};

fn doc(name: &str, text: &str) -> Node {
    parse(name, text, &Limits::default()).unwrap().remove(0)
}

fn merged(a: &str, b: &str) -> Node {
    merge_files(doc("a.yaml", a), doc("b.yaml", b)).unwrap()
}

fn at<'a>(n: &'a Node, path: &[&str]) -> &'a Node {
    path.iter().fold(n, |n, k| {
        n.as_map()
            .unwrap()
            .get(k)
            .unwrap_or_else(|| panic!("no {k}"))
    })
}

fn texts(n: &Node) -> Vec<String> {
    n.as_seq()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap_or("<map>").to_string())
        .collect()
}

#[test]
fn scalars_are_replaced_and_keep_the_overriding_files_position() {
    let m = merged(
        "services:\n  web:\n    image: a\n",
        "services:\n  web:\n    image: b\n",
    );
    let image = at(&m, &["services", "web", "image"]);
    assert_eq!(image.as_str(), Some("b"));
    assert_eq!(&*image.pos.file, "b.yaml");
}

#[test]
fn ports_from_an_override_are_appended_and_duplicates_collapse() {
    let m = merged(
        "services:\n  web:\n    ports: [\"8080:80\", \"9000:9000\"]\n",
        "services:\n  web:\n    ports: [\"8443:443\", \"8080:80\"]\n",
    );
    assert_eq!(
        texts(at(&m, &["services", "web", "ports"])),
        vec!["8080:80", "9000:9000", "8443:443"]
    );
}

#[test]
fn command_and_entrypoint_are_replaced_not_appended() {
    let m = merged(
        "services:\n  web:\n    command: [a, b]\n    healthcheck: {test: [CMD, x]}\n",
        "services:\n  web:\n    command: [c]\n    healthcheck: {test: [CMD, y]}\n",
    );
    assert_eq!(texts(at(&m, &["services", "web", "command"])), vec!["c"]);
    assert_eq!(
        texts(at(&m, &["services", "web", "healthcheck", "test"])),
        vec!["CMD", "y"]
    );
}

#[test]
fn environment_merges_by_key_across_list_and_map_forms() {
    let m = merged(
        "services:\n  web:\n    environment: [A=1, B=2]\n",
        "services:\n  web:\n    environment: {B: 3, C: null}\n",
    );
    assert_eq!(
        texts(at(&m, &["services", "web", "environment"])),
        vec!["A=1", "B=3", "C"]
    );
}

#[test]
fn depends_on_list_and_map_forms_merge() {
    let m = merged(
        "services:\n  web:\n    depends_on: [db]\n",
        "services:\n  web:\n    depends_on:\n      cache: {condition: service_healthy}\n",
    );
    let d = at(&m, &["services", "web", "depends_on"]).as_map().unwrap();
    assert_eq!(d.keys().collect::<Vec<_>>(), vec!["db", "cache"]);
    assert_eq!(
        at(&m, &["services", "web", "depends_on", "db", "condition"]).as_str(),
        Some("service_started")
    );
}

#[test]
fn volumes_merge_by_target() {
    let m = merged(
        "services:\n  web:\n    volumes: [\"data:/data\", \"./a:/a\"]\n",
        "services:\n  web:\n    volumes:\n      - type: volume\n        source: other\n        target: /data\n",
    );
    let v = at(&m, &["services", "web", "volumes"]).as_seq().unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(at(&v[0], &["source"]).as_str(), Some("other"));
}

#[test]
fn build_string_merges_with_build_mapping() {
    let m = merged(
        "services:\n  web:\n    build: ./app\n",
        "services:\n  web:\n    build: {target: prod}\n",
    );
    assert_eq!(
        at(&m, &["services", "web", "build", "context"]).as_str(),
        Some("./app")
    );
    assert_eq!(
        at(&m, &["services", "web", "build", "target"]).as_str(),
        Some("prod")
    );
}

#[test]
fn logging_options_merge_only_for_the_same_driver() {
    let same = merged(
        "services:\n  w:\n    logging: {driver: json-file, options: {a: 1}}\n",
        "services:\n  w:\n    logging: {options: {b: 2}}\n",
    );
    assert!(
        at(&same, &["services", "w", "logging", "options"])
            .as_map()
            .unwrap()
            .contains_key("a")
    );
    let other = merged(
        "services:\n  w:\n    logging: {driver: json-file, options: {a: 1}}\n",
        "services:\n  w:\n    logging: {driver: syslog, options: {b: 2}}\n",
    );
    assert!(
        !at(&other, &["services", "w", "logging", "options"])
            .as_map()
            .unwrap()
            .contains_key("a")
    );
}

#[test]
fn reset_removes_and_override_replaces() {
    let m = merged(
        "services:\n  web:\n    ports: [\"80:80\"]\n    environment: {A: 1}\n    deploy: {replicas: 2, labels: [x=y]}\n",
        "services:\n  web:\n    ports: !reset []\n    deploy: !override {replicas: 3}\n",
    );
    let web = at(&m, &["services", "web"]).as_map().unwrap();
    assert!(!web.contains_key("ports"));
    assert!(web.contains_key("environment"));
    let deploy = at(&m, &["services", "web", "deploy"]).as_map().unwrap();
    assert_eq!(deploy.keys().collect::<Vec<_>>(), vec!["replicas"]);
    assert_eq!(deploy.get("replicas").unwrap().tag, None);
}

#[test]
fn a_mapping_cannot_be_overridden_by_a_scalar() {
    let e = merge_files(
        doc("a.yaml", "services:\n  web:\n    deploy: {replicas: 2}\n"),
        doc("b.yaml", "services:\n  web:\n    deploy: fast\n"),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "b.yaml:3:13: services.web.deploy: cannot override a mapping with \"fast\""
    );
}

#[test]
fn a_null_override_keeps_the_base() {
    let m = merged("services:\n  web:\n    image: a\n", "services:\n  web:\n");
    assert_eq!(at(&m, &["services", "web", "image"]).as_str(), Some("a"));
}

#[test]
fn secrets_are_unique_by_target() {
    let m = merged(
        "services:\n  web:\n    secrets: [db]\n",
        "services:\n  web:\n    secrets: [{source: db, mode: 0400}, api]\n",
    );
    let s = at(&m, &["services", "web", "secrets"]).as_seq().unwrap();
    assert_eq!(s.len(), 2);
    assert!(s[0].as_map().is_some());
}
