//! Output conventions shared by every command: `-o json|yaml|table` (alias `--format`),
//! colours only on a terminal and never with `NO_COLOR`.

use std::io::IsTerminal;

use skiff_spec::diag::Diagnostic;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// `-o/--output json|yaml|table` (alias `--format`), table by default.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct OutputArg {
    #[arg(
        short = 'o',
        long = "output",
        alias = "format",
        value_enum,
        default_value = "table"
    )]
    pub format: Format,
}

fn color(stream_is_tty: bool) -> bool {
    stream_is_tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether what goes to stdout may be coloured: it is a terminal and `NO_COLOR` is unset.
pub fn stdout_color() -> bool {
    color(std::io::stdout().is_terminal())
}

fn label(text: &str, ansi: &str) -> String {
    if color(std::io::stderr().is_terminal()) {
        format!("\x1b[{ansi}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

pub fn print_error(message: &str) {
    eprintln!("{}: {message}", label("error", "1;31"));
}

pub fn print_diagnostics(errors: &[Diagnostic], warnings: &[Diagnostic]) {
    for w in warnings {
        eprintln!("{}: {w}", label("warning", "1;33"));
    }
    for e in errors {
        print_error(&e.to_string());
    }
}

pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

pub fn yaml<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_saphyr::to_string(value)?)
}

/// Prints `value` as JSON or YAML, or calls `table` for people.
pub fn print<T: serde::Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce(),
) -> anyhow::Result<()> {
    match format {
        Format::Json => print!("{}", json(value)?),
        Format::Yaml => print!("{}", yaml(value)?),
        Format::Table => table(),
    }
    Ok(())
}

/// A borderless table like docker's and kubectl's: a header row, columns aligned by spaces.
pub fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(header.to_vec());
    for r in rows {
        table.add_row(r);
    }
    // The borderless style still pads each cell by one space; drop each row's leading pad.
    for line in table.to_string().lines() {
        println!("{}", line.strip_prefix(' ').unwrap_or(line).trim_end());
    }
}
