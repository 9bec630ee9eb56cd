//! compose's rules beyond the typed model: the compose-spec schema and the checks compose-go
//! makes after it. Each class of invalid document is a file in `tests/compose/invalid` whose
//! `# error: ` comment lines are the exact error skiff must print; every file of
//! `tests/compose/valid` must load and round-trip through `config`.

use std::path::{Path, PathBuf};

use skiff_spec::project::load_str;

fn dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/compose")
        .join(sub)
}

/// Loads `tests/compose/invalid/<name>.yaml` as `compose.yaml` and checks the whole error text.
fn rejects(name: &str) {
    let text = std::fs::read_to_string(dir("invalid").join(format!("{name}.yaml"))).unwrap();
    let expected: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# error: "))
        .collect();
    assert!(!expected.is_empty(), "{name}: no `# error: ` line");
    let err = match load_str(&[("compose.yaml", &text)], &[]) {
        Ok(_) => panic!("{name} should be rejected"),
        Err(e) => e.to_string(),
    };
    assert_eq!(err, expected.join("\n"), "{name}");
}

#[test]
fn every_invalid_document_has_its_test_and_every_valid_one_loads() {
    let tests = include_str!("rules.rs");
    for entry in std::fs::read_dir(dir("invalid")).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            tests.contains(&format!("rejects(\"{stem}\")")),
            "tests/compose/invalid/{stem}.yaml has no test in rules.rs"
        );
    }
    for entry in std::fs::read_dir(dir("valid")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let p = load_str(&[(&name, &text)], &[])
            .unwrap_or_else(|e| panic!("{name} should be valid:\n{e}"));
        let out = skiff_spec::render::to_yaml(&p.project).unwrap();
        load_str(&[("config.yaml", &out)], &[])
            .unwrap_or_else(|e| panic!("{name}: config output does not load again:\n{e}\n{out}"));
    }
}

// === the schema ===

#[test]
fn schema_unknown_field_keeps_the_did_you_mean_hint() {
    rejects("schema-unknown-field");
}

#[test]
fn schema_port_of_the_wrong_type_lists_the_allowed_types() {
    rejects("schema-port-as-list");
}

#[test]
fn schema_watch_action_outside_the_enum() {
    rejects("schema-watch-action");
}

#[test]
fn schema_service_name_with_a_space() {
    rejects("schema-service-name");
}

// === compose-go's checks after the schema ===

#[test]
fn network_mode_with_networks() {
    rejects("network-mode-with-networks");
}

#[test]
fn network_mode_naming_no_service() {
    rejects("network-mode-unknown-service");
}

#[test]
fn name_with_external_name() {
    rejects("external-name-with-name");
}

#[test]
fn external_volume_with_driver_options_or_labels() {
    rejects("external-volume-with-driver");
}

#[test]
fn secret_and_config_without_a_source() {
    rejects("secret-config-without-source");
}

#[test]
fn two_mounts_on_one_target() {
    rejects("mount-target-twice");
}

#[test]
fn build_ssh_null_or_malformed_entries() {
    rejects("build-ssh-null");
    rejects("build-ssh-malformed");
}

#[test]
fn device_requests_count_ids_and_capabilities() {
    rejects("device-without-capabilities");
    rejects("device-count-and-ids");
}

#[test]
fn environment_keys_with_spaces() {
    rejects("environment-key-space");
}

#[test]
fn extra_hosts_not_host_and_ip() {
    rejects("extra-hosts");
}

#[test]
fn shm_size_and_tmpfs_sizes_not_byte_sizes() {
    rejects("byte-sizes");
}

#[test]
fn parallelism_is_a_count_or_a_percentage_of_1_to_100() {
    rejects("parallelism");
}

#[test]
fn develop_watch_without_action_or_sync_target() {
    rejects("develop-watch");
    rejects("develop-watch-target");
}

#[test]
fn settings_given_twice_disagree_or_exclude_each_other() {
    rejects("consistency");
}

// === YAML ===

#[test]
fn non_string_service_name() {
    rejects("non-string-key");
}

#[test]
fn non_string_environment_key() {
    rejects("non-string-env-key");
}

#[test]
fn empty_compose_file() {
    rejects("empty-file");
}

#[test]
fn tab_in_indentation_names_its_line() {
    rejects("tab-indentation");
}

#[test]
fn alias_cycle_names_the_key_holding_it() {
    rejects("alias-cycle");
}

// === x-skiff.release ===

#[test]
fn release_fields_are_acted_on_without_warnings_and_analysis_mistakes_name_their_field() {
    let text = "services:\n  web:\n    image: nginx\n    x-skiff:\n      release:\n        \
                strategy: canary\n        steps:\n          - {weight: 10, pause: 1m}\n        \
                analysis: {max_error_rate: 1%, max_p99: 300ms, min_requests: 200, interval: 10s}\n  \
                db:\n    image: postgres\n    x-skiff:\n      release:\n        \
                strategy: blue-green\n        switch: manual\n        keep_previous: 10m\n";
    let p = load_str(&[("compose.yaml", text)], &[]).unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let bad = text
        .replace("max_error_rate: 1%", "max_error_rate: 150%")
        .replace("interval: 10s", "interval: 0s");
    let err = load_str(&[("compose.yaml", bad.as_str())], &[]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(
            "services.web.x-skiff.release.analysis.max_error_rate: must be within 0%-100%; got 150%"
        ),
        "{text}"
    );
    assert!(
        text.contains("services.web.x-skiff.release.analysis.interval: must be longer than 0s"),
        "{text}"
    );
    let rolling = "services:\n  web:\n    image: nginx\n    x-skiff:\n      release:\n        \
                   analysis: {min_requests: 5}\n";
    let err = load_str(&[("compose.yaml", rolling)], &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("compose.yaml:6:9: services.web.x-skiff.release.analysis: applies to strategy: canary or blue-green only"),
        "{err}"
    );
}

#[test]
fn placement_constraints_and_spread_name_what_skiff_cannot_place_by() {
    rejects("placement");
}

#[test]
fn placement_reservations_and_mode_reach_the_runtime_spec() {
    use skiff_model::{Constraint, DeployMode, Strategy};
    let text = std::fs::read_to_string(dir("valid").join("placement.yaml")).unwrap();
    let project = load_str(&[("compose.yaml", &text)], &[]).unwrap();
    let stack =
        skiff_spec::runtime::stack_spec(&project, &skiff_spec::loader::MemLoader::new()).unwrap();
    let web = &stack.services["web"];
    assert_eq!(web.reservations.cpu_millis, 250);
    assert_eq!(web.reservations.memory_bytes, 256 << 20);
    assert_eq!(
        web.placement.constraints,
        vec![
            Constraint::parse("node.labels.zone != a").unwrap(),
            Constraint::parse("node.hostname == edge-1").unwrap()
        ],
        "node.role is dropped"
    );
    assert_eq!(web.placement.spread, vec!["zone".to_string()]);
    assert_eq!(web.placement.max_replicas_per_node, Some(2));
    assert_eq!(web.placement.strategy, Strategy::Binpack);
    let agent = &stack.services["agent"];
    assert_eq!(agent.placement.mode, DeployMode::Global);
    assert_eq!(
        agent.reservations.memory_bytes,
        64 << 20,
        "the limit when nothing is reserved"
    );
}

#[test]
fn reload_signals_are_names_skiff_kill_takes_and_config_targets_stay_inside() {
    rejects("reload-and-config-targets");
}

#[test]
fn seeds_fill_a_mounted_owned_volume_from_a_path_or_an_http_url() {
    rejects("seed");
    rejects("seed-consistency");
}

#[test]
fn a_missing_seed_file_and_mounts_a_process_cannot_use_are_warnings() {
    let text = "services:\n  db:\n    command: [db]\n    volumes:\n      - data:/var/lib/db\n      \
                - ./conf:/etc/db\n      - /scratch\n    x-skiff:\n      driver: process\n      \
                seed: {from: snap.tar.zst, into: data}\nvolumes:\n  data: {}\n";
    let p = load_str(&[("compose.yaml", text)], &[]).unwrap();
    let warnings: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![
            "compose.yaml:10:14: services.db.x-skiff.seed.from: /project/snap.tar.zst does not \
             exist on this host (an error at up)",
            "compose.yaml:6:9: services.db.volumes.1: bind mounts are not acted on by the process \
             driver (a process sees the host's paths as they are)",
            "compose.yaml:4:5: services.db.volumes: bind source /project/conf does not exist on \
             this host (an error at up)",
            "compose.yaml:7:9: services.db.volumes.2: anonymous volumes are not acted on by the \
             process driver",
        ]
    );
}
