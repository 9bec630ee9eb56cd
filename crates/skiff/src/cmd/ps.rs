//! Read commands: `skiff ps`, `skiff events`.

use std::process::ExitCode;

use skiff_client::blocking::Client;
use skiff_client::{EventQuery, StackFilter};

use crate::output::{self, Format, OutputArg};

#[derive(clap::Args)]
pub struct PsArgs {
    /// Only this stack.
    stack: Option<String>,
    #[command(flatten)]
    output: OutputArg,
}

pub fn ps(args: PsArgs, client: &Client, env: &str) -> anyhow::Result<ExitCode> {
    let instances = client.instances(&StackFilter {
        env: Some(env.to_string()),
        stack: args.stack.clone(),
    })?;
    output::print(args.output.format, &instances, || {
        let rows = instances
            .iter()
            .map(|i| {
                let ports: Vec<String> = i.ports.iter().map(|(n, p)| format!("{n}->{p}")).collect();
                vec![
                    i.id.short(),
                    i.id.stack.stack.clone(),
                    format!("{:?}", i.state).to_lowercase(),
                    i.pid.map_or("-".into(), |p| p.to_string()),
                    ports.join(","),
                    i.restarts.to_string(),
                    i.release.to_string(),
                    i.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        output::print_table(
            &[
                "INSTANCE", "STACK", "STATE", "PID", "PORTS", "RESTARTS", "RELEASE", "REASON",
            ],
            rows,
        );
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct EventsArgs {
    /// Keep printing new events.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Start after this sequence number.
    #[arg(long, default_value_t = 0)]
    after: u64,
    #[command(flatten)]
    output: OutputArg,
}

pub fn events(args: EventsArgs, client: &Client) -> anyhow::Result<ExitCode> {
    let mut after = args.after;
    loop {
        let batch = client.events(&EventQuery {
            after,
            ..EventQuery::default()
        })?;
        for e in &batch {
            after = e.seq;
            match args.output.format {
                Format::Json => println!("{}", serde_json::to_string(e)?),
                _ => println!(
                    "{} {:<6} {:<24} {:<10} {}",
                    format_time(e.time_ms),
                    e.seq,
                    format!("{}/{}", e.stack, e.instance.clone().unwrap_or_default()),
                    e.kind,
                    e.message
                ),
            }
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `2026-11-25 03:04:05.123` (UTC).
pub fn format_time_ms(ms: u64) -> String {
    format!("{}.{:03}", format_time(ms), ms % 1000)
}

/// `2026-11-25 03:04:05` from Unix milliseconds (UTC), without a date crate.
pub fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_print_as_utc_civil_dates() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00:00");
        assert_eq!(super::format_time(1_795_575_284_748), "2026-11-25 02:54:44");
        assert_eq!(super::format_time(951_782_400_000), "2000-02-29 00:00:00");
    }
}
