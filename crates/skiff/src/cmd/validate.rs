//! `skiff validate`: exit 0 when the files are valid; every error and warning with its place.

use std::process::ExitCode;

use serde::Serialize;

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

#[derive(Serialize)]
struct Report {
    valid: bool,
    stack: String,
    services: usize,
    warnings: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = match args.project.load()? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let report = Report {
        valid: true,
        stack: loaded.name.clone(),
        services: loaded.project.services.len(),
        warnings: loaded.warnings.iter().map(ToString::to_string).collect(),
    };
    match args.output.format {
        Format::Json => print!("{}", output::json(&report)?),
        Format::Yaml => print!("{}", output::yaml(&report)?),
        Format::Table => {
            output::print_diagnostics(&[], &loaded.warnings);
            let cwd = std::env::current_dir()?;
            let files: Vec<String> = loaded
                .files
                .iter()
                .map(|f| f.strip_prefix(&cwd).unwrap_or(f).display().to_string())
                .collect();
            println!(
                "{}: valid: stack {:?}, {} services{}",
                files.join(", "),
                report.stack,
                report.services,
                match report.warnings.len() {
                    0 => String::new(),
                    n => format!(", {n} warnings"),
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
