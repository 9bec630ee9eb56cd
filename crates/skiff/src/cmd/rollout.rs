//! `skiff rollout status|pause|resume|promote|abort STACK [SERVICE]`: each service's last
//! rollout — its release, state, progress, canary step and weight, the ingress's figures of
//! both releases, and why it paused or failed — and steering it.

use std::process::ExitCode;
use std::time::Instant;

use skiff_client::RollbackRequest;
use skiff_client::blocking::Client;

use super::stack_key;
use super::wait;
use crate::output::{self, OutputArg};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Each service's last rollout: release, state, replaced/total, in flight, failures;
    /// canary and blue-green: step, weight and the ingress's figures of both releases.
    Status {
        stack: String,
        /// Only this service.
        service: Option<String>,
        /// Watch: print again every second until every rollout is over (or Ctrl-C).
        #[arg(short = 'w', long)]
        watch: bool,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Pause running rollouts: nothing more is replaced until `resume`.
    Pause {
        stack: String,
        /// Only this service (default: every service whose rollout runs).
        service: Option<String>,
    },
    /// Resume paused rollouts (failures that paused one are forgiven; its events keep them).
    Resume {
        stack: String,
        /// Only this service (default: every service whose rollout is paused).
        service: Option<String>,
    },
    /// Canary: pass the current step now; blue-green: switch now (after the switch: stop the
    /// previous set now).
    Promote {
        stack: String,
        /// Only this service (default: every service whose rollout runs or is paused).
        service: Option<String>,
    },
    /// Every request back to the release before, the new instances stopped, and the stack
    /// rolled back to that release.
    Abort {
        stack: String,
        /// Only this service (default: every service whose rollout runs or is paused).
        service: Option<String>,
    },
}

pub fn run(args: Args, client: &Client, env: &str) -> anyhow::Result<ExitCode> {
    let (stack, service, watch, out) = match args.command {
        Command::Status {
            stack,
            service,
            watch,
            output,
        } => (stack, service, watch, output),
        Command::Pause { stack, service } => return steer(client, env, &stack, service, "pause"),
        Command::Resume { stack, service } => {
            return steer(client, env, &stack, service, "resume");
        }
        Command::Promote { stack, service } => {
            return steer(client, env, &stack, service, "promote");
        }
        Command::Abort { stack, service } => return steer(client, env, &stack, service, "abort"),
    };
    loop {
        let mut rollouts = client.rollouts(&stack_key(env, &stack)?)?;
        if let Some(svc) = &service {
            rollouts.retain(|r| &r.service == svc);
            if rollouts.is_empty() {
                anyhow::bail!("{svc} of stack {stack} has not rolled out a change yet");
            }
        }
        print_status(&out, &rollouts)?;
        let open = rollouts
            .iter()
            .any(|r| r.state == "running" || r.state == "paused");
        if !watch || !open {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        println!();
    }
}

fn print_status(out: &OutputArg, rollouts: &[skiff_client::RolloutView]) -> anyhow::Result<()> {
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
        let traffic: Vec<Vec<String>> = rollouts
            .iter()
            .filter_map(|r| {
                let t = r.traffic.as_ref()?;
                let figures = |f: &skiff_client::ReleaseFigures| {
                    let rate = if f.requests == 0 {
                        0.0
                    } else {
                        100.0 * f.errors as f64 / f.requests as f64
                    };
                    format!(
                        "{}: {} req, {:.2}% 5xx, p99 {}",
                        f.release,
                        f.requests,
                        rate,
                        f.p99_ms.map_or("-".into(), |p| format!("≤{p}ms"))
                    )
                };
                Some(vec![
                    r.service.clone(),
                    t.strategy.clone(),
                    format!("{}/{}", t.step, t.steps),
                    format!("{}%", t.weight),
                    figures(&t.new),
                    figures(&t.stable),
                    t.verdict.clone().unwrap_or_default(),
                ])
            })
            .collect();
        if !traffic.is_empty() {
            println!();
            output::print_table(
                &[
                    "SERVICE", "STRATEGY", "STEP", "WEIGHT", "NEW", "STABLE", "ANALYSIS",
                ],
                traffic,
            );
        }
    })?;
    Ok(())
}

/// Pauses or resumes one service's rollout, or every one in the state the action applies to.
fn steer(
    client: &Client,
    env: &str,
    stack: &str,
    service: Option<String>,
    action: &str,
) -> anyhow::Result<ExitCode> {
    let key = stack_key(env, stack)?;
    let services = match service {
        Some(s) => vec![s],
        None => {
            let from: &[&str] = match action {
                "pause" => &["running"],
                "resume" => &["paused"],
                _ => &["running", "paused"],
            };
            let services: Vec<String> = client
                .rollouts(&key)?
                .into_iter()
                .filter(|r| from.contains(&r.state.as_str()))
                .filter(|r| action != "promote" || r.traffic.is_some())
                .map(|r| r.service)
                .collect();
            if services.is_empty() {
                anyhow::bail!(
                    "stack {stack} has no {} rollout to {action}",
                    from.join(" or ")
                );
            }
            services
        }
    };
    for s in services {
        let r = client.steer_rollout(&key, &s, action)?;
        println!("{}: release {} {}", r.service, r.release, r.state);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    stack: String,
    /// The release to run again (default: the one before the current).
    #[arg(long)]
    to: Option<u64>,
    /// Do not wait for the instances.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// `skiff rollback STACK [--to N]`: release N's spec as a new release, its changed services
/// replaced by their `rollback_config`; waits like `up`.
pub fn rollback(args: RollbackArgs, client: &Client, env: &str) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let request = RollbackRequest {
        to: args.to,
        author: Some(skiff_client::author::local()),
    };
    let release = client.rollback(&stack_key(env, &args.stack)?, &request)?;
    println!(
        "stack {} (env {env}): release {} recorded (rolling back)",
        args.stack, release.number
    );
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    wait::until_ready_and_report(client, env, &args.stack, &release, args.timeout, started)?;
    Ok(ExitCode::SUCCESS)
}
