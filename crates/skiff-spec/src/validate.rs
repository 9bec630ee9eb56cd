//! Checks that need the whole project: references between services and resources, the
//! dependency graph, `x-skiff` rules, and warnings about what skiff does not act on.
//!
//! The typed model has no positions, so each finding looks its position up in the merged tree
//! by field path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::diag::{Diagnostic, Pos, SpecError};
use crate::loader::Loader;
use crate::model::{
    DeployMode, Driver, NOT_ACTED_ON, Project, Service, Strategy, VolumeKind, XSkiffService,
};
use crate::node::{Node, Value};
use crate::order;

// === positions by path ===

/// Walks `path` through maps (by key) and sequences (by index, or by an item whose text or
/// `source`/`path` equals the segment). Returns the node reached.
fn walk<'a>(tree: &'a Node, path: &[&str]) -> Option<(&'a Node, Option<&'a Pos>)> {
    let mut node = tree;
    let mut key_pos = None;
    for seg in path {
        match &node.value {
            Value::Map(m) => {
                let e = m.entry(seg)?;
                key_pos = Some(&e.key_pos);
                node = &e.value;
            }
            Value::Seq(items) => {
                let found = seg
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| items.get(i))
                    .or_else(|| {
                        items.iter().find(|it| match &it.value {
                            Value::Scalar(s) => {
                                s.text == *seg
                                    || s.text.split_once(['=', ':']).map(|(k, _)| k) == Some(seg)
                            }
                            Value::Map(m) => ["source", "path", "service"]
                                .iter()
                                .any(|k| m.get(k).and_then(Node::as_str) == Some(seg)),
                            _ => false,
                        })
                    })?;
                key_pos = None;
                node = found;
            }
            _ => return None,
        }
    }
    Some((node, key_pos))
}

/// Position of the key at `path` (or of the item, inside a sequence), falling back to the
/// deepest ancestor that exists.
pub fn key_pos(tree: &Node, path: &[&str]) -> Option<Pos> {
    for len in (0..=path.len()).rev() {
        if let Some((node, key)) = walk(tree, &path[..len]) {
            return Some(key.unwrap_or(&node.pos).clone());
        }
    }
    None
}

/// Position of the value at `path`, falling back like [`key_pos`].
pub fn value_pos(tree: &Node, path: &[&str]) -> Option<Pos> {
    for len in (0..=path.len()).rev() {
        if let Some((node, _)) = walk(tree, &path[..len]) {
            return Some(node.pos.clone());
        }
    }
    None
}

/// Position of item `index` of the sequence at `path`.
pub fn item_pos(tree: &Node, path: &[&str], index: usize) -> Option<Pos> {
    let i = index.to_string();
    let mut p: Vec<&str> = path.to_vec();
    p.push(&i);
    value_pos(tree, &p)
}

struct Findings<'a> {
    tree: &'a Node,
    errors: Vec<Diagnostic>,
}

impl Findings<'_> {
    fn error(&mut self, path: &[&str], message: impl Into<String>) {
        let pos = key_pos(self.tree, path);
        self.errors
            .push(Diagnostic::new(pos, path.join("."), message));
    }
}

// === validation ===

/// Validates a normalized project; errors are collected and returned together.
pub fn validate(
    project: &Project,
    tree: &Node,
    loader: &dyn Loader,
    warnings: &mut Vec<Diagnostic>,
) -> Result<(), SpecError> {
    let mut f = Findings {
        tree,
        errors: Vec::new(),
    };
    let mut published: BTreeMap<(String, String), String> = BTreeMap::new();
    for (name, svc) in &project.services {
        check_service(&mut f, project, name, svc, &mut published);
        warn_service(tree, loader, name, svc, warnings);
    }
    check_graph(&mut f, project);
    check_resources(&mut f);
    if let Some(domain) = project.x_skiff.as_ref().and_then(|x| x.domain.as_deref())
        && (domain.starts_with("*.") || !valid_host(domain))
    {
        f.error(
            &["x-skiff", "domain"],
            format!("{domain:?} is not a DNS domain such as skiff or example.test"),
        );
    }
    if f.errors.is_empty() {
        Ok(())
    } else {
        f.errors.sort_by(|a, b| a.pos.cmp(&b.pos));
        Err(SpecError {
            diagnostics: f.errors,
        })
    }
}

use skiff_model::valid_service_name;

fn check_service(
    f: &mut Findings,
    project: &Project,
    name: &str,
    svc: &Service,
    published: &mut BTreeMap<(String, String), String>,
) {
    let at = |rest: &[&'static str]| -> Vec<String> {
        let mut p = vec!["services".to_string(), name.to_string()];
        p.extend(rest.iter().map(|s| s.to_string()));
        p
    };
    let err = |f: &mut Findings, path: Vec<String>, msg: String| {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        f.error(&p, msg);
    };
    if !valid_service_name(name) {
        err(
            f,
            at(&[]),
            format!(
                "service name {name:?} must start with a letter or digit and contain only \
                 letters, digits, '_', '.' and '-'"
            ),
        );
    }
    let x = svc.x_skiff.clone().unwrap_or_default();
    let driver = x.driver.unwrap_or(Driver::Docker);
    if driver == Driver::Docker && svc.image.is_none() && svc.build.is_none() {
        err(
            f,
            at(&[]),
            format!(
                "service {name:?} has neither an image nor a build context specified \
                 (to run it as a host process, set x-skiff: {{driver: process}})"
            ),
        );
    }
    for (dep, _) in &svc.depends_on {
        if dep == name {
            err(
                f,
                at_dep(name, dep),
                format!("service {name:?} depends on itself"),
            );
        } else if !project.services.contains_key(dep) {
            err(
                f,
                at_dep(name, dep),
                format!("refers to undefined service {dep:?}"),
            );
        }
    }
    for net in svc.networks.keys() {
        if net != "default" && !project.networks.contains_key(net) {
            let mut p = at(&["networks"]);
            p.push(net.clone());
            err(f, p, format!("refers to undefined network {net:?}"));
        }
    }
    for v in &svc.volumes {
        if v.kind == VolumeKind::Volume
            && let Some(src) = &v.source
            && !project.volumes.contains_key(src)
        {
            let mut p = at(&["volumes"]);
            p.push(src.clone());
            err(
                f,
                p,
                format!(
                    "refers to undefined volume {src:?}: declare it under the top-level volumes"
                ),
            );
        }
    }
    for (field, refs, defined) in [
        ("configs", &svc.configs, &project.configs),
        ("secrets", &svc.secrets, &project.secrets),
    ] {
        for r in refs {
            if let Some(t) = &r.target
                && field == "configs"
                && (t.split('/').any(|seg| seg == "..")
                    || t.split('/').all(|seg| seg.is_empty() || seg == "."))
            {
                let mut p = at(&[]);
                p.push(field.to_string());
                p.push(r.source.clone());
                p.push("target".into());
                err(
                    f,
                    p,
                    format!("target {t:?} must name a file and may not contain '..'"),
                );
            }
            if !defined.contains_key(&r.source) {
                let mut p = at(&[]);
                p.push(field.to_string());
                p.push(r.source.clone());
                err(
                    f,
                    p,
                    format!(
                        "refers to undefined {} {:?}",
                        &field[..field.len() - 1],
                        r.source
                    ),
                );
            }
        }
    }
    if let Some(deploy) = &svc.deploy {
        if matches!(
            deploy.mode,
            Some(DeployMode::Global | DeployMode::GlobalJob)
        ) && deploy.replicas.is_some()
        {
            err(
                f,
                at(&["deploy", "replicas"]),
                "cannot set replicas when deploy.mode is global".into(),
            );
        }
        for (key, cfg) in [
            ("update_config", &deploy.update_config),
            ("rollback_config", &deploy.rollback_config),
        ] {
            if let Some(r) = cfg.as_ref().and_then(|c| c.max_failure_ratio)
                && !(0.0..=1.0).contains(&r)
            {
                let mut p = at(&["deploy"]);
                p.push(key.into());
                p.push("max_failure_ratio".into());
                err(f, p, format!("must be between 0 and 1, got {r}"));
            }
        }
    }
    if let Some(sig) = &svc.stop_signal
        && !valid_signal(sig)
    {
        err(
            f,
            at(&["stop_signal"]),
            format!("unknown signal {sig:?} (use a name such as SIGTERM or SIGQUIT)"),
        );
    }
    for p in &svc.ports {
        if let Some(published_port) = &p.published
            && p.mode == "ingress"
        {
            let key = (published_port.clone(), p.protocol.clone());
            if let Some(other) = published.get(&key)
                && other != name
            {
                err(
                    f,
                    at(&["ports"]),
                    format!(
                        "published port {published_port}/{} is already used by service {other:?}",
                        p.protocol
                    ),
                );
            }
            published.insert(key, name.to_string());
        }
    }
    for (key, value) in &svc.environment {
        for target in template_services(value.as_deref().unwrap_or("")) {
            if !project.services.contains_key(&target) {
                let mut p = at(&["environment"]);
                p.push(key.clone());
                err(
                    f,
                    p,
                    format!("template refers to undefined service {target:?}"),
                );
            }
        }
    }
    check_x_skiff(f, name, svc, &x, driver);
    if let Some(seed) = &x.seed {
        check_seed(f, project, name, svc, seed);
    }
    check_compose_rules(f, project, name, svc);
}

/// `x-skiff.seed`: `into` names a named, non-external volume the service mounts; `from` is a
/// path or an `http://` URL (a missing file is a warning here, an error at `up`).
fn check_seed(
    f: &mut Findings,
    project: &Project,
    name: &str,
    svc: &Service,
    seed: &crate::model::Seed,
) {
    let at = |field: &str| -> Vec<String> {
        ["services", name, "x-skiff", "seed", field]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let mounted: Vec<&str> = svc
        .volumes
        .iter()
        .filter(|v| v.kind == VolumeKind::Volume)
        .filter_map(|v| v.source.as_deref())
        .collect();
    if !mounted.contains(&seed.into.as_str()) {
        let p = at("into");
        let p: Vec<&str> = p.iter().map(String::as_str).collect();
        let has = if mounted.is_empty() {
            "it mounts none".to_string()
        } else {
            format!("it mounts {}", mounted.join(", "))
        };
        f.error(
            &p,
            format!(
                "{:?} is not a named volume the service mounts ({has}); mount it, e.g. volumes: [{}:/data]",
                seed.into, seed.into
            ),
        );
    } else if project
        .volumes
        .get(&seed.into)
        .is_some_and(|v| v.external.is_some())
    {
        let p = at("into");
        let p: Vec<&str> = p.iter().map(String::as_str).collect();
        f.error(
            &p,
            format!(
                "volume {:?} is external: skiff does not own it, so it does not seed it",
                seed.into
            ),
        );
    }
    let from = seed.from.as_str();
    let problem = if from.is_empty() {
        Some("must name a snapshot: a path or an http:// URL".to_string())
    } else if from.starts_with("https://") {
        Some(format!(
            "{from:?}: https is not supported (skiff has no TLS client yet); use an http:// URL \
             or a path"
        ))
    } else if seed.is_url() && !from.starts_with("http://") {
        Some(format!(
            "{from:?}: only http:// URLs and paths are supported"
        ))
    } else {
        None
    };
    if let Some(message) = problem {
        let p = at("from");
        let p: Vec<&str> = p.iter().map(String::as_str).collect();
        f.error(&p, message);
    }
}

// === compose-go's rules after the schema (loader/validate.go, validation/, transform/) ===

/// A diagnostic at a node found by the walk, with its dotted path.
fn at_node(f: &mut Findings, pos: &Pos, path: String, message: impl Into<String>) {
    f.errors.push(Diagnostic::at(pos, path, message));
}

fn service_node<'a>(tree: &'a Node, name: &str) -> Option<&'a crate::node::Map> {
    tree.as_map()?
        .get("services")?
        .as_map()?
        .get(name)?
        .as_map()
}

/// Is `node` a true `external`: `true`, a truthy string, or the legacy `{name: …}` mapping?
fn is_external(node: Option<&Node>) -> bool {
    match node.map(|n| &n.value) {
        Some(Value::Map(_)) => true,
        Some(Value::Scalar(s)) => {
            matches!(
                s.text.to_ascii_lowercase().as_str(),
                "true" | "yes" | "on" | "y"
            )
        }
        _ => false,
    }
}

fn check_compose_rules(f: &mut Findings, project: &Project, name: &str, svc: &Service) {
    let Some(node) = service_node(f.tree, name) else {
        return;
    };
    let base = format!("services.{name}");
    if let Some(mode) = node.entry("network_mode") {
        if let Some(nets) = node.entry("networks") {
            at_node(
                f,
                &nets.key_pos,
                format!("{base}.networks"),
                "cannot be used together with network_mode (they are mutually exclusive)",
            );
        }
        if let Some(target) = mode.value.as_str().and_then(|m| m.strip_prefix("service:"))
            && !project.services.contains_key(target)
        {
            at_node(
                f,
                &mode.value.pos,
                format!("{base}.network_mode"),
                format!("refers to undefined service {target:?}"),
            );
        }
    }
    check_mount_targets(f, node, &base);
    check_consistency(f, node, &base, svc);
    let tmpfs: Vec<&Node> = match node.get("tmpfs").map(|n| (n, &n.value)) {
        Some((_, Value::Seq(items))) => items.iter().collect(),
        Some((n, Value::Scalar(_))) => vec![n],
        _ => Vec::new(),
    };
    for (i, item) in tmpfs.into_iter().enumerate() {
        let Some((_, opts)) = item.as_str().and_then(|t| t.split_once(':')) else {
            continue;
        };
        for size in opts.split(',').filter_map(|o| o.strip_prefix("size=")) {
            if let Err(e) = size.parse::<crate::units::Bytes>() {
                at_node(f, &item.pos, format!("{base}.tmpfs[{i}]"), e);
            }
        }
    }
    if let Some(build) = node.get("build").and_then(Node::as_map) {
        check_ssh(f, build, &format!("{base}.build"));
        check_extra_hosts(
            f,
            build.get("extra_hosts"),
            &format!("{base}.build.extra_hosts"),
        );
        check_byte_size(f, build.get("shm_size"), format!("{base}.build.shm_size"));
    }
    check_extra_hosts(f, node.get("extra_hosts"), &format!("{base}.extra_hosts"));
    check_byte_size(f, node.get("shm_size"), format!("{base}.shm_size"));
    check_placement(f, name);
    let devices = walk(
        f.tree,
        &[
            "services",
            name,
            "deploy",
            "resources",
            "reservations",
            "devices",
        ],
    )
    .and_then(|(n, _)| n.as_seq());
    for (i, d) in devices.unwrap_or_default().iter().enumerate() {
        let path = format!("{base}.deploy.resources.reservations.devices[{i}]");
        check_device_request(f, d, &path);
    }
    for (i, d) in node
        .get("gpus")
        .and_then(Node::as_seq)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        check_device_request(f, d, &format!("{base}.gpus[{i}]"));
    }
    for (key, _) in &svc.environment {
        if key.chars().any(char::is_whitespace) || key.is_empty() {
            let pos = key_pos(f.tree, &["services", name, "environment", key]);
            f.errors.push(Diagnostic::new(
                pos,
                format!("{base}.environment.{key}"),
                format!("variable name {key:?} must be non-empty and contain no whitespace"),
            ));
        }
    }
    let watches =
        walk(f.tree, &["services", name, "develop", "watch"]).and_then(|(n, _)| n.as_seq());
    for (i, w) in watches.unwrap_or_default().iter().enumerate() {
        let Some(m) = w.as_map() else { continue };
        let path = format!("{base}.develop.watch[{i}]");
        let action = m.get("action").and_then(Node::as_str).unwrap_or_default();
        if action.starts_with("sync") && !m.contains_key("target") {
            at_node(
                f,
                &w.pos,
                path.clone(),
                format!("missing required field \"target\" (action {action} copies files to it)"),
            );
        }
        if let Some(p) = m.get("path")
            && p.as_str().is_some_and(|p| p.trim().is_empty())
        {
            at_node(f, &p.pos, format!("{path}.path"), "must not be empty");
        }
    }
}

/// Settings given twice that must agree, and settings that exclude each other
/// (compose-go `loader/validate.go`: `checkConsistency`).
fn check_consistency(f: &mut Findings, node: &crate::node::Map, base: &str, svc: &Service) {
    let key = |k: &str| node.entry(k).map(|e| e.key_pos.clone());
    let deploy = svc.deploy.as_deref();
    let replicas = deploy.and_then(|d| d.replicas);
    if let (Some(scale), Some(r)) = (svc.scale, replicas)
        && scale != r
        && let Some(pos) = key("scale")
    {
        at_node(
            f,
            &pos,
            format!("{base}.scale"),
            format!("{scale} differs from deploy.replicas {r}: give one of them"),
        );
    }
    if svc.container_name.is_some()
        && replicas.or(svc.scale).unwrap_or(1) > 1
        && let Some(pos) = key("container_name")
    {
        at_node(
            f,
            &pos,
            format!("{base}.container_name"),
            "a container name must be unique: it cannot be set with more than one replica",
        );
    }
    if let Some(b) = &svc.build
        && b.dockerfile.is_some()
        && b.dockerfile_inline.is_some()
    {
        let pos = node
            .get("build")
            .and_then(Node::as_map)
            .and_then(|m| m.entry("dockerfile_inline"))
            .map(|e| e.key_pos.clone());
        if let Some(pos) = pos {
            at_node(
                f,
                &pos,
                format!("{base}.build.dockerfile_inline"),
                "cannot be used together with dockerfile (they are mutually exclusive)",
            );
        }
    }
    let resources = deploy.and_then(|d| d.resources.as_ref());
    let limits = resources.and_then(|r| r.limits.as_ref());
    let reservations = resources.and_then(|r| r.reservations.as_ref());
    let pairs: [(&str, Option<String>, Option<String>, &str); 4] = [
        (
            "cpus",
            svc.cpus.map(|c| c.0.to_string()),
            limits.and_then(|l| l.cpus).map(|c| c.0.to_string()),
            "deploy.resources.limits.cpus",
        ),
        (
            "mem_limit",
            svc.mem_limit.map(|b| b.0.to_string()),
            limits.and_then(|l| l.memory).map(|b| b.0.to_string()),
            "deploy.resources.limits.memory",
        ),
        (
            "mem_reservation",
            svc.mem_reservation.map(|b| b.0.to_string()),
            reservations.and_then(|r| r.memory).map(|b| b.0.to_string()),
            "deploy.resources.reservations.memory",
        ),
        (
            "pids_limit",
            svc.pids_limit.map(|p| p.to_string()),
            limits.and_then(|l| l.pids).map(|p| p.to_string()),
            "deploy.resources.limits.pids",
        ),
    ];
    for (field, a, b, other) in pairs {
        if let (Some(a), Some(b)) = (a, b)
            && a != b
            && let Some(pos) = key(field)
        {
            at_node(
                f,
                &pos,
                format!("{base}.{field}"),
                format!("{a} differs from {other} {b}: give one of them"),
            );
        }
    }
    let ports = node.get("ports").and_then(Node::as_seq).unwrap_or_default();
    for (i, p) in ports.iter().enumerate() {
        if let Some(ip) = p.as_map().and_then(|m| m.get("host_ip"))
            && let Some(text) = ip.as_str()
            && text.parse::<std::net::IpAddr>().is_err()
        {
            at_node(
                f,
                &ip.pos,
                format!("{base}.ports[{i}].host_ip"),
                format!("{text:?} is not an IP address"),
            );
        }
    }
}

/// Two mounts (volumes, tmpfs) on one target path of one service.
fn check_mount_targets(f: &mut Findings, node: &crate::node::Map, base: &str) {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut mounts: Vec<(String, &Node, String)> = Vec::new();
    for (field, entries) in [
        ("tmpfs", node.get("tmpfs")),
        ("volumes", node.get("volumes")),
    ] {
        let items: Vec<&Node> = match entries.map(|n| &n.value) {
            Some(Value::Seq(items)) => items.iter().collect(),
            Some(Value::Scalar(_)) => entries.into_iter().collect(),
            _ => continue,
        };
        for (i, item) in items.into_iter().enumerate() {
            let target = match (&item.value, field) {
                (Value::Scalar(s), "tmpfs") => s.text.split(':').next().map(str::to_string),
                (Value::Scalar(s), _) => crate::model::parse_volume(&s.text).ok().map(|v| v.target),
                (Value::Map(m), _) => m.get("target").and_then(Node::as_str).map(str::to_string),
                _ => None,
            };
            if let Some(t) = target {
                let t = t.trim_end_matches('/').to_string();
                let t = if t.is_empty() { "/".to_string() } else { t };
                mounts.push((t, item, format!("{base}.{field}[{i}]")));
            }
        }
    }
    for (target, item, path) in mounts {
        if let Some(first) = seen.get(&target) {
            at_node(
                f,
                &item.pos,
                path,
                format!("target {target} is already mounted by {first}"),
            );
        } else {
            seen.insert(target, path);
        }
    }
}

/// `build.ssh` in list form: `default` or `ID=PATH` strings (compose-go `transform/ssh.go`).
fn check_ssh(f: &mut Findings, build: &crate::node::Map, base: &str) {
    let Some(items) = build.get("ssh").and_then(Node::as_seq) else {
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("{base}.ssh[{i}]");
        match item.as_str() {
            Some(s)
                if s == "default" || s.split_once('=').is_some_and(|(id, _)| !id.is_empty()) => {}
            Some(s) => at_node(
                f,
                &item.pos,
                path,
                format!("expected default or ID=PATH, got {s:?}"),
            ),
            None => at_node(
                f,
                &item.pos,
                path,
                format!("expected default or ID=PATH, got {}", item.describe()),
            ),
        }
    }
}

/// `extra_hosts`: `HOST:IP` or `HOST=IP` items, or a `HOST: IP` mapping; the IP may be in
/// brackets, and `host-gateway` stands for the host's address.
fn check_extra_hosts(f: &mut Findings, node: Option<&Node>, base: &str) {
    let Some(node) = node else { return };
    let check_ip = |f: &mut Findings, ip: &str, pos: &Pos, path: String| {
        let bare = ip
            .strip_prefix('[')
            .and_then(|i| i.strip_suffix(']'))
            .unwrap_or(ip);
        if bare != "host-gateway" && bare.parse::<std::net::IpAddr>().is_err() {
            at_node(
                f,
                pos,
                path,
                format!("{ip:?} is not an IP address (nor host-gateway)"),
            );
        }
    };
    match &node.value {
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("{base}[{i}]");
                let Some(s) = item.as_str() else { continue };
                let split = s.split_once('=').or_else(|| s.split_once(':'));
                match split {
                    Some((host, ips)) if !host.is_empty() && !host.contains([':', '=']) => {
                        for ip in ips.split(',') {
                            check_ip(f, ip, &item.pos, path.clone());
                        }
                    }
                    _ => at_node(
                        f,
                        &item.pos,
                        path,
                        format!("expected HOST:IP or HOST=IP, got {s:?}"),
                    ),
                }
            }
        }
        Value::Map(m) => {
            for (host, e) in m.iter() {
                let path = format!("{base}.{host}");
                let ips: Vec<&Node> = match &e.value.value {
                    Value::Seq(items) => items.iter().collect(),
                    _ => vec![&e.value],
                };
                for ipn in ips {
                    if let Some(ip) = ipn.as_str() {
                        check_ip(f, ip, &ipn.pos, path.clone());
                    }
                }
            }
        }
        _ => {}
    }
}

/// `deploy.placement`: constraints skiff can place by (`node.role` is accepted and ignored:
/// skiff nodes have no swarm role), and spread preferences over node labels.
fn check_placement(f: &mut Findings, name: &str) {
    let path = ["services", name, "deploy", "placement"];
    let Some((placement, _)) = walk(f.tree, &path) else {
        return;
    };
    let base = format!("services.{name}.deploy.placement");
    let items = |key: &str| match placement.as_map().and_then(|m| m.get(key)) {
        Some(Node {
            value: Value::Seq(items),
            ..
        }) => items.iter().collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    for (i, item) in items("constraints").into_iter().enumerate() {
        if let Some(text) = item.as_str()
            && !is_role_constraint(text)
            && let Err(e) = skiff_model::Constraint::parse(text)
        {
            at_node(
                f,
                &item.pos,
                format!("{base}.constraints[{i}]"),
                e.to_string(),
            );
        }
    }
    for (i, item) in items("preferences").into_iter().enumerate() {
        let spread = item.as_map().and_then(|m| m.get("spread"));
        if let Some(n) = spread
            && let Some(text) = n.as_str()
            && text.strip_prefix("node.labels.").is_none_or(str::is_empty)
        {
            at_node(
                f,
                &n.pos,
                format!("{base}.preferences[{i}].spread"),
                format!("skiff spreads over node.labels.KEY, not {text:?}"),
            );
        }
    }
}

/// `node.role == manager` and the like: swarm roles, which skiff nodes do not have.
pub(crate) fn is_role_constraint(text: &str) -> bool {
    text.trim_start().starts_with("node.role")
}

fn check_byte_size(f: &mut Findings, node: Option<&Node>, path: String) {
    if let Some(n) = node
        && let Some(text) = n.as_str()
        && let Err(e) = text.parse::<crate::units::Bytes>()
    {
        at_node(f, &n.pos, path, e);
    }
}

/// A device request: `count` and `device_ids` are exclusive, `count` is a number or `all`.
fn check_device_request(f: &mut Findings, node: &Node, path: &str) {
    let Some(m) = node.as_map() else { return };
    if let (Some(_), Some(ids)) = (m.get("count"), m.entry("device_ids")) {
        at_node(
            f,
            &ids.key_pos,
            format!("{path}.device_ids"),
            "cannot be used together with count (give one of them)",
        );
    }
    if let Some(c) = m.get("count")
        && let Some(t) = c.as_str()
        && t != "all"
        && t.parse::<u64>().is_err()
    {
        at_node(
            f,
            &c.pos,
            format!("{path}.count"),
            format!("expected a number of devices or \"all\", got {t:?}"),
        );
    }
}

/// Top-level networks, volumes, secrets and configs: `external` and the fields it excludes,
/// the deprecated `external.name` beside `name`, and the source of secrets and configs.
fn check_resources(f: &mut Findings) {
    let Some(top) = f.tree.as_map() else { return };
    let mut found: Vec<(Pos, String, String)> = Vec::new();
    for kind in ["networks", "volumes", "secrets", "configs"] {
        let Some(items) = top.get(kind).and_then(Node::as_map) else {
            continue;
        };
        for (name, e) in items.iter() {
            let Some(m) = e.value.as_map() else { continue };
            let base = format!("{kind}.{name}");
            let external = m.get("external");
            if let (Some(_), Some(ext_name)) = (
                m.get("name"),
                external
                    .and_then(Node::as_map)
                    .and_then(|x| x.entry("name")),
            ) {
                found.push((
                    ext_name.key_pos.clone(),
                    format!("{base}.external.name"),
                    "conflicts with name: give only name (external.name is deprecated)".into(),
                ));
            }
            if kind == "volumes" && is_external(external) {
                for (k, ke) in m.iter() {
                    if !matches!(k.as_str(), "name" | "external") && !k.starts_with("x-") {
                        found.push((
                            ke.key_pos.clone(),
                            format!("{base}.{k}"),
                            "conflicts with external: an external volume takes only name".into(),
                        ));
                    }
                }
            }
            if kind == "secrets" || kind == "configs" {
                let sources: &[&str] = if kind == "secrets" {
                    &["file", "environment"]
                } else {
                    &["file", "environment", "content"]
                };
                let given: Vec<&str> = sources
                    .iter()
                    .copied()
                    .filter(|s| m.contains_key(s))
                    .collect();
                let what = &kind[..kind.len() - 1];
                if given.len() > 1 {
                    found.push((
                        m.entry(given[1])
                            .map_or(e.value.pos.clone(), |x| x.key_pos.clone()),
                        format!("{base}.{}", given[1]),
                        format!("{} are mutually exclusive", given.join(" and ")),
                    ));
                } else if given.is_empty() && !is_external(external) && !m.contains_key("driver") {
                    found.push((
                        e.key_pos.clone(),
                        base.clone(),
                        format!(
                            "{what} {name:?} has no source: set {} (or external: true)",
                            sources.join(" or ")
                        ),
                    ));
                }
            }
        }
    }
    for (pos, path, message) in found {
        at_node(f, &pos, path, message);
    }
}

fn at_dep(name: &str, dep: &str) -> Vec<String> {
    vec![
        "services".into(),
        name.into(),
        "depends_on".into(),
        dep.into(),
    ]
}

fn check_x_skiff(f: &mut Findings, name: &str, svc: &Service, x: &XSkiffService, driver: Driver) {
    let path = |rest: &[&str]| -> Vec<String> {
        let mut p = vec![
            "services".to_string(),
            name.to_string(),
            "x-skiff".to_string(),
        ];
        p.extend(rest.iter().map(|s| s.to_string()));
        p
    };
    let mut err = |p: Vec<String>, msg: String| {
        let p: Vec<&str> = p.iter().map(String::as_str).collect();
        f.error(&p, msg);
    };
    if driver == Driver::Docker {
        for (field, set) in [
            ("executable", x.executable.is_some()),
            ("artifact", x.artifact.is_some()),
        ] {
            if set {
                err(
                    path(&[field]),
                    "applies to the process driver only; set x-skiff.driver: process".to_string(),
                );
            }
        }
    }
    if driver == Driver::Process
        && x.executable.is_none()
        && svc.command.as_ref().is_none_or(|c| c.0.is_empty())
        && svc.entrypoint.as_ref().is_none_or(|c| c.0.is_empty())
    {
        err(
            path(&[]),
            format!(
                "service {name:?} uses the process driver but names no program: set command \
                 or x-skiff.executable"
            ),
        );
    }
    if let Some(a) = &x.artifact {
        match (&a.url, &a.path) {
            (Some(_), Some(_)) | (None, None) => err(
                path(&["artifact"]),
                "give exactly one of url or path".into(),
            ),
            (Some(u), None) if !(u.starts_with("http://") || u.starts_with("https://")) => err(
                path(&["artifact", "url"]),
                format!("must be an http:// or https:// URL, got {u:?}"),
            ),
            _ => {}
        }
        if a.sha256.len() != 64 || !a.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            err(
                path(&["artifact", "sha256"]),
                "must be 64 hexadecimal digits".into(),
            );
        }
    }
    if let Some(r) = &x.reload
        && !valid_signal_name(&r.signal)
    {
        err(
            path(&["reload", "signal"]),
            format!(
                "unknown signal {:?} (use a name such as SIGHUP or USR1, as skiff kill takes it)",
                r.signal
            ),
        );
    }
    for (i, r) in x.routes.iter().enumerate() {
        let idx = i.to_string();
        if let Some(p) = &r.path
            && !p.starts_with('/')
        {
            err(
                path(&["routes", &idx, "path"]),
                format!("must start with /, got {p:?}"),
            );
        }
        if let Some(h) = &r.host
            && !valid_host(h)
        {
            err(
                path(&["routes", &idx, "host"]),
                format!("{h:?} is not a host name (wildcards only as a leading *.)"),
            );
        }
        if let Some(port) = &r.port
            && !known_port(svc, port)
        {
            err(
                path(&["routes", &idx, "port"]),
                format!("no port named or numbered {port:?} in ports or expose"),
            );
        }
    }
    for (field, check) in [("readiness", &x.readiness), ("liveness", &x.liveness)] {
        let Some(c) = check else { continue };
        let kinds = [c.http.is_some(), c.tcp.is_some(), !c.test.is_empty()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            err(
                path(&[field]),
                "give exactly one of http, tcp or test".into(),
            );
        }
        if c.test.first().map(String::as_str) == Some("NONE") {
            err(
                path(&[field, "test"]),
                "NONE disables compose's healthcheck; leave the check out instead".into(),
            );
        }
        let port = c
            .http
            .as_ref()
            .map(|h| (&h.port, "http"))
            .or(c.tcp.as_ref().map(|t| (&t.port, "tcp")));
        if let Some((port, kind)) = port {
            match port {
                Some(p) if !known_port(svc, p) => err(
                    path(&[field, kind, "port"]),
                    format!("no port named or numbered {p:?} in ports or expose"),
                ),
                None if svc.ports.is_empty() && svc.expose.is_empty() => err(
                    path(&[field, kind]),
                    "the service has no ports or expose to check; name one with port".into(),
                ),
                _ => {}
            }
        }
        if let Some(h) = &c.http {
            if let Some(p) = &h.path
                && !p.starts_with('/')
            {
                err(
                    path(&[field, "http", "path"]),
                    format!("must start with /, got {p:?}"),
                );
            }
            if let Some(code) = h.status
                && !(100..=599).contains(&code)
            {
                err(
                    path(&[field, "http", "status"]),
                    format!("{code} is not an HTTP status (100-599)"),
                );
            }
        }
        if c.retries == Some(0) {
            err(path(&[field, "retries"]), "must be at least 1".into());
        }
    }
    if let Some(rel) = &x.release {
        let strategy = rel.strategy.unwrap_or(Strategy::Rolling);
        if strategy == Strategy::Canary {
            if rel.steps.is_empty() {
                err(
                    path(&["release", "steps"]),
                    "a canary release needs steps (weights in percent, e.g. [{weight: 10, pause: 1m}])"
                        .into(),
                );
            }
            let mut prev = 0;
            for (i, s) in rel.steps.iter().enumerate() {
                if s.weight == 0 || s.weight > 100 || s.weight <= prev {
                    err(
                        path(&["release", "steps", &i.to_string(), "weight"]),
                        format!(
                            "weights must rise strictly within 1-100; got {} after {prev}",
                            s.weight
                        ),
                    );
                }
                prev = s.weight;
            }
        } else if !rel.steps.is_empty() {
            err(
                path(&["release", "steps"]),
                "steps apply to strategy: canary only".into(),
            );
        }
        if let Some(a) = &rel.analysis {
            if strategy == Strategy::Rolling {
                err(
                    path(&["release", "analysis"]),
                    "applies to strategy: canary or blue-green only".into(),
                );
            }
            if let Some(p) = a.max_error_rate
                && !(0.0..=100.0).contains(&p.0)
            {
                err(
                    path(&["release", "analysis", "max_error_rate"]),
                    format!("must be within 0%-100%; got {}%", p.0),
                );
            }
            for (field, d) in [("interval", a.interval), ("max_wait", a.max_wait)] {
                if d.is_some_and(|d| d.0.is_zero()) {
                    err(
                        path(&["release", "analysis", field]),
                        "must be longer than 0s".into(),
                    );
                }
            }
        }
        if strategy != Strategy::BlueGreen {
            for (field, set) in [
                ("switch", rel.switch.is_some()),
                ("keep_previous", rel.keep_previous.is_some()),
            ] {
                if set {
                    err(
                        path(&["release", field]),
                        "applies to strategy: blue-green only".into(),
                    );
                }
            }
        }
    }
}

fn valid_host(h: &str) -> bool {
    let h = h.strip_prefix("*.").unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    valid_signal_name(s)
}

/// A signal name, with or without `SIG`, in any case: what `skiff kill` takes.
fn valid_signal_name(s: &str) -> bool {
    const NAMES: &[&str] = &[
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    NAMES.contains(&bare)
}

/// Service names used as `service("name")` inside `{{ … }}` templates.
pub fn template_services(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        let expr = &rest[start + 2..start + end];
        let mut e = expr;
        while let Some(i) = e.find("service(") {
            let after = e[i + 8..].trim_start();
            let quote = after.chars().next();
            if let Some(q @ ('"' | '\'')) = quote
                && let Some(close) = after[1..].find(q)
            {
                out.push(after[1..1 + close].to_string());
            }
            e = &e[i + 8..];
        }
        rest = &rest[start + end + 2..];
    }
    out
}

fn check_graph(f: &mut Findings, project: &Project) {
    let deps: BTreeMap<String, BTreeSet<String>> = project
        .services
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                s.depends_on.keys().filter(|d| *d != n).cloned().collect(),
            )
        })
        .collect();
    if let Err(cycle) = order::batches(&deps) {
        let first = cycle[0].clone();
        f.error(
            &["services", &first, "depends_on", &cycle[1]],
            format!("dependency cycle {}", cycle.join(" -> ")),
        );
    }
}

fn warn_service(
    tree: &Node,
    loader: &dyn Loader,
    name: &str,
    svc: &Service,
    warnings: &mut Vec<Diagnostic>,
) {
    let Some(service_node) = tree
        .as_map()
        .and_then(|m| m.get("services"))
        .and_then(Node::as_map)
        .and_then(|m| m.get(name))
        .and_then(Node::as_map)
    else {
        return;
    };
    for (key, entry) in service_node.iter() {
        if NOT_ACTED_ON.contains(&key.as_str()) {
            warnings.push(Diagnostic::at(
                &entry.key_pos,
                format!("services.{name}.{key}"),
                "accepted but not acted on by skiff yet",
            ));
        }
    }
    let x = svc.x_skiff.as_deref();
    let process = x.and_then(|x| x.driver) == Some(Driver::Process);
    if let Some(seed) = x.and_then(|x| x.seed.as_ref()) {
        let pos = key_pos(tree, &["services", name, "x-skiff", "seed", "from"]);
        let path = format!("services.{name}.x-skiff.seed.from");
        if !process {
            warnings.push(Diagnostic::new(
                pos.clone(),
                path.clone(),
                "not acted on by the Docker driver yet: only process-driver volumes are seeded"
                    .to_string(),
            ));
        }
        if !seed.is_url() && !seed.from.is_empty() && !loader.exists(Path::new(&seed.from)) {
            warnings.push(Diagnostic::new(
                pos,
                path,
                format!("{} does not exist on this host (an error at up)", seed.from),
            ));
        }
    }
    for (i, v) in svc.volumes.iter().enumerate() {
        if process {
            // A process sees the host's file system: only named volumes mean something to it
            // (a directory per environment, its path in SKIFF_VOLUME_<NAME>).
            let why = match v.kind {
                VolumeKind::Volume if v.source.is_none() => {
                    Some("anonymous volumes are not acted on by the process driver")
                }
                VolumeKind::Volume => None,
                VolumeKind::Bind => Some(
                    "bind mounts are not acted on by the process driver (a process sees the \
                     host's paths as they are)",
                ),
                _ => Some("not acted on by the process driver"),
            };
            if let Some(why) = why {
                let idx = i.to_string();
                warnings.push(Diagnostic::new(
                    key_pos(tree, &["services", name, "volumes", &idx]),
                    format!("services.{name}.volumes.{i}"),
                    why.to_string(),
                ));
            }
        }
        if v.kind == VolumeKind::Bind
            && let Some(src) = &v.source
            && !loader.exists(Path::new(src))
        {
            warnings.push(Diagnostic::new(
                key_pos(tree, &["services", name, "volumes"]),
                format!("services.{name}.volumes"),
                format!("bind source {src} does not exist on this host (an error at up)"),
            ));
        }
    }
}

/// Is `port` a port `name` or target number of the service's `ports`, or in its `expose`?
fn known_port(svc: &Service, port: &str) -> bool {
    svc.ports
        .iter()
        .any(|p| p.name.as_deref() == Some(port) || p.target.to_string() == port)
        || svc.expose.iter().any(|e| e.0 == port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_service_names_are_found_in_either_quote() {
        assert_eq!(
            template_services(r#"mysql://{{ service("db").address }}/{{service('cache').port}}"#),
            vec!["db", "cache"]
        );
        assert!(template_services("plain ${X} {{ unclosed").is_empty());
    }

    #[test]
    fn signals_by_name_prefix_or_number() {
        for ok in ["SIGTERM", "TERM", "sigquit", "9"] {
            assert!(valid_signal(ok), "{ok}");
        }
        for bad in ["SIGNOPE", "0", "99", ""] {
            assert!(!valid_signal(bad), "{bad}");
        }
    }

    #[test]
    fn hosts_allow_a_leading_wildcard_only() {
        assert!(valid_host("api.example.test"));
        assert!(valid_host("*.example.test"));
        assert!(!valid_host("a.*.test"));
        assert!(!valid_host("-bad.test"));
        assert!(!valid_host("under_score.test"));
    }
}
