//! `skiff plan`: the deploy order, batch by batch.

use std::process::ExitCode;

use skiff_spec::model::Condition;
use skiff_spec::order;

use super::project::ProjectArgs;
use crate::output::{self, Format, OutputArg};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    project: ProjectArgs,
    /// Output format.
    #[command(flatten)]
    output: OutputArg,
}

pub fn run(args: Args, env: &str) -> anyhow::Result<ExitCode> {
    let loaded = match args.project.load()? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    output::print_diagnostics(&[], &loaded.warnings);
    let plan = order::plan(&loaded.project, &loaded.name, env)
        .map_err(|cycle| anyhow::anyhow!("dependency cycle {}", cycle.join(" -> ")))?;
    match args.output.format {
        Format::Json => print!("{}", output::json(&plan)?),
        Format::Yaml => print!("{}", output::yaml(&plan)?),
        Format::Table => {
            let services: usize = plan.batches.iter().map(Vec::len).sum();
            println!(
                "stack {} (env {}): {services} services in {} batches",
                plan.stack,
                plan.env,
                plan.batches.len()
            );
            let mut rows = Vec::new();
            for (i, batch) in plan.batches.iter().enumerate() {
                for s in batch {
                    let waits: Vec<String> = s
                        .waits_for
                        .iter()
                        .map(|w| {
                            let c = match w.condition {
                                Condition::ServiceStarted => "started",
                                Condition::ServiceHealthy => "healthy",
                                Condition::ServiceCompletedSuccessfully => "completed",
                            };
                            format!("{} ({c})", w.service)
                        })
                        .collect();
                    rows.push(vec![
                        (i + 1).to_string(),
                        s.service.clone(),
                        s.driver.to_string(),
                        s.replicas.map_or("global".into(), |r| r.to_string()),
                        waits.join(", "),
                    ]);
                }
            }
            output::print_table(
                &["BATCH", "SERVICE", "DRIVER", "REPLICAS", "WAITS FOR"],
                rows,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
