//! `skiff rollout status STACK [SERVICE]`: each service's last rollout — its release, state,
//! progress and why it paused or failed.

use std::process::ExitCode;

use skiff_client::blocking::Client;

use super::stack_key;
use crate::output::{self, OutputArg};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Each service's last rollout: release, state, replaced/total, in flight, failures.
    Status {
        stack: String,
        /// Only this service.
        service: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
}

pub fn run(args: Args, client: &Client, env: &str) -> anyhow::Result<ExitCode> {
    let Command::Status {
        stack,
        service,
        output: out,
    } = args.command;
    let mut rollouts = client.rollouts(&stack_key(env, &stack)?)?;
    if let Some(svc) = &service {
        rollouts.retain(|r| &r.service == svc);
        if rollouts.is_empty() {
            anyhow::bail!("{svc} of stack {stack} has not rolled out a change yet");
        }
    }
    output::print(out.format, &rollouts, || {
        let rows = rollouts
            .iter()
            .map(|r| {
                vec![
                    r.service.clone(),
                    match r.from {
                        Some(from) => format!("{from} -> {}", r.release),
                        None => r.release.to_string(),
                    },
                    if r.rollback {
                        format!("{} (rollback)", r.state)
                    } else {
                        r.state.clone()
                    },
                    format!("{}/{}", r.replaced, r.total),
                    r.in_flight.to_string(),
                    r.watching.to_string(),
                    r.failed.to_string(),
                    r.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        output::print_table(
            &[
                "SERVICE",
                "RELEASE",
                "STATE",
                "REPLACED",
                "IN FLIGHT",
                "MONITORED",
                "FAILED",
                "REASON",
            ],
            rows,
        );
    })?;
    Ok(ExitCode::SUCCESS)
}
