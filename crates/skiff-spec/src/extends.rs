//! Service `extends` and top-level `include`, on the node tree.
//!
//! `extends: {service: base, file: other.yaml}` (or `extends: base`) merges the service over its
//! base with the same rules as multi-file merge ([`crate::merge::merge_service`]); a base may
//! extend another, across files. Relative paths of a base read from another file are rebased
//! so they keep pointing where they did from that file's directory.
//!
//! `include:` pulls the resources of other compose files into this one; a resource defined on
//! both sides is an error, as in compose.

use std::path::{Path, PathBuf};

use crate::diag::{Pos, SpecError};
use crate::loader::{dir_of, normalize};
use crate::merge::merge_service;
use crate::node::{Map, Node, Value};

/// Reads another file (path relative to the including/extending file's directory) as a
/// parsed and interpolated document.
pub type LoadDoc<'a> = dyn FnMut(&str, &Pos) -> Result<Node, SpecError> + 'a;

/// Resolves every service's `extends` in `doc`, a document of the file `file`.
pub fn resolve_extends(doc: &mut Node, file: &str, load: &mut LoadDoc) -> Result<(), SpecError> {
    let Some(services) = doc
        .as_map()
        .and_then(|m| m.get("services"))
        .and_then(Node::as_map)
    else {
        return Ok(());
    };
    let extends = |n: &Node| n.as_map().is_some_and(|m| m.contains_key("extends"));
    if !services.iter().any(|(_, e)| extends(&e.value)) {
        return Ok(());
    }
    let services = services.clone();
    let mut resolved = Vec::new();
    for name in services.keys() {
        let node = services.get(name).expect("key exists");
        if node.as_map().is_some_and(|m| m.contains_key("extends")) {
            let mut chain = Vec::new();
            let r = resolve_service(&services, file, Path::new("."), name, &mut chain, load)?;
            resolved.push((name.clone(), r));
        }
    }
    let target = doc
        .as_map_mut()
        .and_then(|m| m.get_mut("services"))
        .and_then(Node::as_map_mut)
        .expect("services checked above");
    for (name, node) in resolved {
        if let Some(slot) = target.get_mut(&name) {
            *slot = node;
        }
    }
    Ok(())
}

/// The service `name` of `services` (from `file`, at `dir` relative to the first file's
/// directory) with its `extends` chain applied.
fn resolve_service(
    services: &Map,
    file: &str,
    dir: &Path,
    name: &str,
    chain: &mut Vec<(String, String)>,
    load: &mut LoadDoc,
) -> Result<Node, SpecError> {
    let node = services.get(name).expect("caller checked").clone();
    let Some(ext) = node.as_map().and_then(|m| m.get("extends")).cloned() else {
        return Ok(node);
    };
    let path = format!("services.{name}.extends");
    let (base_name, base_file) = match &ext.value {
        Value::Scalar(s) => (s.text.clone(), None),
        Value::Map(m) => {
            for key in m.keys() {
                if !matches!(key.as_str(), "service" | "file") && !key.starts_with("x-") {
                    let pos = &m.entry(key).expect("key").key_pos;
                    return Err(SpecError::at(
                        pos,
                        format!("{path}.{key}"),
                        "unknown field (extends takes service and file)",
                    ));
                }
            }
            let service = m.get("service").and_then(Node::as_str).ok_or_else(|| {
                SpecError::at(
                    &ext.pos,
                    format!("{path}.service"),
                    "missing required field \"service\"",
                )
            })?;
            let file = match m.get("file") {
                None => None,
                Some(f) => Some(f.as_str().map(str::to_string).ok_or_else(|| {
                    SpecError::at(
                        &f.pos,
                        format!("{path}.file"),
                        format!("expected a path, got {}", f.describe()),
                    )
                })?),
            };
            (service.to_string(), file)
        }
        _ => {
            return Err(SpecError::at(
                &ext.pos,
                path,
                format!(
                    "expected a service name or a mapping, got {}",
                    ext.describe()
                ),
            ));
        }
    };

    let here = (file.to_string(), name.to_string());
    if let Some(i) = chain.iter().position(|c| *c == here) {
        let mut names: Vec<&str> = chain[i..].iter().map(|(_, n)| n.as_str()).collect();
        names.push(name);
        return Err(SpecError::at(
            &ext.pos,
            path,
            format!("circular extends {}", names.join(" -> ")),
        ));
    }
    chain.push(here);

    let base = match &base_file {
        None => {
            if !services.contains_key(&base_name) {
                return Err(SpecError::at(
                    &ext.pos,
                    path,
                    format!(
                        "cannot extend service {name:?}: service {base_name:?} not found in {file}"
                    ),
                ));
            }
            resolve_service(services, file, dir, &base_name, chain, load)?
        }
        Some(rel) => {
            let rel_from_first = normalize(&dir.join(rel));
            let other = load(&rel_from_first.to_string_lossy(), &ext.pos)?;
            let other_services = other
                .as_map()
                .and_then(|m| m.get("services"))
                .and_then(Node::as_map)
                .cloned()
                .unwrap_or_default();
            if !other_services.contains_key(&base_name) {
                return Err(SpecError::at(
                    &ext.pos,
                    path,
                    format!(
                        "cannot extend service {name:?}: service {base_name:?} not found in {rel}"
                    ),
                ));
            }
            let other_file = normalize(&dir_of(Path::new(file)).join(rel));
            let mut base = resolve_service(
                &other_services,
                &other_file.to_string_lossy(),
                &dir_of(&rel_from_first),
                &base_name,
                chain,
                load,
            )?;
            rebase_service(&mut base, &dir_of(Path::new(rel)));
            base
        }
    };
    chain.pop();

    let mut service = node;
    if let Some(m) = service.as_map_mut() {
        m.remove("extends");
    }
    let mut base = base;
    if let Some(m) = base.as_map_mut() {
        m.remove("extends");
    }
    merge_service(base, service)
}

/// Rewrites a service's relative host paths so they resolve from `dir` (the base file's
/// directory relative to the extending file's).
pub fn rebase_service(service: &mut Node, dir: &Path) {
    if dir == Path::new(".") || dir.as_os_str().is_empty() {
        return;
    }
    let rebase = |text: &mut String| {
        if text.starts_with('.')
            || (!text.starts_with('/') && !text.starts_with('~') && !text.contains("://"))
        {
            *text = normalize(&dir.join(text.as_str()))
                .to_string_lossy()
                .into_owned();
        }
    };
    let Some(m) = service.as_map_mut() else {
        return;
    };
    if let Some(build) = m.get_mut("build") {
        match &mut build.value {
            Value::Scalar(s) => rebase(&mut s.text),
            Value::Map(b) => {
                if let Some(Value::Scalar(s)) = b.get_mut("context").map(|c| &mut c.value) {
                    rebase(&mut s.text);
                }
            }
            _ => {}
        }
    }
    if let Some(env_file) = m.get_mut("env_file") {
        let items: Vec<&mut Node> = match &mut env_file.value {
            Value::Seq(items) => items.iter_mut().collect(),
            _ => vec![env_file],
        };
        for item in items {
            match &mut item.value {
                Value::Scalar(s) => rebase(&mut s.text),
                Value::Map(e) => {
                    if let Some(Value::Scalar(s)) = e.get_mut("path").map(|p| &mut p.value) {
                        rebase(&mut s.text);
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(Value::Seq(vols)) = m.get_mut("volumes").map(|v| &mut v.value) {
        for v in vols {
            match &mut v.value {
                Value::Scalar(s) => {
                    if s.text.starts_with('.')
                        && let Some((src, rest)) = s.text.split_once(':')
                    {
                        let mut src = src.to_string();
                        rebase(&mut src);
                        s.text = format!("{src}:{rest}");
                    }
                }
                Value::Map(vm) => {
                    let bind = vm.get("type").and_then(Node::as_str) == Some("bind");
                    if bind
                        && let Some(Value::Scalar(s)) = vm.get_mut("source").map(|p| &mut p.value)
                    {
                        rebase(&mut s.text);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Resolves a document's top-level `include:` list. `load` returns the fully processed
/// document of an included file (its own includes and extends resolved).
pub fn resolve_include(doc: &mut Node, load: &mut LoadDoc) -> Result<(), SpecError> {
    let Some(include) = doc.as_map().and_then(|m| m.get("include")).cloned() else {
        return Ok(());
    };
    let entries: Vec<Node> = match include.value {
        Value::Seq(items) => items,
        Value::Null => Vec::new(),
        _ => {
            return Err(SpecError::at(
                &include.pos,
                "include",
                format!("expected a list, got {}", include.describe()),
            ));
        }
    };
    for (i, entry) in entries.iter().enumerate() {
        let ipath = format!("include[{i}]");
        let (paths, project_dir): (Vec<(String, Pos)>, Option<String>) = match &entry.value {
            Value::Scalar(s) => (vec![(s.text.clone(), entry.pos.clone())], None),
            Value::Map(m) => {
                for key in m.keys() {
                    if !matches!(key.as_str(), "path" | "project_directory" | "env_file") {
                        return Err(SpecError::at(
                            &m.entry(key).expect("key").key_pos,
                            format!("{ipath}.{key}"),
                            "unknown field (include takes path, project_directory and env_file)",
                        ));
                    }
                }
                let paths = match m.get("path").map(|p| &p.value) {
                    Some(Value::Scalar(s)) => vec![(s.text.clone(), entry.pos.clone())],
                    Some(Value::Seq(items)) => items
                        .iter()
                        .filter_map(|i| i.as_str().map(|s| (s.to_string(), i.pos.clone())))
                        .collect(),
                    _ => {
                        return Err(SpecError::at(
                            &entry.pos,
                            format!("{ipath}.path"),
                            "missing required field \"path\"",
                        ));
                    }
                };
                let dir = m
                    .get("project_directory")
                    .and_then(Node::as_str)
                    .map(str::to_string);
                (paths, dir)
            }
            _ => {
                return Err(SpecError::at(
                    &entry.pos,
                    ipath,
                    format!("expected a path or a mapping, got {}", entry.describe()),
                ));
            }
        };
        for (rel, pos) in paths {
            let included = load(&rel, &pos)?;
            let base_dir: PathBuf = match &project_dir {
                Some(d) => PathBuf::from(d),
                None => dir_of(Path::new(&rel)),
            };
            add_resources(doc, included, &base_dir, &rel)?;
        }
    }
    if let Some(m) = doc.as_map_mut() {
        m.remove("include");
    }
    Ok(())
}

fn add_resources(
    doc: &mut Node,
    mut included: Node,
    dir: &Path,
    file: &str,
) -> Result<(), SpecError> {
    let top = doc.as_map_mut().expect("documents are mappings");
    let Some(inc) = included.as_map_mut() else {
        return Ok(());
    };
    for section in [
        "services", "networks", "volumes", "configs", "secrets", "models",
    ] {
        let Some(section_entry) = inc.remove(section) else {
            continue;
        };
        let pos = section_entry.value.pos.clone();
        let Value::Map(items) = section_entry.value.value else {
            continue;
        };
        if !top.contains_key(section) {
            top.insert(section, section_entry.key_pos, Node::map(pos, Map::new()));
        }
        let target = top.get_mut(section).expect("inserted above");
        if target.is_null() {
            target.value = Value::Map(Map::new());
        }
        let Some(target) = target.as_map_mut() else {
            continue;
        };
        for (name, mut entry) in items.into_entries() {
            if let Some(existing) = target.entry(&name) {
                return Err(SpecError::at(
                    &existing.key_pos,
                    format!("{section}.{name}"),
                    format!(
                        "conflicts with the {section} entry {name:?} included from {file} (at {})",
                        entry.key_pos
                    ),
                ));
            }
            if section == "services" {
                rebase_service(&mut entry.value, dir);
            } else if matches!(section, "configs" | "secrets")
                && let Some(Value::Scalar(s)) = entry
                    .value
                    .as_map_mut()
                    .and_then(|m| m.get_mut("file"))
                    .map(|f| &mut f.value)
                && !s.text.starts_with('/')
            {
                s.text = normalize(&dir.join(&s.text)).to_string_lossy().into_owned();
            }
            target.insert(name, entry.key_pos, entry.value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
