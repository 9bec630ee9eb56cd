//! Loading whole projects as compose does: discovery, `.env`, profiles, names, `env_file`,
//! `include` and `extends` across files. Files live in memory under `/p`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use skiff_spec::loader::MemLoader;
use skiff_spec::project::{LoadOptions, LoadedProject, load};

fn opts(env: &[(&str, &str)]) -> LoadOptions {
    LoadOptions {
        working_dir: PathBuf::from("/p"),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        ..LoadOptions::default()
    }
}

fn files(list: &[(&str, &str)]) -> MemLoader {
    let mut l = MemLoader::new();
    for (p, t) in list {
        l.insert(format!("/p/{p}"), *t);
    }
    l
}

fn ok(l: &MemLoader, o: &LoadOptions) -> LoadedProject {
    load(l, o).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn discovery_finds_compose_yaml_and_its_override() {
    let l = files(&[
        ("compose.yaml", "services:\n  web: {image: \"web:1\"}\n"),
        (
            "compose.override.yaml",
            "services:\n  web: {image: \"web:2\"}\n",
        ),
        ("docker-compose.yml", "services:\n  other: {image: x}\n"),
    ]);
    let p = ok(&l, &opts(&[]));
    assert_eq!(p.project.services["web"].image.as_deref(), Some("web:2"));
    assert!(!p.project.services.contains_key("other"));
    assert_eq!(p.name, "p");
}

#[test]
fn discovery_walks_up_from_a_subdirectory() {
    let l = files(&[("compose.yaml", "services:\n  web: {image: w}\n")]);
    let mut o = opts(&[]);
    o.working_dir = PathBuf::from("/p/src/deep");
    assert_eq!(ok(&l, &o).project_dir, PathBuf::from("/p"));
}

#[test]
fn compose_file_variable_names_the_files() {
    let l = files(&[
        ("a.yaml", "services:\n  a: {image: a}\n"),
        ("b.yaml", "services:\n  b: {image: b}\n"),
        (".env", "COMPOSE_FILE=a.yaml:b.yaml\n"),
    ]);
    let p = ok(&l, &opts(&[]));
    assert_eq!(
        p.project.services.keys().collect::<Vec<_>>(),
        vec!["a", "b"]
    );
}

#[test]
fn the_process_environment_wins_over_dot_env() {
    let l = files(&[
        (
            "compose.yaml",
            "services:\n  web: {image: \"web:${TAG}\", environment: [FROM_SHELL]}\n",
        ),
        (".env", "TAG=from-dotenv\n"),
    ]);
    assert_eq!(
        ok(&l, &opts(&[])).project.services["web"].image.as_deref(),
        Some("web:from-dotenv")
    );
    let p = ok(&l, &opts(&[("TAG", "from-shell"), ("FROM_SHELL", "yes")]));
    assert_eq!(
        p.project.services["web"].image.as_deref(),
        Some("web:from-shell")
    );
    assert_eq!(
        p.project.services["web"].environment["FROM_SHELL"].as_deref(),
        Some("yes")
    );
}

#[test]
fn env_file_flag_replaces_dot_env() {
    let l = files(&[
        (
            "compose.yaml",
            "services:\n  web: {image: \"web:${TAG:-none}\"}\n",
        ),
        (".env", "TAG=dotenv\n"),
        ("ci.env", "OTHER=1\n"),
    ]);
    let mut o = opts(&[]);
    o.env_files = vec![PathBuf::from("ci.env")];
    assert_eq!(
        ok(&l, &o).project.services["web"].image.as_deref(),
        Some("web:none")
    );
    o.env_files = vec![PathBuf::from("missing.env")];
    assert!(
        load(&l, &o)
            .unwrap_err()
            .to_string()
            .contains("missing.env")
    );
}

#[test]
fn profiles_enable_services_and_guard_dependencies() {
    let text = "services:\n  web: {image: w}\n  debug: {image: d, profiles: [debug]}\n  tool: {image: t, profiles: [tools], depends_on: [web]}\n";
    let l = files(&[("compose.yaml", text)]);
    let names = |o: &LoadOptions| {
        ok(&l, o)
            .project
            .services
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&opts(&[])), vec!["web"]);
    assert_eq!(
        names(&opts(&[("COMPOSE_PROFILES", "debug,tools")])),
        vec!["debug", "tool", "web"]
    );
    let mut o = opts(&[]);
    o.profiles = vec!["*".into()];
    assert_eq!(names(&o).len(), 3);

    let l = files(&[(
        "compose.yaml",
        "services:\n  web: {image: w, depends_on: [db]}\n  db: {image: d, profiles: [data]}\n",
    )]);
    let e = load(&l, &opts(&[])).unwrap_err().to_string();
    assert!(e.contains("compose.yaml:2:32: services.web.depends_on.db: service \"db\" is only enabled by the profiles [data]"), "{e}");
}

#[test]
fn project_name_comes_from_the_file_then_flag_then_variable_then_directory() {
    let with_name = files(&[(
        "compose.yaml",
        "name: fromfile\nservices: {a: {image: a}}\n",
    )]);
    let without = files(&[("compose.yaml", "services: {a: {image: a}}\n")]);
    let mut o = opts(&[("COMPOSE_PROJECT_NAME", "fromvar")]);
    o.project_name = Some("fromflag".into());
    assert_eq!(ok(&with_name, &o).name, "fromfile");
    assert_eq!(ok(&without, &o).name, "fromflag");
    o.project_name = None;
    assert_eq!(ok(&without, &o).name, "fromvar");
    o.project_name = Some("Bad Name".into());
    assert!(
        load(&without, &o)
            .unwrap_err()
            .to_string()
            .contains("must contain only lowercase")
    );
    let mut o = opts(&[]);
    o.working_dir = PathBuf::from("/My.App");
    let l = {
        let mut l = MemLoader::new();
        l.insert("/My.App/compose.yaml", "services: {a: {image: a}}\n");
        l
    };
    assert_eq!(ok(&l, &o).name, "myapp");
}

#[test]
fn env_files_fill_environment_under_explicit_values() {
    let l = files(&[
        (
            "compose.yaml",
            "services:\n  web:\n    image: w\n    env_file: [web.env, {path: opt.env, required: false}]\n    environment: {B: explicit}\n",
        ),
        ("web.env", "A=from-file\nB=from-file\n"),
    ]);
    let env = &ok(&l, &opts(&[])).project.services["web"].environment;
    assert_eq!(env["A"].as_deref(), Some("from-file"));
    assert_eq!(env["B"].as_deref(), Some("explicit"));

    let l = files(&[(
        "compose.yaml",
        "services:\n  web:\n    image: w\n    env_file: gone.env\n",
    )]);
    let e = load(&l, &opts(&[])).unwrap_err().to_string();
    assert!(
        e.starts_with("compose.yaml:4:15: services.web.env_file: cannot read /p/gone.env"),
        "{e}"
    );
}

#[test]
fn relative_paths_become_absolute_against_the_project_directory() {
    let l = files(&[(
        "compose.yaml",
        "services:\n  web:\n    build: ./app\n    volumes: [\"./data:/data\", \"cache:/cache\"]\nvolumes: {cache: {}}\n",
    )]);
    let p = ok(&l, &opts(&[]));
    let web = &p.project.services["web"];
    assert_eq!(
        web.build.as_ref().unwrap().context.as_deref(),
        Some("/p/app")
    );
    assert_eq!(web.volumes[0].source.as_deref(), Some("/p/data"));
    assert_eq!(web.volumes[1].source.as_deref(), Some("cache"));
    assert_eq!(p.project.volumes["cache"].name.as_deref(), Some("p_cache"));
}

#[test]
fn include_and_file_extends_work_together() {
    let l = files(&[
        (
            "compose.yaml",
            "include: [db/compose.yaml]\nservices:\n  web:\n    extends: {file: common.yaml, service: base}\n    depends_on: [db]\n",
        ),
        (
            "common.yaml",
            "services:\n  base: {image: \"base:${TAG}\", environment: {A: \"1\"}}\n",
        ),
        (
            "db/compose.yaml",
            "services:\n  db: {image: d, build: ./ctx}\n",
        ),
    ]);
    let p = ok(&l, &opts(&[("TAG", "7")]));
    assert_eq!(p.project.services["web"].image.as_deref(), Some("base:7"));
    assert_eq!(
        p.project.services["db"]
            .build
            .as_ref()
            .unwrap()
            .context
            .as_deref(),
        Some("/p/db/ctx")
    );
}

#[test]
fn include_cycles_are_errors_not_hangs() {
    let l = files(&[
        (
            "compose.yaml",
            "include: [b.yaml]\nservices: {a: {image: a}}\n",
        ),
        (
            "b.yaml",
            "include: [compose.yaml]\nservices: {b: {image: b}}\n",
        ),
    ]);
    let e = load(&l, &opts(&[])).unwrap_err().to_string();
    assert!(
        e.contains("include cycle: compose.yaml -> b.yaml -> compose.yaml"),
        "{e}"
    );
}

#[test]
fn an_empty_file_is_rejected_but_an_empty_override_is_not() {
    // As docker compose: "empty compose file" when nothing is left after the merge.
    let l = files(&[("compose.yaml", "")]);
    assert_eq!(
        load(&l, &opts(&[])).unwrap_err().to_string(),
        "compose.yaml:1:1: empty compose file"
    );
    let l = files(&[
        ("compose.yaml", "services:\n  web: {image: web}\n"),
        ("compose.override.yaml", "# nothing yet\n"),
    ]);
    assert_eq!(ok(&l, &opts(&[])).project.services.len(), 1);
    let l = files(&[("compose.yaml", "- a\n- b\n")]);
    assert!(
        load(&l, &opts(&[]))
            .unwrap_err()
            .to_string()
            .contains("the top level must be a mapping")
    );
}

#[test]
fn environment_values_interpolate_under_dotenv_and_the_shell_and_over_defaults() {
    let l = files(&[
        (
            "compose.yaml",
            "services:\n  web:\n    image: \"web:${TAG}\"\n    environment:\n      A: \"${A:-dflt}\"\n      B: \"${B}\"\n      C: \"${C:-dflt}\"\n      D: \"${D:-dflt}\"\n",
        ),
        (".env", "B=from-dotenv\n"),
    ]);
    let mut o = opts(&[("C", "from-shell")]);
    o.values = [("TAG", "7"), ("A", "env"), ("B", "env"), ("C", "env")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let p = ok(&l, &o);
    let web = &p.project.services["web"];
    assert_eq!(web.image.as_deref(), Some("web:7"));
    let env = format!("{:?}", web.environment);
    assert!(env.contains("\"env\""), "env value before a default: {env}");
    assert!(
        env.contains("from-dotenv"),
        ".env wins over env values: {env}"
    );
    assert!(
        env.contains("from-shell"),
        "the shell wins over env values: {env}"
    );
    assert!(env.contains("dflt"), "defaults when nothing sets it: {env}");
}

#[test]
fn extra_files_merge_after_the_users_and_errors_name_them() {
    let l = files(&[
        ("compose.yaml", "services:\n  web: {image: \"web:1\"}\n"),
        (
            "env:alice/override-1.yaml",
            "services:\n  web: {image: \"web:2\"}\n",
        ),
        (
            "env:alice/override-2.yaml",
            "services:\n  web:\n    replicas: lots\n",
        ),
    ]);
    let mut o = opts(&[]);
    o.files = vec![PathBuf::from("compose.yaml")];
    o.extra_files = vec![PathBuf::from("env:alice/override-1.yaml")];
    let p = ok(&l, &o);
    assert_eq!(p.project.services["web"].image.as_deref(), Some("web:2"));
    assert_eq!(p.project_dir, PathBuf::from("/p"));
    o.extra_files
        .push(PathBuf::from("env:alice/override-2.yaml"));
    let err = load(&l, &o).unwrap_err().to_string();
    assert!(err.contains("env:alice/override-2.yaml:3:"), "{err}");
}
