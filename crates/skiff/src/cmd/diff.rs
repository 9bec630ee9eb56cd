//! `skiff diff -f FILE`: what `skiff up` would change, service by service, before it does
//! (like `nomad job plan` and `terraform plan -detailed-exitcode`). The file is loaded and
//! validated exactly as `up` does; the comparison with the stack's current release (fetched
//! from the server) happens here, on the client: nothing is sent but two reads.

use std::process::ExitCode;

use serde::Serialize;
use skiff_client::blocking::Client;
use skiff_model::diff::{self, Change, ServiceDiff};
use skiff_model::{Release, StackSpec};

use super::history::{colored, unified};
use super::project::ProjectArgs;
use super::stack_key;
use crate::output::{self, OutputArg};

/// Exit code when `up` would change something.
const CHANGES: u8 = 2;

#[derive(clap::Args)]
#[command(
    after_help = "Exit status: 0 when `up` would change nothing, 2 when it would \
    record a new release (something changed), 1 on error (a file with a mistake, an \
    unreachable server)."
)]
pub struct Args {
    #[command(flatten)]
    project: ProjectArgs,
    /// Also list unchanged services (`= svc`).
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Then print the unified diff of the resolved compose files.
    #[arg(long)]
    text: bool,
    #[command(flatten)]
    output: OutputArg,
}

/// What `skiff diff -o json` prints.
#[derive(Serialize)]
struct Plan {
    env: String,
    stack: String,
    /// The release compared with; `null` when the stack runs none.
    current: Option<u64>,
    /// Whether `up` would record a new release.
    changes: bool,
    services: Vec<ServiceDiff>,
    /// The unified diff of the resolved compose files (empty when equal).
    diff: String,
}

pub fn run(args: Args, client: &Client, env: &str) -> anyhow::Result<ExitCode> {
    let record = super::env_record(client, env)?;
    let project = match args.project.release(record.as_ref())? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let key = stack_key(env, &project.name)?;
    let current = current_release(client, env, &project.name, &key)?;
    let empty = StackSpec::default();
    let services = diff::compare(current.as_ref().map_or(&empty, |r| &r.spec), &project.spec);
    let old_text = current.as_ref().map_or("", |r| r.source.as_str());
    // `up` records a release unless spec and resolved text are both the same.
    let changes = current
        .as_ref()
        .is_none_or(|r| r.spec != project.spec || r.source != project.source);
    let old_name = current
        .as_ref()
        .map_or("(no release)".into(), |r| format!("release {}", r.number));
    let plan = Plan {
        env: env.to_string(),
        stack: project.name.clone(),
        current: current.as_ref().map(|r| r.number),
        changes,
        diff: unified(old_text, &project.source, &old_name, "file"),
        services,
    };
    output::print(args.output.format, &plan, || {
        match plan.current {
            Some(n) => println!(
                "stack {} (env {env}): compared with release {n}",
                plan.stack
            ),
            None => println!("stack {} (env {env}): runs no release", plan.stack),
        }
        for line in lines(&plan.services, &project.spec, args.verbose) {
            println!("{line}");
        }
        let spec_same = plan.services.iter().all(|d| d.change == Change::Unchanged);
        if plan.changes && spec_same && plan.current.is_some() {
            println!(
                "~ resolved file: changed outside what runs (a new release, no instance changes)"
            );
        }
        if !plan.changes {
            println!("no changes: `up` would record no release");
        }
        if args.text && !plan.diff.is_empty() {
            println!();
            print!("{}", colored(&plan.diff, output::stdout_color()));
        }
    })?;
    Ok(if plan.changes {
        ExitCode::from(CHANGES)
    } else {
        ExitCode::SUCCESS
    })
}

/// The stack's current release; `None` before its first `up`, after `down`, or when the
/// server has never heard of it.
fn current_release(
    client: &Client,
    env: &str,
    stack: &str,
    key: &skiff_model::StackKey,
) -> anyhow::Result<Option<Release>> {
    let current = client
        .stacks()?
        .into_iter()
        .find(|s| s.env == env && s.stack == stack)
        .and_then(|s| s.current);
    Ok(match current {
        Some(n) => Some(client.release(key, n)?),
        None => None,
    })
}

/// One line per service, by name: `+ svc`, `- svc`, `~ svc: image a→b (rolling update,
/// start-first, 2 at a time)`, `~ svc: replicas 2→3 (scaled, instances kept)`, and `= svc`
/// only when `verbose`.
fn lines(diffs: &[ServiceDiff], new: &StackSpec, verbose: bool) -> Vec<String> {
    diffs
        .iter()
        .filter_map(|d| {
            let how = match &d.change {
                Change::Unchanged if !verbose => return None,
                Change::Changed {
                    replaces: true,
                    fields: _,
                } => {
                    let svc = new.services.get(&d.service)?;
                    format!(" ({})", diff::rollout_words(svc))
                }
                Change::Changed {
                    replaces: false,
                    fields,
                } if fields.iter().any(|f| f.field == "configs") => {
                    let signal = new
                        .services
                        .get(&d.service)
                        .and_then(|s| s.reload.as_ref())
                        .map_or("its signal", |r| r.signal.as_str());
                    format!(" (reloaded with {signal}, instances kept)")
                }
                Change::Changed {
                    replaces: false,
                    fields,
                } if fields.iter().any(|f| f.field == "replicas") => {
                    " (scaled, instances kept)".to_string()
                }
                Change::Changed {
                    replaces: false, ..
                } => " (instances kept)".to_string(),
                _ => String::new(),
            };
            Some(format!("{}{how}", d.line()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::{Parallelism, ServiceSpec, UpdateOrder};

    fn stack(services: &[(&str, &str, u32)]) -> StackSpec {
        StackSpec {
            services: services
                .iter()
                .map(|(n, image, replicas)| {
                    let mut s = ServiceSpec {
                        image: Some(image.to_string()),
                        replicas: *replicas,
                        ..ServiceSpec::default()
                    };
                    s.update.order = UpdateOrder::StartFirst;
                    s.update.parallelism = Parallelism::Count(2);
                    (n.to_string(), s)
                })
                .collect(),
            batches: Vec::new(),
            values: Default::default(),
        }
    }

    #[test]
    fn each_service_says_whether_its_instances_are_replaced_and_how() {
        let old = stack(&[
            ("api", "api:1", 2),
            ("db", "db:1", 1),
            ("old", "o:1", 1),
            ("web", "demo:1", 2),
        ]);
        let new = stack(&[
            ("api", "api:1", 3),
            ("db", "db:1", 1),
            ("web", "demo:2", 2),
            ("worker", "w:1", 1),
        ]);
        let diffs = diff::compare(&old, &new);
        assert_eq!(
            lines(&diffs, &new, false),
            [
                "~ api: replicas 2→3 (scaled, instances kept)",
                "- old",
                "~ web: image demo:1→demo:2 (rolling update, start-first, 2 at a time)",
                "+ worker",
            ]
        );
        assert!(lines(&diffs, &new, true).contains(&"= db".to_string()));
    }
}
