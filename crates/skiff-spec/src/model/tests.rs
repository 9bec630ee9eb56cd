use super::*;
use crate::de::from_node;
use crate::node::{Limits, parse};

fn service(text: &str) -> Result<Service, String> {
    let doc = parse("c.yaml", text, &Limits::default()).unwrap().remove(0);
    from_node::<Service>(&doc, "services.s").map_err(|e| e.to_string())
}

#[test]
fn ports_mix_short_and_long_syntax_in_one_list() {
    let s = service("ports:\n  - \"8080:80\"\n  - 9000\n  - target: 443\n    published: \"8443\"\n    mode: host\n").unwrap();
    let got: Vec<(u16, Option<&str>, &str)> = s
        .ports
        .iter()
        .map(|p| (p.target, p.published.as_deref(), p.mode.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (80, Some("8080"), "ingress"),
            (9000, None, "ingress"),
            (443, Some("8443"), "host")
        ]
    );
}

#[test]
fn a_bad_port_names_its_list_index() {
    let e = service("ports:\n  - \"80\"\n  - \"99999:80\"\n").unwrap_err();
    assert!(
        e.starts_with("c.yaml:3:5: services.s.ports[1]: invalid port"),
        "{e}"
    );
    let e = service("ports:\n  - target: 80\n    mode: bridge\n").unwrap_err();
    assert!(
        e.contains("services.s.ports[0]: mode must be host or ingress"),
        "{e}"
    );
}

#[test]
fn environment_reads_list_and_map_forms_alike() {
    let a = service("environment: [A=1, B, C=x=y]\n")
        .unwrap()
        .environment;
    let b = service("environment: {A: 1, B: null, C: x=y}\n")
        .unwrap()
        .environment;
    assert_eq!(a, b);
    assert_eq!(a["A"].as_deref(), Some("1"));
    assert_eq!(a["B"], None);
    assert_eq!(a["C"].as_deref(), Some("x=y"));
}

#[test]
fn depends_on_list_form_means_service_started_and_required() {
    let s = service("depends_on: [db]\n").unwrap();
    let d = &s.depends_on["db"];
    assert_eq!(
        (d.condition, d.required, d.restart),
        (Condition::ServiceStarted, true, false)
    );
    let s = service("depends_on:\n  db: {condition: service_healthy, restart: true}\n").unwrap();
    assert_eq!(s.depends_on["db"].condition, Condition::ServiceHealthy);
    assert!(s.depends_on["db"].restart);
    let e = service("depends_on:\n  db: {condition: healthy}\n").unwrap_err();
    assert!(
        e.contains("services.s.depends_on.db.condition: expected one of service_started"),
        "{e}"
    );
    let e = service("depends_on:\n  db: {}\n").unwrap_err();
    assert!(e.contains("missing required field \"condition\""), "{e}");
}

#[test]
fn command_strings_are_split_like_a_shell() {
    let s = service("command: redis-server --save \"\" --appendonly no\n").unwrap();
    assert_eq!(
        s.command.unwrap().0,
        vec!["redis-server", "--save", "", "--appendonly", "no"]
    );
    let e = service("command: echo \"unterminated\n").unwrap_err();
    assert!(e.contains("cannot split command"), "{e}");
}

#[test]
fn healthcheck_test_string_is_cmd_shell_and_list_must_start_with_a_keyword() {
    let s = service("healthcheck: {test: curl -f localhost}\n").unwrap();
    assert_eq!(
        s.healthcheck.unwrap().test,
        vec!["CMD-SHELL", "curl -f localhost"]
    );
    let e = service("healthcheck: {test: [curl, localhost]}\n").unwrap_err();
    assert!(
        e.contains("first item must be CMD, CMD-SHELL or NONE"),
        "{e}"
    );
}

#[test]
fn resources_read_compose_units() {
    let s =
        service("deploy:\n  resources:\n    limits: {cpus: \"0.50\", memory: 512M, pids: 200}\n")
            .unwrap();
    let l = s.deploy.unwrap().resources.unwrap().limits.unwrap();
    assert_eq!(l.cpus, Some(crate::units::Cpus(0.5)));
    assert_eq!(l.memory, Some(crate::units::Bytes(512 << 20)));
    assert_eq!(l.pids, Some(200));
}

#[test]
fn x_skiff_is_validated_as_strictly_as_compose_fields() {
    let e = service("x-skiff: {drvier: process}\n").unwrap_err();
    assert!(
        e.starts_with(
            "c.yaml:1:11: services.s.x-skiff.drvier: unknown field, did you mean \"driver\"?"
        ),
        "{e}"
    );
    let e = service("x-skiff: {driver: podman}\n").unwrap_err();
    assert!(
        e.contains("expected one of docker, process, got \"podman\""),
        "{e}"
    );
    let s = service(
        "x-skiff:\n  driver: process\n  release: {strategy: canary, steps: [{weight: 10, pause: 1m}]}\n",
    )
    .unwrap();
    let x = s.x_skiff.unwrap();
    assert_eq!(x.driver, Some(Driver::Process));
    assert_eq!(x.release.unwrap().steps[0].weight, 10);
}

#[test]
fn restart_accepts_on_failure_with_a_count() {
    assert_eq!(
        service("restart: on-failure:3\n").unwrap().restart,
        Some(Restart::OnFailure(Some(3)))
    );
    assert_eq!(
        service("restart: \"no\"\n").unwrap().restart,
        Some(Restart::No)
    );
    assert!(
        service("restart: sometimes\n")
            .unwrap_err()
            .contains("expected one of no, always")
    );
}

#[test]
fn every_compose_spec_service_field_is_accepted() {
    // One line per field the compose-spec lists for services (schema compose-spec.json).
    let text = "annotations: {a: b}\nattach: false\nblkio_config: {weight: 300}\ncap_add: [ALL]\n\
        cap_drop: [NET_ADMIN]\ncgroup: host\ncgroup_parent: m\ncontainer_name: c\ncpu_count: 1\n\
        cpu_percent: 10\ncpu_period: 100\ncpu_quota: 50\ncpu_rt_period: 1\ncpu_rt_runtime: 1\n\
        cpu_shares: 5\ncpus: 1.5\ncpuset: 0-1\ncredential_spec: {file: f}\ndevelop: {watch: []}\n\
        device_cgroup_rules: [a]\ndevices: [/dev/x]\ndns: 8.8.8.8\ndns_opt: [a]\ndns_search: x\n\
        domainname: d\nexternal_links: [a]\nextra_hosts: [a:1.2.3.4]\ngpus: all\ngroup_add: [1]\n\
        hostname: h\nimage: i\ninit: true\nipc: host\nisolation: default\nlabel_file: l\n\
        links: [a]\nlogging: {driver: json-file}\nmac_address: m\nmem_limit: 1g\n\
        mem_reservation: 1m\nmem_swappiness: 1\nmemswap_limit: 1g\nmodels: [m]\n\
        network_mode: host\noom_kill_disable: true\noom_score_adj: 1\npid: host\npids_limit: 5\n\
        platform: linux/amd64\npost_start: [{command: x}]\npre_start: [{command: x}]\n\
        pre_stop: [{command: x}]\nprivileged: true\nprovider: {type: x}\npull_policy: always\n\
        pull_refresh_after: 1h\nread_only: true\nruntime: runc\nscale: 2\nsecurity_opt: [a]\n\
        shm_size: 1g\nstdin_open: true\nstorage_opt: {size: 1g}\nsysctls: {a: 1}\ntmpfs: /run\n\
        tty: true\nulimits: {nofile: 1024}\nuse_api_socket: true\nuser: u\nuserns_mode: host\n\
        uts: host\nvolumes_from: [a]\nworking_dir: /w\n";
    let s = service(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.scale, Some(2));
    assert_eq!(s.tmpfs, vec!["/run"]);
}

#[test]
fn a_service_stays_small_so_huge_files_stay_cheap() {
    // Opaque and optional sub-structs are boxed: a 40k-service file must not cost gigabytes.
    assert!(
        std::mem::size_of::<Service>() <= 1536,
        "{}",
        std::mem::size_of::<Service>()
    );
}
