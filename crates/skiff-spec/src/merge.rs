//! Merging compose documents (`-f a.yaml -f b.yaml`, `extends`), with compose's rules.
//!
//! By default mappings merge key by key, sequences append and scalars are replaced. Some paths
//! have their own rule, as in compose-go:
//! - `command`, `entrypoint`, `healthcheck.test`: replaced whole;
//! - `environment`, `labels`, `annotations`, `sysctls`, `tmpfs`, `env_file`, `dns*`,
//!   `build.args`, `build.labels`, `deploy.labels`, …: both sides become `KEY=VALUE` sequences,
//!   appended, then de-duplicated by key with the later entry winning;
//! - `depends_on`, `networks`, `models`: list forms become mappings, then merge;
//! - `build`: a string is `{context: …}`, then merge;
//! - `logging`: options merge only when both sides use the same driver;
//! - `ports`, `volumes`, `secrets`, `configs`, `expose`, …: appended, then de-duplicated by
//!   their identity (port binding, mount target, …), the later entry winning in place.
//!
//! `!reset` on an overriding value removes what came before; `!override` replaces instead of
//! merging. Values keep the position of the file they came from.

use std::collections::HashMap;

use crate::diag::{Pos, SpecError};
use crate::model::{parse_port, parse_volume};
use crate::node::{Map, Node, Scalar, Tag, Value};

/// Merges `overlay` (a later `-f` file) over `base`; both are whole documents.
pub fn merge_files(base: Node, overlay: Node) -> Result<Node, SpecError> {
    let merged = merge(base, overlay, &[])?;
    let mut merged = strip_tags(merged);
    enforce_unicity(&mut merged, &mut Vec::new());
    Ok(merged)
}

/// Merges a service definition over the service it `extends`.
pub fn merge_service(base: Node, service: Node) -> Result<Node, SpecError> {
    let merged = merge(base, service, &["services", "x"])?;
    let mut merged = strip_tags(merged);
    let mut path = vec!["services".to_string(), "x".to_string()];
    enforce_unicity(&mut merged, &mut path);
    Ok(merged)
}

/// Applies the tags of a document that is not merged over anything: `!reset` values vanish,
/// `!override` values stay.
pub fn strip_tags(mut node: Node) -> Node {
    node.tag = None;
    match &mut node.value {
        Value::Map(m) => {
            m.retain(|_, e| e.value.tag != Some(Tag::Reset));
            for (_, e) in m.iter_mut() {
                let v = std::mem::replace(&mut e.value, Node::new(e.key_pos.clone(), Value::Null));
                e.value = strip_tags(v);
            }
        }
        Value::Seq(items) => {
            items.retain(|i| i.tag != Some(Tag::Reset));
            for i in items.iter_mut() {
                let v = std::mem::replace(i, Node::new(i.pos.clone(), Value::Null));
                *i = strip_tags(v);
            }
        }
        _ => {}
    }
    node
}

// === path patterns ===

/// Does `path` match `pattern` (segments, `*` matches one segment)?
fn matches(path: &[&str], pattern: &str) -> bool {
    let pat: Vec<&str> = pattern.split('.').collect();
    pat.len() == path.len() && pat.iter().zip(path).all(|(p, s)| *p == "*" || p == s)
}

#[derive(Clone, Copy)]
enum Rule {
    Replace,
    ToSequence,
    ToMapping { depends_on: bool },
    Build,
    Logging,
    ExtraHosts,
}

fn rule(path: &[&str]) -> Option<Rule> {
    const TO_SEQUENCE: &[&str] = &[
        "networks.*.labels",
        "volumes.*.labels",
        "services.*.annotations",
        "services.*.build.args",
        "services.*.build.additional_contexts",
        "services.*.build.labels",
        "services.*.deploy.labels",
        "services.*.dns",
        "services.*.dns_opt",
        "services.*.dns_search",
        "services.*.env_file",
        "services.*.label_file",
        "services.*.environment",
        "services.*.labels",
        "services.*.volumes.*.volume.labels",
        "services.*.sysctls",
        "services.*.tmpfs",
    ];
    const REPLACE: &[&str] = &[
        "services.*.command",
        "services.*.entrypoint",
        "services.*.healthcheck.test",
        "services.*.ulimits.*",
    ];
    if REPLACE.iter().any(|p| matches(path, p)) {
        return Some(Rule::Replace);
    }
    if TO_SEQUENCE.iter().any(|p| matches(path, p)) {
        return Some(Rule::ToSequence);
    }
    if matches(path, "services.*.depends_on") {
        return Some(Rule::ToMapping { depends_on: true });
    }
    if matches(path, "services.*.networks") || matches(path, "services.*.models") {
        return Some(Rule::ToMapping { depends_on: false });
    }
    if matches(path, "services.*.build") {
        return Some(Rule::Build);
    }
    if matches(path, "services.*.logging") {
        return Some(Rule::Logging);
    }
    if matches(path, "services.*.extra_hosts") || matches(path, "services.*.build.extra_hosts") {
        return Some(Rule::ExtraHosts);
    }
    None
}

fn dotted(path: &[&str]) -> String {
    path.join(".")
}

// === merge ===

fn merge(base: Node, overlay: Node, path: &[&str]) -> Result<Node, SpecError> {
    match overlay.tag {
        Some(Tag::Reset) => return Ok(Node::new(overlay.pos, Value::Null).tagged(Tag::Reset)),
        Some(Tag::Override) => return Ok(overlay),
        None => {}
    }
    if let Some(r) = rule(path) {
        return apply_rule(r, base, overlay, path);
    }
    if overlay.is_null() {
        return Ok(base);
    }
    let base_kind = match &base.value {
        Value::Map(_) => "mapping",
        Value::Seq(_) => "sequence",
        _ => "",
    };
    match (base.value, overlay.value) {
        (Value::Map(b), Value::Map(o)) => {
            Ok(Node::new(base.pos, Value::Map(merge_maps(b, o, path)?)))
        }
        (Value::Seq(mut b), Value::Seq(o)) => {
            b.extend(o);
            Ok(Node::new(base.pos, Value::Seq(b)))
        }
        (Value::Map(_) | Value::Seq(_), other) => {
            let got = Node::new(overlay.pos.clone(), other).describe();
            Err(SpecError::at(
                &overlay.pos,
                dotted(path),
                format!("cannot override a {base_kind} with {got}"),
            ))
        }
        (_, o) => Ok(Node::new(overlay.pos, o)),
    }
}

fn merge_maps(mut base: Map, overlay: Map, path: &[&str]) -> Result<Map, SpecError> {
    for (key, entry) in overlay.into_entries() {
        let mut sub: Vec<&str> = path.to_vec();
        sub.push(&key);
        match base.get_mut(&key) {
            Some(slot) => {
                let old = std::mem::replace(slot, Node::new(entry.key_pos.clone(), Value::Null));
                *slot = merge(old, entry.value, &sub)?;
            }
            None => {
                let value = if entry.value.tag == Some(Tag::Override) {
                    Node {
                        tag: None,
                        ..entry.value
                    }
                } else {
                    entry.value
                };
                base.insert(key, entry.key_pos, value);
            }
        }
    }
    Ok(base)
}

fn apply_rule(rule: Rule, base: Node, overlay: Node, path: &[&str]) -> Result<Node, SpecError> {
    if overlay.is_null() && !matches!(rule, Rule::Replace) {
        return Ok(base);
    }
    match rule {
        Rule::Replace => Ok(overlay),
        Rule::ToSequence | Rule::ExtraHosts => {
            let pos = base.pos.clone();
            let mut items = to_sequence(base);
            let extra = to_sequence(overlay);
            if matches!(rule, Rule::ExtraHosts) {
                let fresh: Vec<Node> = extra
                    .into_iter()
                    .filter(|n| !items.iter().any(|i| i.as_str() == n.as_str()))
                    .collect();
                items.extend(fresh);
            } else {
                items.extend(extra);
            }
            Ok(Node::new(pos, Value::Seq(items)))
        }
        Rule::ToMapping { depends_on } => {
            let pos = base.pos.clone();
            let b = to_mapping(base, depends_on);
            let o = to_mapping(overlay, depends_on);
            Ok(Node::new(pos, Value::Map(merge_maps(b, o, path)?)))
        }
        Rule::Build => {
            let pos = base.pos.clone();
            let b = build_map(base);
            let o = build_map(overlay);
            Ok(Node::new(pos, Value::Map(merge_maps(b, o, path)?)))
        }
        Rule::Logging => {
            let driver = |n: &Node| {
                n.as_map()
                    .and_then(|m| m.get("driver"))
                    .and_then(|d| d.as_str().map(str::to_string))
            };
            let (bd, od) = (driver(&base), driver(&overlay));
            match (base.value, overlay.value) {
                (Value::Map(b), Value::Map(o)) if bd.is_none() || od.is_none() || bd == od => {
                    Ok(Node::new(base.pos, Value::Map(merge_maps(b, o, path)?)))
                }
                (_, o) => Ok(Node::new(overlay.pos, o)),
            }
        }
    }
}

/// `{A: 1, B: null}` → `["A=1", "B"]` (sorted, as compose does); a sequence stays; a scalar
/// becomes a one-item sequence.
fn to_sequence(node: Node) -> Vec<Node> {
    match node.value {
        Value::Seq(items) => items,
        Value::Map(m) => {
            let mut out: Vec<Node> = Vec::new();
            for (k, e) in m.into_entries() {
                let pos = e.value.pos.clone();
                match e.value.value {
                    Value::Null => out.push(Node::string(pos, k)),
                    Value::Scalar(s) => out.push(Node::string(pos, format!("{k}={}", s.text))),
                    Value::Seq(vs) => {
                        for v in vs {
                            let text = v.as_str().unwrap_or_default().to_string();
                            out.push(Node::string(v.pos, format!("{k}={text}")));
                        }
                    }
                    Value::Map(_) => out.push(Node::string(pos, k)),
                }
            }
            out.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            out
        }
        Value::Null => Vec::new(),
        Value::Scalar(_) => vec![node],
    }
}

/// `[a, b]` → `{a: …, b: …}`: null values, or for `depends_on` the list form's defaults.
fn to_mapping(node: Node, depends_on: bool) -> Map {
    match node.value {
        Value::Map(m) => m,
        Value::Seq(items) => {
            let mut m = Map::new();
            for item in items {
                let Some(name) = item.as_str().map(str::to_string) else {
                    continue;
                };
                let value = if depends_on {
                    let mut d = Map::new();
                    d.insert(
                        "condition",
                        item.pos.clone(),
                        Node::string(item.pos.clone(), "service_started"),
                    );
                    d.insert(
                        "required",
                        item.pos.clone(),
                        plain(item.pos.clone(), "true"),
                    );
                    Node::map(item.pos.clone(), d)
                } else {
                    Node::new(item.pos.clone(), Value::Null)
                };
                m.insert(name, item.pos, value);
            }
            m
        }
        _ => Map::new(),
    }
}

fn build_map(node: Node) -> Map {
    match node.value {
        Value::Map(m) => m,
        Value::Scalar(s) => {
            let mut m = Map::new();
            m.insert(
                "context",
                node.pos.clone(),
                Node::new(node.pos, Value::Scalar(s)),
            );
            m
        }
        _ => Map::new(),
    }
}

fn plain(pos: Pos, text: &str) -> Node {
    Node::new(
        pos,
        Value::Scalar(Scalar {
            text: text.into(),
            plain: true,
        }),
    )
}

// === unicity ===

/// How entries of a sequence at some path are identified; `None` means no rule there.
fn identity(path: &[String], item: &Node) -> Option<Option<String>> {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let key_value = [
        "networks.*.labels",
        "services.*.annotations",
        "services.*.build.args",
        "services.*.build.additional_contexts",
        "services.*.build.tags",
        "services.*.build.labels",
        "services.*.cap_add",
        "services.*.cap_drop",
        "services.*.deploy.labels",
        "services.*.dns",
        "services.*.dns_opt",
        "services.*.dns_search",
        "services.*.environment",
        "services.*.labels",
        "services.*.links",
        "services.*.networks.*.aliases",
        "services.*.profiles",
        "services.*.sysctls",
        "services.*.tmpfs",
    ];
    if key_value.iter().any(|k| matches(&p, k)) {
        return Some(
            item.as_str()
                .map(|s| s.split_once('=').map_or(s, |(k, _)| k).to_string()),
        );
    }
    let field = |n: &Node, k: &str| {
        n.as_map()
            .and_then(|m| m.get(k))
            .and_then(|v| v.as_str().map(str::to_string))
    };
    if matches(&p, "services.*.ports") {
        return Some(match &item.value {
            Value::Map(_) => Some(format!(
                "{}:{}:{}/{}",
                field(item, "host_ip").unwrap_or_else(|| "0.0.0.0".into()),
                field(item, "published").unwrap_or_default(),
                field(item, "target").unwrap_or_default(),
                field(item, "protocol").unwrap_or_else(|| "tcp".into()),
            )),
            _ => item.as_str().map(|s| match parse_port(s).ok().as_deref() {
                Some([one]) => format!(
                    "{}:{}:{}/{}",
                    one.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                    one.published.clone().unwrap_or_default(),
                    one.target,
                    one.protocol
                ),
                _ => s.to_string(),
            }),
        });
    }
    if matches(&p, "services.*.volumes") {
        return Some(match &item.value {
            Value::Map(_) => field(item, "target"),
            _ => item
                .as_str()
                .and_then(|s| parse_volume(s).ok())
                .map(|v| v.target),
        });
    }
    for (pattern, default_dir) in [
        ("services.*.secrets", "/run/secrets"),
        ("services.*.configs", ""),
    ] {
        if matches(&p, pattern) {
            return Some(match &item.value {
                Value::Map(_) => field(item, "target")
                    .or_else(|| field(item, "source").map(|s| format!("{default_dir}/{s}"))),
                _ => item.as_str().map(|s| format!("{default_dir}/{s}")),
            });
        }
    }
    if matches(&p, "services.*.expose") {
        return Some(item.as_str().map(str::to_string));
    }
    if matches(&p, "services.*.env_file") {
        return Some(match &item.value {
            Value::Map(_) => field(item, "path"),
            _ => item.as_str().map(str::to_string),
        });
    }
    None
}

/// De-duplicates sequences that compose keeps unique: a later entry with the same identity
/// replaces the earlier one in its place.
pub fn enforce_unicity(node: &mut Node, path: &mut Vec<String>) {
    match &mut node.value {
        Value::Map(m) => {
            for (k, e) in m.iter_mut() {
                path.push(k.clone());
                enforce_unicity(&mut e.value, path);
                path.pop();
            }
        }
        Value::Seq(items) => {
            let Some(first) = items.first() else { return };
            if identity(path, first).is_none() {
                return;
            }
            let mut out: Vec<Node> = Vec::with_capacity(items.len());
            let mut seen: HashMap<String, usize> = HashMap::new();
            for item in items.drain(..) {
                match identity(path, &item).flatten() {
                    Some(id) => {
                        if let Some(at) = seen.get(&id) {
                            out[*at] = item;
                        } else {
                            seen.insert(id, out.len());
                            out.push(item);
                        }
                    }
                    None => out.push(item),
                }
            }
            *items = out;
        }
        _ => {}
    }
}

trait Tagged {
    fn tagged(self, tag: Tag) -> Self;
}

impl Tagged for Node {
    fn tagged(mut self, tag: Tag) -> Self {
        self.tag = Some(tag);
        self
    }
}

#[cfg(test)]
mod tests;
