//! The compose-spec's own JSON schema, checked on the interpolated, merged tree.
//!
//! compose-go validates every file's merge result against `compose-spec.json` before it reads
//! any type, so skiff does the same: [`check`] runs after each `-f` file (its `include` and
//! `extends` resolved) has been merged into the ones before it. The schema ships as data
//! (`schema/compose-spec.json`, see `schema/README.md` for its source and licence) and is
//! compiled once.
//!
//! The tree is converted to JSON as compose-go sees it: plain scalars typed by the YAML core
//! schema, quoted and interpolated ones as strings, except on the paths where compose-go casts
//! interpolated strings to numbers and booleans. Each schema error becomes a diagnostic at the
//! node it is about, in the words the typed reader uses for the same problem.

use std::sync::LazyLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{JsonType, ValidationError, Validator};
use serde_json::{Map as JsonMap, Number, Value as Json};

use crate::diag::{Diagnostic, Pos, SpecError, index_path, join_path};
use crate::node::{Node, Resolved, Value, parse_yaml_int};

const SCHEMA_TEXT: &str = include_str!("../schema/compose-spec.json");

struct Compiled {
    schema: Json,
    validator: Validator,
}

static SCHEMA: LazyLock<Compiled> = LazyLock::new(|| {
    let schema: Json = serde_json::from_str(SCHEMA_TEXT).expect("compose-spec.json is JSON");
    let validator = jsonschema::draft7::options()
        .build(&schema)
        .expect("compose-spec.json compiles");
    Compiled { schema, validator }
});

/// Checks a compose document (after interpolation, include, extends and merge) against the
/// compose-spec schema. Every finding is returned, ordered by position.
pub fn check(tree: &Node) -> Result<(), SpecError> {
    let compiled = &*SCHEMA;
    let json = to_json(tree, &mut Vec::new());
    if compiled.validator.is_valid(&json) {
        return Ok(());
    }
    let mut out: Vec<Diagnostic> = Vec::new();
    for err in compiled.validator.iter_errors(&json) {
        for f in explain(&err) {
            out.push(f.diagnostic(tree, &compiled.schema));
        }
    }
    out.sort_by(|a, b| a.pos.cmp(&b.pos).then_with(|| a.path.cmp(&b.path)));
    out.dedup();
    if out.is_empty() {
        return Ok(());
    }
    Err(SpecError { diagnostics: out })
}

// === the tree as JSON ===

/// What compose-go casts an interpolated string to, by path (`loader/interpolate.go`).
#[derive(Clone, Copy)]
enum Cast {
    Int,
    Float,
    Bool,
}

fn cast_for(path: &[&str]) -> Option<Cast> {
    use Cast::*;
    match path {
        ["services", _, field] => match *field {
            "cpu_count" | "cpu_period" | "cpu_quota" | "cpu_rt_period" | "cpu_rt_runtime"
            | "cpu_shares" | "oom_score_adj" | "pids_limit" | "scale" => Some(Int),
            "cpu_percent" | "cpus" => Some(Float),
            "init" | "oom_kill_disable" | "privileged" | "read_only" | "stdin_open" | "tty" => {
                Some(Bool)
            }
            _ => None,
        },
        ["services", _, "depends_on", _, "required" | "restart"] => Some(Bool),
        ["services", _, "deploy", "replicas"] => Some(Int),
        [
            "services",
            _,
            "deploy",
            "update_config" | "rollback_config",
            "parallelism",
        ] => Some(Int),
        [
            "services",
            _,
            "deploy",
            "update_config" | "rollback_config",
            "max_failure_ratio",
        ] => Some(Float),
        ["services", _, "deploy", "restart_policy", "max_attempts"] => Some(Int),
        [
            "services",
            _,
            "deploy",
            "placement",
            "max_replicas_per_node",
        ] => Some(Int),
        ["services", _, "healthcheck", "retries"] => Some(Int),
        ["services", _, "healthcheck", "disable"] => Some(Bool),
        ["services", _, "ports", "[]", "target"] => Some(Int),
        ["services", _, "ulimits", _] | ["services", _, "ulimits", _, "hard" | "soft"] => Some(Int),
        ["services", _, "volumes", "[]", "read_only"] => Some(Bool),
        ["services", _, "volumes", "[]", "volume", "nocopy"] => Some(Bool),
        [
            "networks",
            _,
            "external" | "internal" | "attachable" | "enable_ipv4" | "enable_ipv6",
        ] => Some(Bool),
        ["volumes" | "secrets" | "configs", _, "external"] => Some(Bool),
        _ => None,
    }
}

fn cast(text: &str, to: Cast) -> Option<Json> {
    match to {
        Cast::Int => parse_yaml_int(text).map(Json::from),
        Cast::Float => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Json::Number),
        Cast::Bool => match text.to_ascii_lowercase().as_str() {
            "true" | "y" | "yes" | "on" => Some(Json::Bool(true)),
            "false" | "n" | "no" | "off" => Some(Json::Bool(false)),
            _ => None,
        },
    }
}

/// The tree as compose-go hands it to the schema. Linear in the tree's size, which the parser
/// has already bounded (nodes and bytes, alias copies included).
fn to_json<'a>(node: &'a Node, path: &mut Vec<&'a str>) -> Json {
    match &node.value {
        Value::Null => Json::Null,
        Value::Scalar(s) => {
            if !s.plain {
                if let Some(v) = cast_for(path).and_then(|c| cast(&s.text, c)) {
                    return v;
                }
                return Json::String(s.text.clone());
            }
            match s.resolve() {
                Resolved::Bool(b) => Json::Bool(b),
                Resolved::Int(i) => Json::from(i),
                Resolved::Float(f) => Number::from_f64(f)
                    .map(Json::Number)
                    .unwrap_or_else(|| Json::String(s.text.clone())),
                Resolved::Str(t) => Json::String(t.to_string()),
            }
        }
        Value::Seq(items) => {
            path.push("[]");
            let out = items.iter().map(|i| to_json(i, path)).collect();
            path.pop();
            Json::Array(out)
        }
        Value::Map(m) => {
            let mut out = JsonMap::with_capacity(m.len());
            for (k, e) in m.iter() {
                path.push(k);
                out.insert(k.clone(), to_json(&e.value, path));
                path.pop();
            }
            Json::Object(out)
        }
    }
}

// === errors in skiff's words ===

/// One finding: where (a JSON pointer into the document), what, and whether it is about a key
/// of that mapping rather than the value there.
struct Finding {
    at: Vec<String>,
    key: Option<String>,
    message: Message,
}

enum Message {
    Text(String),
    /// An additional property; the schema location tells whether it is a name or a field.
    Unexpected {
        keyword_location: String,
    },
}

impl Finding {
    fn diagnostic(&self, tree: &Node, schema: &Json) -> Diagnostic {
        let (pos, mut path) = locate(tree, &self.at);
        let mut pos = pos;
        let message = match &self.message {
            Message::Text(t) => t.clone(),
            Message::Unexpected { keyword_location } => {
                let key = self.key.as_deref().unwrap_or_default();
                unexpected_key_message(key, schema, keyword_location)
            }
        };
        if let Some(key) = &self.key {
            let node = walk(tree, &self.at);
            if let Some(e) = node.and_then(Node::as_map).and_then(|m| m.entry(key)) {
                pos = Some(e.key_pos.clone());
            }
            path = join_path(&path, key);
        }
        Diagnostic::new(pos, path, message)
    }
}

fn walk<'a>(tree: &'a Node, at: &[String]) -> Option<&'a Node> {
    let mut node = tree;
    for seg in at {
        node = match &node.value {
            Value::Map(m) => m.get(seg)?,
            Value::Seq(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// The position of the value at `at` and its dotted path (`services.web.ports[0]`).
fn locate(tree: &Node, at: &[String]) -> (Option<Pos>, String) {
    let mut node = tree;
    let mut path = String::new();
    for seg in at {
        let next = match &node.value {
            Value::Map(m) => {
                path = join_path(&path, seg);
                m.get(seg)
            }
            Value::Seq(items) => {
                let i = seg.parse::<usize>().ok();
                path = match i {
                    Some(i) => index_path(&path, i),
                    None => join_path(&path, seg),
                };
                i.and_then(|i| items.get(i))
            }
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return (Some(node.pos.clone()), path),
        }
    }
    (Some(node.pos.clone()), path)
}

fn pointer_segments(pointer: &str) -> Vec<String> {
    if pointer.is_empty() {
        return Vec::new();
    }
    pointer
        .trim_start_matches('/')
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

fn type_name(t: JsonType) -> &'static str {
    match t {
        JsonType::Array => "a sequence",
        JsonType::Boolean => "a boolean",
        JsonType::Integer => "an integer",
        JsonType::Null => "null",
        JsonType::Number => "a number",
        JsonType::Object => "a mapping",
        JsonType::String => "a string",
    }
}

fn type_names(kind: &TypeKind) -> Vec<&'static str> {
    match kind {
        TypeKind::Single(t) => vec![type_name(*t)],
        TypeKind::Multiple(set) => set.iter().map(type_name).collect(),
    }
}

fn describe(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Array(_) => "a sequence".into(),
        Json::Object(_) => "a mapping".into(),
        Json::String(s) => {
            let mut t: String = s.chars().take(60).collect();
            if t.len() < s.len() {
                t.push('…');
            }
            format!("{t:?}")
        }
        other => other.to_string(),
    }
}

/// Expected types, when `err` says only that the value has none of them.
fn root_types(errs: &[ValidationError<'_>], at: &str) -> Option<Vec<&'static str>> {
    let mut out = Vec::new();
    for e in errs {
        if e.instance_path().as_str() != at {
            return None;
        }
        match e.kind() {
            ValidationErrorKind::Type { kind } => out.extend(type_names(kind)),
            ValidationErrorKind::OneOfNotValid { context }
            | ValidationErrorKind::AnyOf { context } => {
                for branch in context {
                    out.extend(root_types(branch, at)?);
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

fn specificity(findings: &[Finding]) -> usize {
    findings
        .iter()
        .map(|f| f.at.len() + usize::from(f.key.is_some()))
        .max()
        .unwrap_or(0)
}

fn explain(err: &ValidationError<'_>) -> Vec<Finding> {
    let at_pointer = err.instance_path().as_str();
    let at = pointer_segments(at_pointer);
    let text = |m: String| {
        vec![Finding {
            at: at.clone(),
            key: None,
            message: Message::Text(m),
        }]
    };
    match err.kind() {
        ValidationErrorKind::Type { kind } => text(format!(
            "expected {}, got {}",
            type_names(kind).join(" or "),
            describe(err.instance())
        )),
        ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
            let mut wanted = Vec::new();
            let mut best: Option<Vec<Finding>> = None;
            for branch in context {
                if let Some(types) = root_types(branch, at_pointer) {
                    wanted.extend(types);
                    continue;
                }
                let findings: Vec<Finding> = branch.iter().flat_map(explain).collect();
                if best
                    .as_ref()
                    .is_none_or(|b| specificity(&findings) > specificity(b))
                {
                    best = Some(findings);
                }
            }
            match best {
                // The value has the type of some form: say what is wrong within that form.
                Some(b) if !b.is_empty() => b,
                _ => {
                    // Each type once, in the schema's order.
                    let mut seen = Vec::new();
                    wanted.retain(|w| {
                        let new = !seen.contains(w);
                        seen.push(*w);
                        new
                    });
                    text(format!(
                        "expected {}, got {}",
                        wanted.join(" or "),
                        describe(err.instance())
                    ))
                }
            }
        }
        ValidationErrorKind::OneOfMultipleValid { .. } => {
            text("matches more than one of the allowed forms".into())
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let keyword_location = err
                .absolute_keyword_location()
                .and_then(|u| u.fragment().map(|f| f.as_str().to_string()))
                .unwrap_or_else(|| err.schema_path().as_str().to_string());
            unexpected
                .iter()
                .map(|k| Finding {
                    at: at.clone(),
                    key: Some(k.clone()),
                    message: Message::Unexpected {
                        keyword_location: keyword_location.clone(),
                    },
                })
                .collect()
        }
        ValidationErrorKind::Required { property } => text(format!(
            "missing required field {}",
            property
                .as_str()
                .map(|s| format!("{s:?}"))
                .unwrap_or_else(|| property.to_string())
        )),
        ValidationErrorKind::Enum { options } => {
            let opts: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            text(format!(
                "expected one of {}, got {}",
                opts.join(", "),
                describe(err.instance())
            ))
        }
        ValidationErrorKind::Minimum { limit } => text(format!(
            "must be at least {limit}, got {}",
            describe(err.instance())
        )),
        ValidationErrorKind::Maximum { limit } => text(format!(
            "must be at most {limit}, got {}",
            describe(err.instance())
        )),
        ValidationErrorKind::ExclusiveMinimum { limit } => text(format!(
            "must be more than {limit}, got {}",
            describe(err.instance())
        )),
        ValidationErrorKind::ExclusiveMaximum { limit } => text(format!(
            "must be less than {limit}, got {}",
            describe(err.instance())
        )),
        ValidationErrorKind::MinItems { limit } => text(format!("needs at least {limit} item(s)")),
        ValidationErrorKind::MaxItems { limit } => text(format!("takes at most {limit} item(s)")),
        ValidationErrorKind::MinLength { limit } => {
            text(format!("must be at least {limit} character(s) long"))
        }
        ValidationErrorKind::MaxLength { limit } => {
            text(format!("must be at most {limit} character(s) long"))
        }
        ValidationErrorKind::MinProperties { limit } => {
            text(format!("needs at least {limit} entr(ies)"))
        }
        ValidationErrorKind::UniqueItems => {
            let dup = err.instance().as_array().and_then(|items| {
                items
                    .iter()
                    .enumerate()
                    .find(|(i, a)| items[..*i].contains(a))
                    .map(|(i, a)| (i, describe(a)))
            });
            match dup {
                Some((i, what)) => {
                    let mut at = at.clone();
                    at.push(i.to_string());
                    vec![Finding {
                        at,
                        key: None,
                        message: Message::Text(format!(
                            "{what} is listed twice; items must be unique"
                        )),
                    }]
                }
                None => text("items must be unique".into()),
            }
        }
        ValidationErrorKind::Pattern { pattern } => text(format!(
            "{} does not match the pattern {pattern}",
            describe(err.instance())
        )),
        _ => {
            let mut m = err.to_string();
            if let Some(first) = m.get(..1) {
                let lower = first.to_lowercase();
                m.replace_range(..1, &lower);
            }
            text(m.trim_end_matches('.').to_string())
        }
    }
}

/// An additional property: a name that breaks the naming rule (services, networks, …) or a
/// field that does not exist, with the typed reader's did-you-mean hint.
fn unexpected_key_message(key: &str, schema: &Json, keyword_location: &str) -> String {
    let parent = keyword_location
        .strip_suffix("/additionalProperties")
        .unwrap_or(keyword_location);
    let name_pattern = schema
        .pointer(parent)
        .and_then(|s| s.get("patternProperties"))
        .and_then(Json::as_object)
        .and_then(|p| p.keys().find(|k| *k != "^x-").cloned());
    match name_pattern {
        Some(p) if p == "^[a-zA-Z0-9._-]+$" => {
            format!("invalid name {key:?}: use only letters, digits, '.', '_' and '-'")
        }
        Some(p) => format!("invalid key {key:?}: must match {p}"),
        None => crate::de::unknown_field_message(key),
    }
}

#[cfg(test)]
mod tests;
