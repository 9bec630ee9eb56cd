//! Every file of the shared compose corpus is a test case: valid files load and `config`
//! round-trips; each invalid file is rejected with an error naming what its first comment line
//! says it must name.

use std::path::{Path, PathBuf};

use skiff_spec::project::{LoadedProject, load_str};

const ENV: &[(&str, &str)] = &[("TAG", "1.4.2")];

fn corpus_dir() -> PathBuf {
    let dir = std::env::var_os("SKIFF_COMPOSE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/compose-corpus")
        });
    assert!(
        dir.join("valid").is_dir() && dir.join("invalid").is_dir(),
        "compose corpus not found at {} (set SKIFF_COMPOSE_CORPUS)",
        dir.display()
    );
    dir
}

fn files(sub: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(corpus_dir().join(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no files in corpus/{sub}");
    out
}

fn yaml(p: &LoadedProject) -> String {
    skiff_spec::render::to_yaml(&p.project).unwrap()
}

#[test]
fn every_valid_corpus_file_loads_and_config_round_trips() {
    for (name, text) in files("valid") {
        let first = load_str(&[(&name, &text)], ENV)
            .unwrap_or_else(|e| panic!("{name} should be valid:\n{e}"));
        let out = yaml(&first);
        let second = load_str(&[("config.yaml", &out)], ENV)
            .unwrap_or_else(|e| panic!("{name}: config output does not load again:\n{e}\n{out}"));
        assert_eq!(
            first.project, second.project,
            "{name}: config output reads back to a different model:\n{out}"
        );
        assert_eq!(out, yaml(&second), "{name}: config is not a fixpoint");
    }
}

/// What an invalid file's first comment line asks the error to contain: field paths,
/// quoted messages, dependency chains and bare variable names.
fn expectations(comment: &str) -> Vec<String> {
    let mut out = Vec::new();
    let text = comment.trim_start_matches('#').trim();
    let text = text.strip_prefix("error must name:").unwrap_or(text).trim();
    for (i, part) in text.split('"').enumerate() {
        if i % 2 == 1 {
            out.push(part.to_string());
            continue;
        }
        for word in part.split(|c: char| c.is_whitespace() || "();".contains(c)) {
            let w = word.trim_end_matches([',', '.']);
            let env_var = w.len() > 2 && w.chars().all(|c| c.is_ascii_uppercase() || c == '_');
            if w.starts_with("services.") || env_var {
                out.push(w.to_string());
            }
        }
    }
    if let Some(i) = text.find(" -> ") {
        let start = text[..i].rfind(' ').map_or(0, |s| s + 1);
        let chain: String = text[start..].to_string();
        out.push(chain.trim().to_string());
    }
    out
}

#[test]
fn every_invalid_corpus_file_is_rejected_naming_the_field() {
    for (name, text) in files("invalid") {
        let first_line = text.lines().next().unwrap_or_default();
        assert!(
            first_line.starts_with('#'),
            "{name}: first line must say what the error names"
        );
        let wanted = expectations(first_line);
        assert!(
            !wanted.is_empty(),
            "{name}: nothing to check in {first_line:?}"
        );
        let err = match load_str(&[(&name, &text)], ENV) {
            Ok(_) => panic!("{name} should be rejected ({first_line})"),
            Err(e) => e,
        };
        let shown = err.to_string();
        for w in &wanted {
            assert!(
                shown.contains(w.as_str()),
                "{name}: error does not name {w:?}:\n{shown}"
            );
        }
        let d = &err.diagnostics[0];
        let pos = d
            .pos
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: error has no position: {shown}"));
        assert_eq!(
            &*pos.file,
            name.as_str(),
            "{name}: error names the wrong file: {shown}"
        );
        assert!(
            pos.line > 1,
            "{name}: error should point below the comment line: {shown}"
        );
    }
}

#[test]
fn expectation_parser_reads_the_corpus_comment_styles() {
    assert_eq!(
        expectations("# error must name: services.web.deploy.replicas"),
        vec!["services.web.deploy.replicas"]
    );
    assert_eq!(
        expectations("# error must name: the dependency cycle a -> b -> c -> a"),
        vec!["a -> b -> c -> a"]
    );
    assert_eq!(
        expectations(
            "# error must name: UNSET_VAR and its message \"set UNSET_VAR to the database URL\""
        ),
        vec!["UNSET_VAR", "set UNSET_VAR to the database URL"]
    );
}

#[test]
fn x_skiff_rules_are_checked_with_positions() {
    let cases: &[(&str, &str)] = &[
        (
            "x-skiff: {domain: \"bad domain\"}\nservices: {a: {image: a}}\n",
            "c.yaml:1:11: x-skiff.domain: \"bad domain\" is not a DNS domain",
        ),
        (
            "services:\n  a:\n    image: a\n    x-skiff: {executable: ./a}\n",
            "c.yaml:4:15: services.a.x-skiff.executable: applies to the process driver only",
        ),
        (
            "services:\n  a:\n    x-skiff: {driver: process}\n",
            "services.a.x-skiff: service \"a\" uses the process driver but names no program",
        ),
        (
            "services:\n  a:\n    command: [a]\n    x-skiff:\n      driver: process\n      artifact: {url: ftp://x/a.tgz, sha256: abc}\n",
            "services.a.x-skiff.artifact.sha256: must be 64 hexadecimal digits",
        ),
        (
            "services:\n  a:\n    image: a\n    x-skiff:\n      release:\n        strategy: canary\n        steps: [{weight: 50}, {weight: 10}]\n",
            "services.a.x-skiff.release.steps.1.weight: weights must rise strictly within 1-100; got 10 after 50",
        ),
        (
            "services:\n  a:\n    image: a\n    x-skiff:\n      routes: [{path: api, port: http}]\n",
            "services.a.x-skiff.routes.0.path: must start with /",
        ),
        (
            "services:\n  a:\n    image: a\n    x-skiff:\n      readiness: {http: {path: /h}, tcp: {}}\n",
            "services.a.x-skiff.readiness: give exactly one of http, tcp or test",
        ),
        (
            "services:\n  a:\n    image: a\n    expose: [\"80\"]\n    x-skiff:\n      liveness: {http: {port: admin}}\n",
            "services.a.x-skiff.liveness.http.port: no port named or numbered \"admin\" in ports or expose",
        ),
        (
            "services:\n  a:\n    image: a\n    x-skiff:\n      readiness: {tcp: {}}\n",
            "services.a.x-skiff.readiness.tcp: the service has no ports or expose to check",
        ),
        (
            "services:\n  a:\n    image: a\n    expose: [\"80\"]\n    x-skiff:\n      readiness: {http: {path: h, status: 700}}\n",
            "services.a.x-skiff.readiness.http.path: must start with /",
        ),
        (
            "services:\n  a:\n    image: a\n    expose: [\"80\"]\n    x-skiff:\n      readiness: {http: {status: 700}}\n",
            "services.a.x-skiff.readiness.http.status: 700 is not an HTTP status (100-599)",
        ),
        (
            "services:\n  a:\n    image: a\n    x-skiff:\n      liveness: {test: [CMD, 'true'], intervall: 1s}\n",
            "services.a.x-skiff.liveness.intervall: unknown field, did you mean \"interval\"?",
        ),
        (
            "services:\n  a:\n    image: a\n    environment: {DB: '{{ service(\"db\").address }}'}\n",
            "c.yaml:4:19: services.a.environment.DB: template refers to undefined service \"db\"",
        ),
        (
            "services:\n  a: {image: a, ports: [\"8080:80\"]}\n  b: {image: b, ports: [\"8080:81\"]}\n",
            "services.b.ports: published port 8080/tcp is already used by service \"a\"",
        ),
    ];
    for (text, want) in cases {
        let e = load_str(&[("c.yaml", text)], ENV).unwrap_err().to_string();
        assert!(e.contains(want), "want {want:?} in:\n{e}");
    }
}
