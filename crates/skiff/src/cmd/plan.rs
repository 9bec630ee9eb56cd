//! `skiff plan`: the deploy order, batch by batch, and — when a server answers — where each
//! service would run if it were deployed now (like `nomad job plan`): what stays, what is
//! placed on which node, what stops, and what fits nowhere with the reason.

use std::process::ExitCode;

use skiff_spec::model::Condition;
use skiff_spec::order;

use skiff_client::{NewRelease, PlacementPreview};

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

/// `addr`: the server asked for the placement (the plan prints without it).
pub fn run(args: Args, addr: &str, env: &str) -> anyhow::Result<ExitCode> {
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
            let spec = match super::project::stack_spec(&loaded) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let request = NewRelease {
                spec,
                source: String::new(),
                author: None,
            };
            let preview = super::connect(addr).and_then(|client| {
                let key = super::stack_key(env, &loaded.name)?;
                let preview = client.preview_placement(&key, &request)?;
                Ok((client, preview))
            });
            match preview {
                Ok((client, preview)) => {
                    println!();
                    println!("placement on the cluster at {} now:", client.base());
                    print_placement(&preview);
                    if preview.services.iter().any(|s| s.unplaced.is_some()) {
                        return Ok(ExitCode::from(2));
                    }
                }
                Err(e) => println!("\nplacement not shown: {e}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_placement(preview: &PlacementPreview) {
    let rows = preview
        .services
        .iter()
        .map(|s| {
            let place: Vec<String> = s.place.iter().map(|(n, c)| format!("{n}: {c}")).collect();
            vec![
                s.service.clone(),
                s.keep.to_string(),
                if place.is_empty() {
                    "-".into()
                } else {
                    place.join(", ")
                },
                s.stop.to_string(),
                s.unplaced.as_ref().map_or_else(
                    || "-".into(),
                    |u| format!("{} fit nowhere: {}", u.missing, u.reason),
                ),
            ]
        })
        .collect();
    output::print_table(&["SERVICE", "KEEP", "PLACE", "STOP", "UNPLACED"], rows);
}
