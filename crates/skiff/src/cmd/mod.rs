//! One module per subcommand; `project` holds the flags every compose-reading command shares.

pub mod agent;
pub mod bringup;
pub mod config;
pub mod dev;
pub mod diff;
pub mod dns;
pub mod envs;
pub mod history;
pub mod logs;
pub mod node;
pub mod plan;
pub mod project;
pub mod ps;
pub mod rollout;
pub mod routes;
pub mod server;
pub mod service;
pub mod up;
pub mod validate;
pub mod wait;

use skiff_client::blocking::Client;
use skiff_model::StackKey;

/// The API client of the server at `addr` (nothing is sent yet).
pub fn connect(addr: &str) -> anyhow::Result<Client> {
    Ok(Client::new(addr)?)
}

/// `env` and `stack` as a key; a name the server would refuse is refused here.
pub fn stack_key(env: &str, stack: &str) -> anyhow::Result<StackKey> {
    Ok(StackKey::new(env, stack)?)
}

/// The record of the environment a stack is deployed into (its values and override files);
/// `None` when it has none yet (`default`'s is implicit and empty).
pub fn env_record(client: &Client, env: &str) -> anyhow::Result<Option<skiff_model::Environment>> {
    Ok(client.env(env)?.filter(|v| !v.implicit).map(|v| v.env))
}
