//! `skiff up` and `skiff down`: submit a stack as a new release, or take it down, and follow
//! progress until it is done.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use skiff_client::blocking::Client;
use skiff_client::{NewRelease, StackFilter};

use super::bringup::{self, CriticalPath};
use super::project::ProjectArgs;
use super::stack_key;
use super::wait::{self, BringupFailed};
use crate::output::{Format, OutputArg};

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
    /// `json`/`yaml`: one document at the end (the release, the critical path, or the
    /// failure) instead of progress lines.
    #[command(flatten)]
    output: OutputArg,
}

/// What `up -o json` prints.
#[derive(serde::Serialize)]
struct UpReport {
    env: String,
    stack: String,
    release: u64,
    /// Whether this `up` recorded the release (false: nothing changed).
    created: bool,
    /// Instances healthy (or one-shots completed) at the end.
    healthy: u32,
    /// The client's wall time from the request to all healthy.
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    critical_path: Option<CriticalPath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<bringup::Failure>,
}

pub fn up(args: UpArgs, client: &Client, env: &str) -> anyhow::Result<ExitCode> {
    let record = super::env_record(client, env)?;
    if record.is_none() && env != skiff_model::DEFAULT_ENV {
        super::stack_key(env, "x")?;
        println!(
            "environment {env} does not exist: up creates it, owned by {}",
            skiff_client::author::local().user
        );
    }
    let loaded = match args.project.release(record.as_ref())? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let people = args.output.format == Format::Table;
    let started = Instant::now();
    let key = stack_key(env, &loaded.name)?;
    // What happens from here on is this bring-up's (starts, readiness, failures).
    let mut events = bringup::Events::from_now(client, &key)?;
    let request = NewRelease {
        spec: loaded.spec,
        source: loaded.source,
        author: Some(skiff_client::author::local()),
    };
    let (release, created) = client.create_release(&key, &request)?;
    if people && created {
        println!(
            "stack {} (env {env}): release {} recorded",
            loaded.name, release.number
        );
    } else if people {
        println!(
            "stack {} (env {env}): nothing changed since release {}; no release recorded",
            loaded.name, release.number
        );
    }
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let healthy: u32 = release.spec.services.values().map(|s| s.replicas).sum();
    let mut report = UpReport {
        env: env.to_string(),
        stack: loaded.name.clone(),
        release: release.number,
        created,
        healthy,
        seconds: 0.0,
        critical_path: None,
        failure: None,
    };
    let wait = wait::Wait {
        env,
        stack: &loaded.name,
        release: &release,
        services: &[],
        timeout: Duration::from_secs(args.timeout),
        progress: people,
    };
    if let Err(e) = wait::until_ready_following(client, &wait, |_| true, Some(&mut events)) {
        // Anything but a service's failure (a timeout, the server) is reported as it is.
        let failed = e.downcast::<BringupFailed>()?;
        let failure = *failed.0;
        if people {
            bringup::print_failure(&failure, &loaded.name);
        } else {
            report.healthy = 0;
            report.seconds = started.elapsed().as_secs_f64();
            report.failure = Some(failure.clone());
            crate::output::print(args.output.format, &report, || {})?;
        }
        anyhow::bail!(
            "stack {} did not come up: service {} failed",
            loaded.name,
            failure.service
        );
    }
    report.seconds = started.elapsed().as_secs_f64();
    // The ready events of the last instances travel with their state: read until every
    // service started in this bring-up has its ready (or completed) time.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        events.poll(client)?;
        if bringup::all_timed(&release.spec, &events.seen) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let since = if created {
        release.created_ms
    } else {
        bringup::first_start(&events.seen).unwrap_or(release.created_ms)
    };
    let cp = bringup::critical_path(&release.spec, &events.seen, since);
    if people {
        println!(
            "stack {} release {}: {healthy} instances healthy in {:.2}s",
            loaded.name, release.number, report.seconds
        );
        bringup::print_critical_path(&cp);
    } else {
        report.critical_path = Some(cp);
        crate::output::print(args.output.format, &report, || {})?;
    }
    Ok(ExitCode::SUCCESS)
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
    client.down(&stack_key(env, &stack)?)?;
    let filter = StackFilter {
        env: Some(env.to_string()),
        stack: Some(stack.clone()),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = client.instances(&filter)?;
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
