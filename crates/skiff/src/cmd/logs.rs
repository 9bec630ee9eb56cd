//! `skiff logs SERVICE`: the log records of a service's instances, like `docker compose logs`.

use std::process::ExitCode;
use std::sync::Mutex;

use skiff_client::blocking::Client;
use skiff_client::{LogQuery, StackFilter};
use skiff_driver_process::parse_log_line;
use skiff_model::Instance;

#[derive(clap::Args)]
pub struct Args {
    service: String,
    /// The stack (needed when several stacks of the environment have this service).
    #[arg(long)]
    stack: Option<String>,
    /// Only this instance (`--index 2` is `<service>-2`).
    #[arg(long)]
    index: Option<u32>,
    /// Keep printing new lines.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only lines from this long ago on, e.g. 10m, 30s, 2h.
    #[arg(long, value_parser = parse_since)]
    since: Option<u64>,
    /// Show each line's time.
    #[arg(short = 't', long)]
    timestamps: bool,
}

/// A duration back from now, as Unix milliseconds.
fn parse_since(s: &str) -> Result<u64, String> {
    let d: skiff_spec::units::Duration = s.parse()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    Ok(now.saturating_sub(d.0).as_millis() as u64)
}

pub fn run(args: Args, client: &Client, env: &str) -> anyhow::Result<ExitCode> {
    let all = client.instances(&StackFilter {
        env: Some(env.to_string()),
        stack: None,
    })?;
    let mut mine: Vec<&Instance> = all
        .iter()
        .filter(|i| i.id.service == args.service)
        .filter(|i| args.stack.as_ref().is_none_or(|s| &i.id.stack.stack == s))
        .filter(|i| args.index.is_none_or(|n| i.id.index == n))
        .collect();
    mine.sort_by_key(|i| i.id.index);
    let stacks: std::collections::BTreeSet<&str> =
        mine.iter().map(|i| i.id.stack.stack.as_str()).collect();
    if stacks.len() > 1 {
        anyhow::bail!(
            "service {} exists in several stacks ({}): pick one with --stack",
            args.service,
            stacks.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    if mine.is_empty() {
        anyhow::bail!("no instance of service {} in env {env}", args.service);
    }
    let width = mine.iter().map(|i| i.id.short().len()).max().unwrap_or(0);
    let out = Mutex::new(());
    let query = LogQuery {
        follow: args.follow,
        since_ms: args.since.unwrap_or(0),
    };
    std::thread::scope(|scope| {
        for inst in &mine {
            let name = inst.id.short();
            let out = &out;
            let query = &query;
            let timestamps = args.timestamps;
            scope.spawn(move || -> anyhow::Result<()> {
                for line in client.logs(&inst.id, query)? {
                    let line = line?;
                    let Some(r) = parse_log_line(&line) else {
                        continue;
                    };
                    let _guard = out.lock().unwrap_or_else(|p| p.into_inner());
                    if timestamps {
                        println!(
                            "{name:<width$} | {} {}",
                            crate::cmd::ps::format_time_ms(r.time_ms),
                            r.text
                        );
                    } else {
                        println!("{name:<width$} | {}", r.text);
                    }
                }
                Ok(())
            });
        }
    });
    Ok(ExitCode::SUCCESS)
}
