//! `skiff up` and `skiff down`: submit a stack as a new release, or take it down, and follow
//! progress until it is done.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use skiff_api::{NewRelease, StackView};
use skiff_model::{Instance, InstanceState, Release};
use skiff_spec::{render, runtime};

use super::project::ProjectArgs;
use crate::client::Client;

#[derive(clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    project: ProjectArgs,
    /// Return once the release is recorded, without waiting for health.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// Restarts after which an instance that never became healthy fails `up` (a crash loop,
/// or a start that cannot succeed: a missing image, a bad command).
const CRASH_LOOP: u32 = 3;

pub fn up(args: UpArgs, client: &Client, env: &str) -> anyhow::Result<ExitCode> {
    let loaded = match args.project.load()? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    crate::output::print_diagnostics(&[], &loaded.warnings);
    let spec = runtime::stack_spec(&loaded.project);
    let wanted: BTreeMap<String, u32> = spec
        .services
        .iter()
        .map(|(n, s)| (n.clone(), s.replicas))
        .collect();
    let source = render::to_yaml(&loaded.project).map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let release: Release = client.post(
        &format!("/v1/envs/{env}/stacks/{}/releases", loaded.name),
        &NewRelease { spec, source },
    )?;
    println!(
        "stack {} (env {env}): release {} recorded",
        loaded.name, release.number
    );
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = started + Duration::from_secs(args.timeout);
    let mut last_lines: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let instances: Vec<Instance> =
            client.get(&format!("/v1/instances?env={env}&stack={}", loaded.name))?;
        let mut all_ready = true;
        let mut failed = Vec::new();
        for (svc, n) in &wanted {
            let mine: Vec<&Instance> = instances
                .iter()
                .filter(|i| &i.id.service == svc && i.id.index <= *n && i.release == release.number)
                .collect();
            let healthy = mine
                .iter()
                .filter(|i| i.state == InstanceState::Healthy)
                .count();
            for i in &mine {
                let reason = i.reason.clone().unwrap_or_default();
                if i.state == InstanceState::Failed {
                    failed.push(format!("{}: {reason}", i.id.short()));
                } else if i.state != InstanceState::Healthy && i.restarts >= CRASH_LOOP {
                    // Waiting out the timeout would only hide the cause.
                    failed.push(format!(
                        "{}: restarted {} times without becoming healthy; last: {reason} \
                         (see `skiff logs {svc}`)",
                        i.id.short(),
                        i.restarts
                    ));
                }
            }
            all_ready &= healthy as u32 == *n;
            let line = format!("{svc:<20} {healthy}/{n} healthy");
            if last_lines.get(svc) != Some(&line) {
                println!("  {line}");
                last_lines.insert(svc.clone(), line);
            }
        }
        if all_ready {
            let total: u32 = wanted.values().sum();
            println!(
                "stack {} release {}: {total} instances healthy in {:.2}s",
                loaded.name,
                release.number,
                started.elapsed().as_secs_f64()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if !failed.is_empty() {
            for f in failed {
                crate::output::print_error(&f);
            }
            anyhow::bail!("stack {} did not become healthy", loaded.name);
        }
        if Instant::now() > deadline {
            let pending: Vec<String> = instances
                .iter()
                .filter(|i| i.state != InstanceState::Healthy)
                .map(|i| {
                    format!(
                        "{} {:?}{}",
                        i.id.short(),
                        i.state,
                        i.reason
                            .as_ref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            anyhow::bail!(
                "timed out after {}s; not healthy: {}",
                args.timeout,
                if pending.is_empty() {
                    "instances not started yet (waiting for dependencies?)".into()
                } else {
                    pending.join(", ")
                }
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[derive(clap::Args)]
pub struct DownArgs {
    /// Stack to take down (default: the project's name, from the compose files).
    stack: Option<String>,
    #[command(flatten)]
    project: ProjectArgs,
}

pub fn down(args: DownArgs, client: &Client, env: &str) -> anyhow::Result<ExitCode> {
    let stack = match args.stack {
        Some(s) => s,
        None => match args.project.load()? {
            Ok(p) => p.name,
            Err(code) => return Ok(code),
        },
    };
    let _: StackView = client.delete(&format!("/v1/envs/{env}/stacks/{stack}"))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left: Vec<Instance> = client.get(&format!("/v1/instances?env={env}&stack={stack}"))?;
        if left.is_empty() {
            println!("stack {stack} (env {env}): down");
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            anyhow::bail!("{} instances still stopping", left.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
