//! `skiff env …`: environments as objects — create, list, values, override files, down,
//! remove, clone, and `env up` (= `up -n`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use skiff_client::blocking::Client;
use skiff_client::{CloneEnv, EnvView, NewEnv, StackFilter, ValuesChange};
use skiff_model::{EnvState, MAX_OVERRIDE_BYTES, OverrideFile, human_duration};

use super::up::UpArgs;
use crate::output::{self, OutputArg};

/// Left this long or less before it expires, an environment is marked in `env ls`.
const SOON_MS: u64 = 3_600_000;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Create an environment: `skiff env create alice --from staging --ttl 72h --idle 24h`.
    Create {
        name: String,
        /// Copy this environment's values and override files.
        #[arg(long, value_name = "ENV")]
        from: Option<String>,
        /// Down it this long after it became active (`72h`).
        #[arg(long, value_name = "DURATION")]
        ttl: Option<skiff_spec::units::Duration>,
        /// Down it after this long without a request through an ingress or service port.
        #[arg(long, value_name = "DURATION")]
        idle: Option<skiff_spec::units::Duration>,
        /// Compose override file kept with it, merged after the user's files (repeatable).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// List environments: stacks, instances ready/desired, owner, age, last request, expiry.
    Ls {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Set values used for the interpolation of every stack deployed into it.
    Set {
        name: String,
        /// `KEY=VALUE` (repeatable).
        #[arg(required = true, value_name = "KEY=VALUE")]
        values: Vec<String>,
    },
    /// Remove values.
    Unset {
        name: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Show an environment: values, override files, stacks.
    Show {
        name: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Take every stack of the environment down (history and data kept) and wait.
    Down { name: String },
    /// Remove the environment: its stacks' releases, controls and instances, and its record.
    Rm {
        name: String,
        /// Do not ask (required when stdin is not a terminal).
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Copy an environment: values, override files, and every stack it runs, deployed from
    /// the same releases; `--with-data` copies its volumes first (each service frozen or
    /// stopped for the copy, as its `x-skiff.seed.consistency` says).
    Clone {
        from: String,
        to: String,
        /// Copy the volumes too, before the clone's instances start.
        #[arg(long)]
        with_data: bool,
    },
    /// Deploy into the environment: `skiff env up alice -f compose.yaml` = `skiff up -n alice`.
    Up {
        name: String,
        #[command(flatten)]
        up: UpArgs,
    },
}

pub fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Create {
            name,
            from,
            ttl,
            idle,
            files,
        } => create(client, &name, from, ttl, idle, &files),
        Command::Ls { output } => ls(client, output),
        Command::Set { name, values } => set(client, &name, &values),
        Command::Unset { name, keys } => {
            let change = ValuesChange {
                set: Default::default(),
                unset: keys,
            };
            client.change_values(&name, &change)?;
            println!("environment {name}: values unset");
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { name, output } => show(client, &name, output),
        Command::Down { name } => down(client, &name),
        Command::Rm { name, yes } => rm(client, &name, yes),
        Command::Clone {
            from,
            to,
            with_data,
        } => clone(client, &from, &to, with_data),
        Command::Up { name, up } => super::up::up(up, client, &name),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(d: Option<skiff_spec::units::Duration>) -> Option<u64> {
    d.map(|d| d.0.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// Reads override files as the control plane keeps them (named by their file names).
fn read_overrides(files: &[PathBuf]) -> anyhow::Result<Vec<OverrideFile>> {
    let loader = crate::fs_loader::FsLoader {
        max_bytes: MAX_OVERRIDE_BYTES,
    };
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        use skiff_spec::loader::Loader;
        let content = loader
            .read(f)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        if content.len() > MAX_OVERRIDE_BYTES {
            anyhow::bail!("{}: larger than {MAX_OVERRIDE_BYTES} bytes", f.display());
        }
        let base = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = if base.is_empty() || out.iter().any(|o: &OverrideFile| o.name == base) {
            format!("override-{}.yaml", i + 1)
        } else {
            base
        };
        out.push(OverrideFile { name, content });
    }
    Ok(out)
}

fn create(
    client: &Client,
    name: &str,
    from: Option<String>,
    ttl: Option<skiff_spec::units::Duration>,
    idle: Option<skiff_spec::units::Duration>,
    files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    skiff_model::check_env_name(name)?;
    let new = NewEnv {
        from,
        ttl_ms: ms(ttl),
        idle_ms: ms(idle),
        values: Default::default(),
        overrides: read_overrides(files)?,
        author: Some(skiff_client::author::local()),
    };
    let v = client.create_env(name, &new)?;
    let mut line = format!("environment {name} created");
    if let Some(from) = &v.env.from {
        line += &format!(
            " from {from} ({} values, {} override files)",
            v.env.values.len(),
            v.env.overrides.len()
        );
    }
    if let Some(at) = v.expires_ms {
        line += &format!("; expires {}", relative(at, now_ms()));
    }
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

fn set(client: &Client, name: &str, pairs: &[String]) -> anyhow::Result<ExitCode> {
    let mut change = ValuesChange::default();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            anyhow::bail!("{p:?}: expected KEY=VALUE");
        };
        skiff_model::check_value(k, v).map_err(anyhow::Error::msg)?;
        change.set.insert(k.to_string(), v.to_string());
    }
    client.change_values(name, &change)?;
    println!(
        "environment {name}: {} set (used by the next up of each stack)",
        change.set.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// `in 2h`, `3m ago`, `now`.
fn relative(at_ms: u64, now_ms: u64) -> String {
    if at_ms > now_ms {
        // Rounded up: a deadline 24 h away read a moment later is still "in 24h".
        format!("in {}", short(at_ms - now_ms + 999))
    } else if now_ms - at_ms < 1000 {
        "now".into()
    } else {
        format!("{} ago", short(now_ms - at_ms))
    }
}

/// One unit, as kubectl's AGE: `90s`, `12m`, `36h`, `5d` (a unit from twice its size).
fn short(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The EXPIRES column: when, marked when it is near (or due).
fn expires(v: &EnvView, now: u64) -> String {
    if v.env.state == EnvState::Down {
        return match &v.env.down_reason {
            Some(why) => format!("down: {why}"),
            None => "down".into(),
        };
    }
    let Some(at) = v.expires_ms else {
        return "-".into();
    };
    let by = v.expires_by.as_deref().unwrap_or("");
    let text = format!("{} ({by})", relative(at, now));
    if at.saturating_sub(now) <= SOON_MS {
        let mark = format!("! {text}");
        if output::stdout_color() {
            format!("\x1b[1;33m{mark}\x1b[0m")
        } else {
            mark
        }
    } else {
        text
    }
}

fn ls(client: &Client, out: OutputArg) -> anyhow::Result<ExitCode> {
    let envs = client.envs()?;
    let now = now_ms();
    output::print(out.format, &envs, || {
        output::print_table(
            &[
                "NAME",
                "STACKS",
                "READY",
                "OWNER",
                "AGE",
                "LAST REQUEST",
                "EXPIRES",
            ],
            envs.iter()
                .map(|v| {
                    vec![
                        v.env.name.clone(),
                        v.stacks
                            .iter()
                            .filter(|s| s.current.is_some())
                            .count()
                            .to_string(),
                        format!("{}/{}", v.ready, v.desired),
                        if v.implicit {
                            "-".into()
                        } else {
                            v.env.owner.user.clone()
                        },
                        if v.implicit {
                            "-".into()
                        } else {
                            short(now.saturating_sub(v.env.created_ms))
                        },
                        v.last_request_ms
                            .map_or_else(|| "-".into(), |at| relative(at, now)),
                        expires(v, now),
                    ]
                })
                .collect(),
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

fn show(client: &Client, name: &str, out: OutputArg) -> anyhow::Result<ExitCode> {
    let Some(v) = client.env(name)? else {
        anyhow::bail!("no environment {name}");
    };
    let now = now_ms();
    output::print(out.format, &v, || {
        let e = &v.env;
        println!("name:     {}", e.name);
        if !v.implicit {
            println!("owner:    {}", e.owner);
            println!("created:  {}", relative(e.created_ms, now));
        }
        if let Some(from) = &e.from {
            println!("from:     {from}");
        }
        println!("state:    {}", e.state.as_str());
        if let Some(t) = e.ttl_ms {
            println!("ttl:      {}", human_duration(t));
        }
        if let Some(i) = e.idle_ms {
            println!("idle:     {}", human_duration(i));
        }
        println!("expires:  {}", expires(&v, now));
        println!(
            "requests: {}",
            v.last_request_ms.map_or_else(
                || "none yet".into(),
                |at| format!("last {}", relative(at, now))
            )
        );
        println!("ready:    {}/{}", v.ready, v.desired);
        println!("values:");
        for (k, val) in &e.values {
            println!("  {k}={val}");
        }
        println!("overrides:");
        for f in &e.overrides {
            println!("  env:{}/{} ({} bytes)", e.name, f.name, f.content.len());
        }
        println!("stacks:");
        for s in &v.stacks {
            match s.current {
                Some(n) => println!("  {} (release {n})", s.stack),
                None => println!("  {} (down)", s.stack),
            }
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Waits until no instance of `env` is left (at most two minutes).
fn wait_stopped(client: &Client, env: &str) -> anyhow::Result<()> {
    let filter = StackFilter {
        env: Some(env.to_string()),
        stack: None,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = client
            .instances(&filter)?
            .into_iter()
            .filter(|i| {
                !matches!(
                    i.state,
                    skiff_model::InstanceState::Stopped
                        | skiff_model::InstanceState::Exited
                        | skiff_model::InstanceState::Failed
                )
            })
            .count();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{left} instances of environment {env} still stopping");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn down(client: &Client, name: &str) -> anyhow::Result<ExitCode> {
    let v = client.down_env(name)?;
    wait_stopped(client, name)?;
    println!(
        "environment {name}: down ({} stacks; releases and data kept, skiff up -n {name} \
         brings it back)",
        v.stacks.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn rm(client: &Client, name: &str, yes: bool) -> anyhow::Result<ExitCode> {
    if !yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "refusing to remove environment {name} without --yes: stdin is not a terminal"
            );
        }
        let Some(v) = client.env(name)? else {
            anyhow::bail!("no environment {name}");
        };
        eprint!(
            "remove environment {name} ({} stacks, their releases and instances)? [y/N] ",
            v.stacks.len()
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("not removed");
            return Ok(ExitCode::FAILURE);
        }
    }
    client.down_env(name)?;
    wait_stopped(client, name)?;
    client.remove_env(name)?;
    println!("environment {name} removed");
    Ok(ExitCode::SUCCESS)
}

fn clone(client: &Client, from: &str, to: &str, with_data: bool) -> anyhow::Result<ExitCode> {
    skiff_model::check_env_name(to)?;
    let req = CloneEnv {
        to: to.to_string(),
        author: Some(skiff_client::author::local()),
        with_data,
    };
    let done = client.clone_env(from, &req)?;
    for v in done.data.iter().flat_map(|d| &d.volumes) {
        println!(
            "volume {} of {}: {:.1} MB by {} on node {} ({:.1} MB written, held {} ms)",
            v.volume,
            v.stack,
            v.bytes as f64 / 1e6,
            match v.method {
                skiff_client::CopyMethod::Reflink => "reflink",
                skiff_client::CopyMethod::Copy => "copy",
            },
            v.node,
            v.written as f64 / 1e6,
            v.ms
        );
    }
    println!(
        "environment {to} cloned from {from}: {} values, {} override files, {} stacks deployed",
        done.env.env.values.len(),
        done.env.env.overrides.len(),
        done.releases.len()
    );
    for r in &done.releases {
        println!("  {} release {}", r.stack.stack, r.number);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_like_kubectl() {
        assert_eq!(relative(10_000 + 7_200_000, 10_000), "in 2h");
        assert_eq!(relative(10_000 + 86_400_000, 10_005), "in 24h");
        assert_eq!(relative(10_000, 10_000 + 180_000), "3m ago");
        assert_eq!(relative(10_000, 10_500), "now");
        assert_eq!(short(3 * 86_400_000), "3d");
    }
}
