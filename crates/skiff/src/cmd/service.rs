//! Commands on one service of a running stack: `skiff status`, `stop`, `start`, `restart`,
//! `scale`. A service is named alone; `--stack` picks the stack only when several stacks of
//! the environment have a service of that name.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use skiff_client::blocking::Client;
use skiff_client::{ScaleRequest, ServiceAction, ServiceStatus, StackFilter};
use skiff_model::{Instance, InstanceId, InstanceState, Release};

use super::stack_key;
use super::wait::{self, Wait};
use crate::output::{self, OutputArg};

/// The current release of `stack` in `env`.
pub fn current_release(client: &Client, env: &str, stack: &str) -> anyhow::Result<Release> {
    let stacks = client.stacks()?;
    let current = stacks
        .iter()
        .find(|st| st.env == env && st.stack == stack)
        .and_then(|st| st.current)
        .ok_or_else(|| anyhow::anyhow!("no running stack {stack} in env {env}"))?;
    Ok(client.release(&stack_key(env, stack)?, current)?)
}

/// The stack of `env` whose current release has `service` (or `stack` when given).
pub fn stack_of_service(
    client: &Client,
    env: &str,
    service: &str,
    stack: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(s) = stack {
        return Ok(s.to_string());
    }
    let stacks = client.stacks()?;
    let mut with_service = Vec::new();
    for st in stacks.iter().filter(|st| st.env == env) {
        let Some(current) = st.current else { continue };
        let rel = client.release(&stack_key(env, &st.stack)?, current)?;
        if rel.spec.services.contains_key(service) {
            with_service.push(st.stack.clone());
        }
    }
    match with_service.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!("no running stack in env {env} has a service {service:?}"),
        many => anyhow::bail!(
            "several stacks have {service:?} ({}): pick one with --stack",
            many.join(", ")
        ),
    }
}

/// Instances of `service` in `stack`, by index.
fn instances(
    client: &Client,
    env: &str,
    stack: &str,
    service: &str,
) -> anyhow::Result<Vec<Instance>> {
    let all = client.instances(&StackFilter {
        env: Some(env.to_string()),
        stack: Some(stack.to_string()),
    })?;
    let mut mine: Vec<Instance> = all
        .into_iter()
        .filter(|i| i.id.service == service)
        .collect();
    mine.sort_by_key(|i| i.id.index);
    Ok(mine)
}

/// Polls until `done` holds for the service's instances; the error lists the instances.
pub fn wait_for(
    client: &Client,
    env: &str,
    stack: &str,
    service: &str,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&[Instance]) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mine = instances(client, env, stack, service)?;
        if done(&mine) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let states: Vec<String> = mine
                .iter()
                .map(|i| {
                    format!(
                        "{} {}{}",
                        i.id.short(),
                        state_name(i.state),
                        i.reason
                            .as_ref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            anyhow::bail!(
                "{service}: not {what} after {}s: {}",
                timeout.as_secs(),
                if states.is_empty() {
                    "no instances".to_string()
                } else {
                    states.join(", ")
                }
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The instance `<service>-<index>` of a stack, checked as the server checks it.
fn instance_id(env: &str, stack: &str, instance: &str) -> anyhow::Result<InstanceId> {
    Ok(format!("{}/{instance}", stack_key(env, stack)?).parse()?)
}

pub fn state_name(s: InstanceState) -> String {
    format!("{s:?}").to_lowercase()
}

#[derive(clap::Args)]
pub struct ControlArgs {
    /// One or more services.
    #[arg(required = true)]
    services: Vec<String>,
    /// The stack (needed when several stacks of the environment have the service).
    #[arg(long)]
    stack: Option<String>,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// `skiff stop|start|restart SERVICE...`: records the request durably, then waits until the
/// instances are gone (stop) or all healthy again (start, restart: every instance replaced).
pub fn control(
    args: ControlArgs,
    action: ServiceAction,
    client: &Client,
    env: &str,
) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.timeout);
    for service in &args.services {
        let stack = stack_of_service(client, env, service, args.stack.as_deref())?;
        let before: BTreeSet<Option<u32>> = instances(client, env, &stack, service)?
            .iter()
            .map(|i| i.pid)
            .collect();
        client.control_service(&stack_key(env, &stack)?, service, action)?;
        let started = Instant::now();
        match action {
            ServiceAction::Stop => {
                wait_for(client, env, &stack, service, timeout, "stopped", |m| {
                    m.is_empty()
                })?;
                println!("{service}: stopped");
            }
            ServiceAction::Start | ServiceAction::Restart => {
                let release = current_release(client, env, &stack)?;
                let restart = action == ServiceAction::Restart;
                let wait = Wait {
                    env,
                    stack: &stack,
                    release: &release,
                    services: std::slice::from_ref(service),
                    timeout,
                    progress: false,
                };
                wait::until_ready(client, &wait, |i| !restart || !before.contains(&i.pid))?;
                let replicas = release.spec.services.get(service).map_or(0, |s| s.replicas);
                println!(
                    "{service}: {replicas} instances healthy in {:.2}s",
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct StatusArgs {
    service: String,
    /// The stack (needed when several stacks of the environment have the service).
    #[arg(long)]
    stack: Option<String>,
    #[command(flatten)]
    output: OutputArg,
}

/// `skiff status SERVICE`: the service's spec in brief and each instance's state and usage.
pub fn status(args: StatusArgs, client: &Client, env: &str) -> anyhow::Result<ExitCode> {
    let stack = stack_of_service(client, env, &args.service, args.stack.as_deref())?;
    let st = client.service_status(&stack_key(env, &stack)?, &args.service)?;
    output::print(args.output.format, &st, || print_status(&st))?;
    Ok(ExitCode::SUCCESS)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}MiB", bytes as f64 / (1 << 20) as f64)
}

fn print_status(st: &ServiceStatus) {
    let healthy = st
        .instances
        .iter()
        .filter(|i| i.instance.state == InstanceState::Healthy)
        .count();
    let spec = &st.spec;
    let mut lines = vec![
        ("Service", st.service.clone()),
        ("Stack", format!("{} (env {})", st.stack, st.env)),
        ("Release", st.release.to_string()),
        (
            "State",
            if st.stopped {
                format!("stopped (skiff start {} runs it)", st.service)
            } else {
                format!("{healthy}/{} healthy", spec.replicas)
            },
        ),
        ("Command", shell_words::join(spec.process_argv())),
    ];
    if st.generation > 0 {
        lines.push(("Restarts", format!("{} by hand", st.generation)));
    }
    let limits = &spec.limits;
    let mut l = Vec::new();
    if let Some(m) = limits.memory_bytes {
        l.push(format!("memory {}", mib(m)));
    }
    if let Some(c) = limits.cpus {
        l.push(format!("cpus {c}"));
    }
    if let Some(p) = limits.pids {
        l.push(format!("pids {p}"));
    }
    if !l.is_empty() {
        lines.push(("Limits", l.join(", ")));
    }
    if let Some(h) = &spec.health {
        lines.push((
            "Health",
            format!(
                "{} every {:?}, {} retries",
                shell_words::join(&h.test),
                h.interval,
                h.retries
            ),
        ));
    }
    if !spec.depends_on.is_empty() {
        let deps: Vec<String> = spec
            .depends_on
            .iter()
            .map(|(d, w)| format!("{d} ({w:?})").to_lowercase())
            .collect();
        lines.push(("Depends on", deps.join(", ")));
    }
    if let Some(u) = &st.unplaced {
        lines.push((
            "Unplaced",
            format!("{} instance(s) fit no node: {}", u.missing, u.reason),
        ));
    }
    for (k, v) in lines {
        println!("{:<11} {v}", format!("{k}:"));
    }
    if st.instances.is_empty() {
        return;
    }
    println!();
    let rows = st
        .instances
        .iter()
        .map(|i| {
            let inst = &i.instance;
            let ports: Vec<String> = inst
                .ports
                .iter()
                .map(|(n, p)| format!("{n}->{p}"))
                .collect();
            let mem = i.stats.as_ref().and_then(|s| s.memory_bytes).map_or_else(
                || "-".to_string(),
                |m| match i.stats.as_ref().and_then(|s| s.memory_limit_bytes) {
                    Some(l) => format!("{} / {}", mib(m), mib(l)),
                    None => mib(m),
                },
            );
            // As `docker stats`: 100% is one full CPU.
            let cpu = i
                .stats
                .as_ref()
                .and_then(|s| s.cpu_millis)
                .map_or("-".into(), |m| format!("{:.1}%", m as f64 / 10.0));
            vec![
                inst.id.short(),
                state_name(inst.state),
                inst.pid.map_or("-".into(), |p| p.to_string()),
                ports.join(","),
                cpu,
                mem,
                i.stats
                    .as_ref()
                    .and_then(|s| s.pids)
                    .map_or("-".into(), |p| p.to_string()),
                inst.restarts.to_string(),
                inst.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::print_table(
        &[
            "INSTANCE", "STATE", "PID", "PORTS", "CPU", "MEMORY", "PIDS", "RESTARTS", "REASON",
        ],
        rows,
    );
}

#[derive(clap::Args)]
pub struct ScaleArgs {
    /// SERVICE=N, e.g. web=5.
    target: String,
    /// The stack (needed when several stacks of the environment have the service).
    #[arg(long)]
    stack: Option<String>,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// `skiff scale SERVICE=N`: a new release with the replica count changed; instances that stay
/// keep running.
pub fn scale(args: ScaleArgs, client: &Client, env: &str) -> anyhow::Result<ExitCode> {
    let (service, n) = args
        .target
        .split_once('=')
        .and_then(|(s, n)| Some((s.to_string(), n.parse::<u32>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("expected SERVICE=N (e.g. web=5), got {:?}", args.target))?;
    let stack = stack_of_service(client, env, &service, args.stack.as_deref())?;
    let request = ScaleRequest {
        service: service.clone(),
        replicas: n,
        author: Some(skiff_client::author::local()),
    };
    let (release, created) = client.scale(&stack_key(env, &stack)?, &request)?;
    let timeout = Duration::from_secs(args.timeout);
    let wait = Wait {
        env,
        stack: &stack,
        release: &release,
        services: std::slice::from_ref(&service),
        timeout,
        progress: false,
    };
    wait::until_ready(client, &wait, |_| true)?;
    // Scaled down: until the surplus stopped. Counted, not by index: start-first rollouts
    // leave replicas under indexes above the count.
    wait_for(client, env, &stack, &service, timeout, "scaled", |m| {
        m.iter()
            .filter(|i| i.state != InstanceState::Stopped)
            .count()
            <= n as usize
    })?;
    if created {
        println!(
            "stack {stack} release {}: {service} scaled to {n}",
            release.number
        );
    } else {
        println!(
            "stack {stack}: {service} already has {n} replicas (release {}); no release recorded",
            release.number
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct ExecArgs {
    service: String,
    /// The instance (`--index 2` is `<service>-2`; default 1).
    #[arg(long, default_value_t = 1)]
    index: u32,
    /// The stack (needed when several stacks of the environment have the service).
    #[arg(long)]
    stack: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

/// `skiff exec SERVICE -- CMD...`: runs a command in an instance (inside its container, or
/// with a process's environment), prints its output and exits with its code.
pub fn exec(args: ExecArgs, client: &Client, env: &str) -> anyhow::Result<ExitCode> {
    let stack = stack_of_service(client, env, &args.service, args.stack.as_deref())?;
    let id = instance_id(env, &stack, &format!("{}-{}", args.service, args.index))?;
    let out = client.exec(&id, &args.cmd)?;
    print!("{}", out.output);
    Ok(ExitCode::from(out.exit_code.clamp(0, 255) as u8))
}

#[derive(clap::Args)]
pub struct KillArgs {
    service: String,
    /// The signal (SIGHUP, HUP, …).
    #[arg(short = 's', long, default_value = "SIGKILL")]
    signal: String,
    /// Only this instance (default: every instance of the service).
    #[arg(long)]
    index: Option<u32>,
    /// The stack (needed when several stacks of the environment have the service).
    #[arg(long)]
    stack: Option<String>,
}

/// `skiff kill [-s SIGNAL] SERVICE`: signals a service's instances, like `docker compose
/// kill` (`-s HUP` reloads without a restart; a killed instance restarts by its policy).
pub fn kill(args: KillArgs, client: &Client, env: &str) -> anyhow::Result<ExitCode> {
    let stack = stack_of_service(client, env, &args.service, args.stack.as_deref())?;
    let targets: Vec<Instance> = instances(client, env, &stack, &args.service)?
        .into_iter()
        .filter(|i| args.index.is_none_or(|n| i.id.index == n))
        .collect();
    if targets.is_empty() {
        anyhow::bail!("no running instance of {}", args.service);
    }
    for i in targets {
        client.signal(&i.id, &args.signal)?;
        println!("{}: {}", i.id.short(), args.signal);
    }
    Ok(ExitCode::SUCCESS)
}
