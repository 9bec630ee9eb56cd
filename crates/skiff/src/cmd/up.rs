//! `skiff up` and `skiff down`: submit a stack as a new release, or take it down, and follow
//! progress until it is done.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use skiff_client::blocking::Client;
use skiff_client::{NewRelease, StackFilter};

use super::project::ProjectArgs;
use super::stack_key;
use super::wait;

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
    let started = Instant::now();
    let request = NewRelease {
        spec: loaded.spec,
        source: loaded.source,
        author: Some(skiff_client::author::local()),
    };
    let (release, created) = client.create_release(&stack_key(env, &loaded.name)?, &request)?;
    if created {
        println!(
            "stack {} (env {env}): release {} recorded",
            loaded.name, release.number
        );
    } else {
        println!(
            "stack {} (env {env}): nothing changed since release {}; no release recorded",
            loaded.name, release.number
        );
    }
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    wait::until_ready_and_report(client, env, &loaded.name, &release, args.timeout, started)?;
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
