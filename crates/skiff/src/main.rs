//! `skiff`: the single binary. This crate is wiring, not logic: it parses the command line,
//! reads files for the pure crates and prints what they return.

mod cmd;
mod fs_loader;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use skiff_client::ServiceAction;

/// Run, find and release services from compose files.
#[derive(Parser)]
#[command(name = "skiff", version, about, propagate_version = true)]
struct Cli {
    /// Environment: an isolated namespace of stacks (like kubectl -n).
    #[arg(
        short = 'n',
        long = "env",
        global = true,
        default_value = "default",
        env = "SKIFF_ENV"
    )]
    env: String,
    /// Address of the skiff API.
    #[arg(
        long,
        global = true,
        env = "SKIFF_ADDR",
        default_value = "http://127.0.0.1:7700"
    )]
    addr: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check compose files: exit 0, or print each error as file:line:col: field: reason.
    Validate(cmd::validate::Args),
    /// Print the resolved project: interpolated, merged, defaults applied.
    Config(cmd::config::Args),
    /// Print the deploy order: batches of services that can start in parallel.
    Plan(cmd::plan::Args),
    /// Run the platform in the foreground on this machine: API, store, agent.
    Dev(cmd::dev::Args),
    /// Run the control plane: API, store, scheduler, catalog, DNS, ingress (agents join it).
    Server(cmd::server::Args),
    /// Run this machine's agent: `skiff agent --join http://SERVER:7700`.
    Agent(cmd::agent::Args),
    /// Nodes: `skiff node ls | status NODE | drain NODE | undrain NODE | label NODE k=v`.
    Node(cmd::node::Args),
    /// Environments: `skiff env create|ls|set|unset|show|down|rm|clone|up`.
    Env(cmd::envs::Args),
    /// Deploy a stack from compose files and wait until it is healthy (`-n NAME` into an
    /// environment that does not exist creates it).
    Up(cmd::up::UpArgs),
    /// Stop every instance of a stack (its release history is kept).
    Down(cmd::up::DownArgs),
    /// Change a service's replica count (recorded as a new release): `skiff scale web=5`.
    Scale(cmd::service::ScaleArgs),
    /// Stop a service's instances; they stay stopped until `skiff start` or the next `up`.
    Stop(cmd::service::ControlArgs),
    /// Start a service stopped by `skiff stop`.
    Start(cmd::service::ControlArgs),
    /// Replace every instance of a service with a fresh one (same release).
    Restart(cmd::service::ControlArgs),
    /// Show a service: spec in brief, instances with state and resource usage.
    Status(cmd::service::StatusArgs),
    /// Run a command in an instance: `skiff exec db -- psql -c 'select 1'`.
    Exec(cmd::service::ExecArgs),
    /// Send a signal to a service's instances (`-s HUP` reloads without a restart).
    Kill(cmd::service::KillArgs),
    /// List instances and their state.
    Ps(cmd::ps::PsArgs),
    /// A stack's releases: who made each, how, what changed; `skiff history STACK N` shows
    /// release N's diff to the release before.
    History(cmd::history::HistoryArgs),
    /// What `up` would change, per service, before it does (exit 0: nothing, 2: changes).
    Diff(cmd::diff::Args),
    /// Rollouts of changed services: `skiff rollout status|pause|resume STACK [SERVICE]`.
    Rollout(cmd::rollout::Args),
    /// Deploy an earlier release again (default: the one before the current) and wait.
    Rollback(cmd::rollout::RollbackArgs),
    /// Print a service's logs (-f to follow).
    Logs(cmd::logs::Args),
    /// Show what happened: starts, exits, restarts, adoptions.
    Events(cmd::ps::EventsArgs),
    /// What skiff's DNS answers for a name: `skiff dns web.shop.default.skiff SRV`.
    Dns(cmd::dns::Args),
    /// The ingress's routes and the instances behind them: `skiff routes web.shop.default.localhost/api`.
    Routes(cmd::routes::Args),
    /// Per-instance supervisor of the process driver (started by skiff, not by people).
    #[command(name = "__shim", hide = true)]
    Shim { dir: std::path::PathBuf },
}

fn main() -> ExitCode {
    // The shim starts once per instance: it skips building the whole command line (and the
    // HTTP client), which costs more than the rest of its start.
    let mut args = std::env::args_os().skip(1);
    if let (Some(verb), Some(dir), None) = (args.next(), args.next(), args.next())
        && verb == "__shim"
    {
        std::process::exit(skiff_driver_process::shim::run(std::path::Path::new(&dir)));
    }
    let cli = Cli::parse();
    // The API client only for commands that talk to a server (built here, its runtime on the
    // first request): `validate`, `config`, `dev`… start nothing of it.
    let connect = || cmd::connect(&cli.addr);
    let env = cli.env.as_str();
    let result = match cli.command {
        Command::Validate(args) => cmd::validate::run(args),
        Command::Config(args) => cmd::config::run(args),
        Command::Plan(args) => cmd::plan::run(args, &cli.addr, env),
        Command::Dev(args) => cmd::dev::run(args),
        Command::Server(args) => cmd::server::run(args),
        Command::Agent(args) => cmd::agent::run(args),
        Command::Node(args) => connect().and_then(|c| cmd::node::run(args, &c)),
        Command::Env(args) => connect().and_then(|c| cmd::envs::run(args, &c)),
        Command::Up(args) => connect().and_then(|c| cmd::up::up(args, &c, env)),
        Command::Down(args) => connect().and_then(|c| cmd::up::down(args, &c, env)),
        Command::Ps(args) => connect().and_then(|c| cmd::ps::ps(args, &c, env)),
        Command::Scale(args) => connect().and_then(|c| cmd::service::scale(args, &c, env)),
        Command::Stop(args) => {
            connect().and_then(|c| cmd::service::control(args, ServiceAction::Stop, &c, env))
        }
        Command::Start(args) => {
            connect().and_then(|c| cmd::service::control(args, ServiceAction::Start, &c, env))
        }
        Command::Restart(args) => {
            connect().and_then(|c| cmd::service::control(args, ServiceAction::Restart, &c, env))
        }
        Command::Status(args) => connect().and_then(|c| cmd::service::status(args, &c, env)),
        Command::Exec(args) => connect().and_then(|c| cmd::service::exec(args, &c, env)),
        Command::Kill(args) => connect().and_then(|c| cmd::service::kill(args, &c, env)),
        Command::History(args) => connect().and_then(|c| cmd::history::history(args, &c, env)),
        Command::Diff(args) => connect().and_then(|c| cmd::diff::run(args, &c, env)),
        Command::Rollout(args) => connect().and_then(|c| cmd::rollout::run(args, &c, env)),
        Command::Rollback(args) => connect().and_then(|c| cmd::rollout::rollback(args, &c, env)),
        Command::Events(args) => connect().and_then(|c| cmd::ps::events(args, &c)),
        Command::Logs(args) => connect().and_then(|c| cmd::logs::run(args, &c, env)),
        Command::Dns(args) => connect().and_then(|c| cmd::dns::run(args, &c)),
        Command::Routes(args) => connect().and_then(|c| cmd::routes::run(args, &c)),
        Command::Shim { dir } => std::process::exit(skiff_driver_process::shim::run(&dir)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            output::print_error(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}
