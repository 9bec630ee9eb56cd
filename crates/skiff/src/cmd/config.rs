//! `skiff config`: the resolved project, like `docker compose config`.

use std::process::ExitCode;

use skiff_spec::render;

use super::project::ProjectArgs;
use crate::output::{self, Format};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    project: ProjectArgs,
    /// Output format: yaml (default) or json.
    #[arg(
        short = 'o',
        long = "output",
        alias = "format",
        value_enum,
        default_value = "yaml"
    )]
    output: Format,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = match args.project.load()? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    output::print_diagnostics(&[], &loaded.warnings);
    match args.output {
        Format::Json => print!("{}", render::to_json(&loaded.project)?),
        Format::Yaml => print!("{}", render::to_yaml(&loaded.project)?),
        Format::Table => anyhow::bail!("config prints yaml or json, not a table"),
    }
    Ok(ExitCode::SUCCESS)
}
