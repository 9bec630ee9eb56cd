//! Compose's `.env` / `env_file` format.
//!
//! - `KEY=VALUE`, `KEY: VALUE`, optionally prefixed with `export `; blank lines and `#` lines
//!   are skipped;
//! - `'single quoted'` values are literal and may span lines;
//! - `"double quoted"` values may span lines, understand `\n \t \" \\ \$`-style escapes and are
//!   interpolated;
//! - unquoted values end at the line end or at ` #` (an inline comment), are trimmed and
//!   interpolated;
//! - a bare `KEY` takes its value from the environment (`None` when it has none).
//!
//! Interpolation sees the process environment first, then the variables defined earlier in the
//! same file.

use indexmap::IndexMap;

use crate::diag::{Pos, SpecError};
use crate::interpolate::interpolate_str;

/// Parses one env file. Variables come out in file order; a later definition replaces an
/// earlier one.
pub fn parse_dotenv(
    file_name: &str,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<IndexMap<String, Option<String>>, SpecError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out: IndexMap<String, Option<String>> = IndexMap::new();
    let mut rest = text;
    let mut line = 1u32;
    while !rest.is_empty() {
        let start_line = line;
        let err = |msg: String| SpecError::at(&Pos::new(file_name, start_line, 1), "", msg);
        let (stmt_line, after) = rest.split_once('\n').unwrap_or((rest, ""));
        let trimmed = stmt_line.trim_start();
        if trimmed.trim_end().is_empty() || trimmed.starts_with('#') {
            rest = after;
            line += 1;
            continue;
        }
        let body = match trimmed.strip_prefix("export") {
            Some(b) if b.starts_with([' ', '\t']) => b.trim_start(),
            _ => trimmed,
        };
        let key_end = body.find(['=', ':']).unwrap_or(body.len());
        let key = body[..key_end].trim_end();
        if key.is_empty() {
            return Err(err("a line must start with a variable name".into()));
        }
        if let Some(c) = key
            .chars()
            .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '[' | ']')))
        {
            let what = if c.is_whitespace() {
                "a space".to_string()
            } else {
                format!("{c:?}")
            };
            return Err(err(format!("variable name {key:?} cannot contain {what}")));
        }
        if key_end == body.len() {
            // `KEY` alone: inherited from the environment.
            out.insert(key.to_string(), lookup(key));
            rest = after;
            line += 1;
            continue;
        }
        // The value starts after the separator; it may continue past this line when quoted.
        let value_src_offset =
            text.len() - rest.len() + (stmt_line.len() - body.len()) + key_end + 1;
        let value_src = text[value_src_offset..].trim_start_matches([' ', '\t']);
        let env_lookup = |k: &str| lookup(k).or_else(|| out.get(k).cloned().flatten());
        let (value, consumed) = match value_src.chars().next() {
            Some(q @ ('\'' | '"')) => {
                let body = &value_src[1..];
                let mut end = None;
                let mut escaped = false;
                for (i, c) in body.char_indices() {
                    if q == '"' && c == '\\' && !escaped {
                        escaped = true;
                        continue;
                    }
                    if c == q && !escaped {
                        end = Some(i);
                        break;
                    }
                    escaped = false;
                }
                let Some(end) = end else {
                    return Err(err(format!(
                        "unterminated quoted value for {key}: {}",
                        value_src.lines().next().unwrap_or("")
                    )));
                };
                let raw = &body[..end];
                let v = if q == '\'' {
                    raw.to_string()
                } else {
                    let unescaped = unescape(raw);
                    interpolate(&unescaped, &env_lookup).map_err(&err)?
                };
                (v, 1 + end + 1)
            }
            _ => {
                let line_end = value_src.find('\n').unwrap_or(value_src.len());
                let mut v = &value_src[..line_end];
                if let Some(i) = v.find(" #").or_else(|| v.find("\t#")) {
                    v = &v[..i];
                }
                let v = v.trim();
                (interpolate(v, &env_lookup).map_err(&err)?, line_end)
            }
        };
        let consumed_text = &value_src[..consumed];
        line += consumed_text.matches('\n').count() as u32;
        out.insert(key.to_string(), Some(value));
        let after_value = &value_src[consumed..];
        // Anything left on the line must be a comment or blanks.
        let (tail, next) = after_value.split_once('\n').unwrap_or((after_value, ""));
        let tail = tail.trim();
        if !tail.is_empty() && !tail.starts_with('#') {
            return Err(err(format!(
                "unexpected {tail:?} after the quoted value of {key}"
            )));
        }
        rest = next;
        line += 1;
    }
    Ok(out)
}

/// `\$` stays a literal `$` through interpolation (as `$$`); other escapes become their
/// characters.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('a') => out.push('\u{7}'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some('$') => out.push_str("$$"),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn interpolate(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    interpolate_str(s, lookup)
        .map(|r| r.value)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> IndexMap<String, Option<String>> {
        parse_dotenv(".env", text, &|k| {
            (k == "HOME").then(|| "/root".to_string())
        })
        .unwrap()
    }

    fn get(m: &IndexMap<String, Option<String>>, k: &str) -> Option<String> {
        m.get(k).cloned().flatten()
    }

    #[test]
    fn plain_exported_and_yaml_style_lines() {
        let m = parse("# comment\n\nA=1\nexport B=two words  \nC: 3\n  D = spaced\n");
        assert_eq!(get(&m, "A").as_deref(), Some("1"));
        assert_eq!(get(&m, "B").as_deref(), Some("two words"));
        assert_eq!(get(&m, "C").as_deref(), Some("3"));
        assert_eq!(get(&m, "D").as_deref(), Some("spaced"));
    }

    #[test]
    fn quotes_comments_and_escapes() {
        let m = parse(
            "S='lit $HOME # no comment'\nD=\"line\\nnext \\\"q\\\" $HOME\"\nU=value # comment\nH=a#b\nE=\"\\$HOME\"\n",
        );
        assert_eq!(get(&m, "S").as_deref(), Some("lit $HOME # no comment"));
        assert_eq!(get(&m, "D").as_deref(), Some("line\nnext \"q\" /root"));
        assert_eq!(get(&m, "U").as_deref(), Some("value"));
        assert_eq!(get(&m, "H").as_deref(), Some("a#b"));
        assert_eq!(get(&m, "E").as_deref(), Some("$HOME"));
    }

    #[test]
    fn multi_line_quoted_values_keep_line_numbers_right() {
        let m = parse("A=\"one\ntwo\"\nB='x\ny'\nC=3\n");
        assert_eq!(get(&m, "A").as_deref(), Some("one\ntwo"));
        assert_eq!(get(&m, "B").as_deref(), Some("x\ny"));
        assert_eq!(get(&m, "C").as_deref(), Some("3"));
        let e = parse_dotenv(".env", "A=\"x\ny\"\nbad key=1\n", &|_| None).unwrap_err();
        assert_eq!(
            e.to_string(),
            ".env:3:1: variable name \"bad key\" cannot contain a space"
        );
    }

    #[test]
    fn values_interpolate_earlier_variables_and_the_environment() {
        let m = parse("A=x\nB=${A}-$HOME\nC=${MISSING:-dflt}\n");
        assert_eq!(get(&m, "B").as_deref(), Some("x-/root"));
        assert_eq!(get(&m, "C").as_deref(), Some("dflt"));
    }

    #[test]
    fn bare_keys_inherit_from_the_environment() {
        let m = parse("HOME\nNOPE\n");
        assert_eq!(m["HOME"].as_deref(), Some("/root"));
        assert_eq!(m["NOPE"], None);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = parse_dotenv("a.env", "A=1\nB=\"open\n", &|_| None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("a.env:2:1: unterminated quoted value for B"),
            "{e}"
        );
        let e = parse_dotenv("a.env", "=1\n", &|_| None).unwrap_err();
        assert!(
            e.to_string().contains("must start with a variable name"),
            "{e}"
        );
        let e = parse_dotenv("a.env", "A=${X:?need X}\n", &|_| None).unwrap_err();
        assert!(e.to_string().contains("need X"), "{e}");
    }

    #[test]
    fn a_byte_order_mark_is_ignored() {
        assert_eq!(get(&parse("\u{feff}A=1\n"), "A").as_deref(), Some("1"));
    }
}
