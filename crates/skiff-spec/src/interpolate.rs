//! Compose's variable interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?error}`, `${VAR?error}`, `${VAR:+replacement}`, `${VAR+replacement}` and `$$` for a
//! literal `$`. Defaults, replacements and error messages are themselves interpolated, so
//! `${A:-${B:-x}}` nests.
//!
//! The rules follow compose-go's `template` package: names are `[_a-zA-Z][_a-zA-Z0-9]*`; a `$`
//! followed by anything else is kept as is; `${` that does not form a valid expression is an
//! error; an unset variable without a default becomes the empty string, with a warning.

use crate::diag::{Diagnostic, SpecError, index_path, join_path};
use crate::node::{Node, Value};

/// Largest string one scalar may expand to.
pub const MAX_OUTPUT: usize = 1 << 20;
/// Deepest nesting of `${…${…}}` accepted.
const MAX_DEPTH: usize = 32;

/// The result of interpolating one string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interpolated {
    pub value: String,
    /// Variables used without a default while unset (each once, in order of use).
    pub unset: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    /// `${VAR:?message}` or `${VAR?message}` with the variable missing.
    #[error("required variable {var} is missing a value{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Required { var: String, message: String },
    #[error("invalid interpolation {template:?}: {reason}")]
    Syntax { template: String, reason: String },
    #[error("interpolation result is larger than {MAX_OUTPUT} bytes")]
    TooLarge,
}

type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Interpolates one string.
pub fn interpolate_str(input: &str, lookup: Lookup) -> Result<Interpolated, InterpolateError> {
    let mut out = Interpolated::default();
    out.value = expand(input, input, lookup, &mut out.unset, 0)?;
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_name_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// Byte index of the `}` closing the `{` at `open`, counting nested braces.
fn closing_brace(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

fn expand(
    s: &str,
    whole: &str,
    lookup: Lookup,
    unset: &mut Vec<String>,
    depth: usize,
) -> Result<String, InterpolateError> {
    let syntax = |reason: &str| InterpolateError::Syntax {
        template: whole.to_string(),
        reason: reason.to_string(),
    };
    if depth > MAX_DEPTH {
        return Err(syntax("nested too deeply"));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match after.chars().next() {
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('{') => {
                let close = closing_brace(after, 0).ok_or_else(|| syntax("missing closing }"))?;
                let inner = &after[1..close];
                out.push_str(&braced(inner, whole, lookup, unset, depth)?);
                rest = &after[close + 1..];
            }
            Some(c) if is_name_start(c) => {
                let end = after
                    .find(|c: char| !is_name_char(c))
                    .unwrap_or(after.len());
                let name = &after[..end];
                out.push_str(&plain(name, lookup, unset));
                rest = &after[end..];
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
        if out.len() > MAX_OUTPUT {
            return Err(InterpolateError::TooLarge);
        }
    }
    out.push_str(rest);
    if out.len() > MAX_OUTPUT {
        return Err(InterpolateError::TooLarge);
    }
    Ok(out)
}

fn plain(name: &str, lookup: Lookup, unset: &mut Vec<String>) -> String {
    match lookup(name) {
        Some(v) => v,
        None => {
            if !unset.iter().any(|u| u == name) {
                unset.push(name.to_string());
            }
            String::new()
        }
    }
}

/// The inside of `${…}`.
fn braced(
    inner: &str,
    whole: &str,
    lookup: Lookup,
    unset: &mut Vec<String>,
    depth: usize,
) -> Result<String, InterpolateError> {
    let syntax = |reason: String| InterpolateError::Syntax {
        template: whole.to_string(),
        reason,
    };
    if !inner.starts_with(is_name_start) {
        return Err(syntax(format!(
            "${{{inner}}} must start with a variable name ([_a-zA-Z][_a-zA-Z0-9]*)"
        )));
    }
    let end = inner
        .find(|c: char| !is_name_char(c))
        .unwrap_or(inner.len());
    let (name, op) = inner.split_at(end);
    if op.is_empty() {
        return Ok(plain(name, lookup, unset));
    }
    let (colon, op) = match op.strip_prefix(':') {
        Some(o) => (true, o),
        None => (false, op),
    };
    let Some(kind) = op.chars().next().filter(|c| matches!(c, '-' | '+' | '?')) else {
        return Err(syntax(format!(
            "unexpected {:?} after variable {name} (expected }}, :-, -, :+, +, :? or ?)",
            op.chars().next().map_or(String::new(), String::from)
        )));
    };
    let arg = &op[1..];
    let value = lookup(name);
    // "set" for the colon forms means set and not empty.
    let set = match &value {
        Some(v) => !colon || !v.is_empty(),
        None => false,
    };
    match kind {
        '-' => {
            if set {
                Ok(value.unwrap_or_default())
            } else {
                expand(arg, whole, lookup, unset, depth + 1)
            }
        }
        '+' => {
            if set {
                expand(arg, whole, lookup, unset, depth + 1)
            } else {
                Ok(value.unwrap_or_default())
            }
        }
        _ => {
            if set {
                Ok(value.unwrap_or_default())
            } else {
                let message = expand(arg, whole, lookup, unset, depth + 1)?;
                Err(InterpolateError::Required {
                    var: name.to_string(),
                    message,
                })
            }
        }
    }
}

/// Interpolates every scalar value (never a key) of `node`, whose field path is `path`.
///
/// A scalar that changes becomes a string (not plain), as compose's interpolation yields
/// strings; unset variables give one positioned warning each.
pub fn interpolate_tree(
    node: &mut Node,
    path: &str,
    lookup: Lookup,
    warnings: &mut Vec<Diagnostic>,
) -> Result<(), SpecError> {
    match &mut node.value {
        Value::Scalar(s) if s.text.contains('$') => {
            let r = interpolate_str(&s.text, lookup)
                .map_err(|e| SpecError::at(&node.pos, path, e.to_string()))?;
            for var in r.unset {
                warnings.push(Diagnostic::at(
                    &node.pos,
                    path,
                    format!("the {var:?} variable is not set, defaulting to a blank string"),
                ));
            }
            if r.value != s.text {
                s.text = r.value;
                s.plain = false;
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, &index_path(path, i), lookup, warnings)?;
            }
        }
        Value::Map(map) => {
            for (key, entry) in map.iter_mut() {
                interpolate_tree(&mut entry.value, &join_path(path, key), lookup, warnings)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests;
