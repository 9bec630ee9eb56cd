//! `skiff history STACK`: every release with who made it, how, and what changed in one line;
//! `skiff history STACK N`: release N's resolved file as a unified diff against the release
//! before it (or `--against M`), then the change per service.

use std::process::ExitCode;

use serde::Serialize;
use skiff_client::ReleaseSummary;
use skiff_client::blocking::Client;
use skiff_model::diff::{self, ServiceDiff};
use skiff_model::{Author, Cause, StackKey};

use super::ps::format_time;
use super::stack_key;
use crate::output::{self, OutputArg};

#[derive(clap::Args)]
pub struct HistoryArgs {
    stack: String,
    /// Show this release: its resolved file as a unified diff against the release before it,
    /// then the change per service.
    release: Option<u64>,
    /// With a RELEASE: compare with this release instead of the one before.
    #[arg(long, value_name = "M", requires = "release")]
    against: Option<u64>,
    #[command(flatten)]
    output: OutputArg,
}

pub fn history(args: HistoryArgs, client: &Client, env: &str) -> anyhow::Result<ExitCode> {
    let key = stack_key(env, &args.stack)?;
    let releases = client.releases(&key)?;
    if let Some(n) = args.release {
        return show(client, &key, &releases, n, args.against, args.output);
    }
    output::print(args.output.format, &releases, || {
        let rows = releases
            .iter()
            .map(|r| {
                vec![
                    if r.current {
                        format!("{} (current)", r.number)
                    } else {
                        r.number.to_string()
                    },
                    format_time(r.created_ms),
                    r.author.to_string(),
                    r.cause.to_string(),
                    r.change.clone(),
                ]
            })
            .collect();
        output::print_table(&["RELEASE", "CREATED (UTC)", "BY", "HOW", "CHANGE"], rows);
    })?;
    Ok(ExitCode::SUCCESS)
}

/// What `skiff history STACK N -o json` prints.
#[derive(Serialize)]
struct ReleaseDiff {
    stack: StackKey,
    release: u64,
    /// The release compared with; `null` for the first release.
    against: Option<u64>,
    created_ms: u64,
    author: Author,
    cause: Cause,
    /// The unified diff of the resolved compose files.
    diff: String,
    /// Every service of either release and how it changed.
    services: Vec<ServiceDiff>,
}

fn show(
    client: &Client,
    key: &StackKey,
    releases: &[ReleaseSummary],
    n: u64,
    against: Option<u64>,
    out: OutputArg,
) -> anyhow::Result<ExitCode> {
    let known = |n: u64| -> anyhow::Result<()> {
        if releases.iter().any(|r| r.number == n) {
            return Ok(());
        }
        match (releases.first(), releases.last()) {
            (Some(first), Some(last)) => anyhow::bail!(
                "stack {key} has no release {n} (its releases are {}–{})",
                first.number,
                last.number
            ),
            _ => anyhow::bail!("stack {key} has no releases"),
        }
    };
    known(n)?;
    let against = match against {
        Some(m) => {
            known(m)?;
            Some(m)
        }
        None => releases.iter().map(|r| r.number).filter(|&m| m < n).max(),
    };
    let new = client.release(key, n)?;
    let old = against.map(|m| client.release(key, m)).transpose()?;
    let old_name = against.map_or("(nothing: initial release)".into(), |m| {
        format!("release {m}")
    });
    let text = unified(
        old.as_ref().map_or("", |r| r.source.as_str()),
        &new.source,
        &old_name,
        &format!("release {n}"),
    );
    let services = diff::compare(
        &old.as_ref().map(|r| r.spec.clone()).unwrap_or_default(),
        &new.spec,
    );
    let view = ReleaseDiff {
        stack: key.clone(),
        release: n,
        against,
        created_ms: new.created_ms,
        author: new.author.clone(),
        cause: new.cause.clone(),
        diff: text,
        services,
    };
    output::print(out.format, &view, || {
        println!(
            "release {n} of {key}: {} UTC by {} ({})",
            format_time(view.created_ms),
            view.author,
            view.cause
        );
        match against {
            Some(m) => println!("compared with release {m}"),
            None => println!("initial release"),
        }
        println!();
        if view.diff.is_empty() {
            println!("(the resolved files are the same)");
        } else {
            print!("{}", colored(&view.diff, output::stdout_color()));
        }
        println!();
        println!("changes:");
        let changed: Vec<&ServiceDiff> = view
            .services
            .iter()
            .filter(|d| d.change != diff::Change::Unchanged)
            .collect();
        if changed.is_empty() {
            println!("  none");
        }
        for d in changed {
            println!("  {}", d.line());
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A unified diff (3 lines of context) of `old` to `new`; empty when they are equal.
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}

/// `diff` with added lines green, removed ones red and hunk headers cyan when `color`.
pub fn colored(diff: &str, color: bool) -> String {
    if !color {
        return diff.to_string();
    }
    diff.lines()
        .map(|l| {
            let ansi = if l.starts_with("+++") || l.starts_with("---") {
                "1"
            } else if l.starts_with('+') {
                "32"
            } else if l.starts_with('-') {
                "31"
            } else if l.starts_with("@@") {
                "36"
            } else {
                return format!("{l}\n");
            };
            format!("\x1b[{ansi}m{l}\x1b[0m\n")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unified_diff_marks_the_changed_line_with_context() {
        let old = "services:\n  web:\n    image: demo:1\n    replicas: 2\n";
        let new = "services:\n  web:\n    image: demo:2\n    replicas: 2\n";
        let d = unified(old, new, "release 1", "release 2");
        assert!(d.starts_with("--- release 1\n+++ release 2\n@@ "), "{d}");
        assert!(
            d.contains("\n-    image: demo:1\n+    image: demo:2\n"),
            "{d}"
        );
        assert!(d.contains("\n     replicas: 2\n"), "{d}");
        assert_eq!(unified(old, old, "a", "b"), "");
    }

    #[test]
    fn colour_only_when_asked() {
        let d = "--- a\n+++ b\n@@ -1 +1 @@\n-x\n+y\n same\n";
        assert_eq!(colored(d, false), d);
        let c = colored(d, true);
        assert!(
            c.contains("\x1b[31m-x\x1b[0m\n\x1b[32m+y\x1b[0m\n same\n"),
            "{c:?}"
        );
    }
}
