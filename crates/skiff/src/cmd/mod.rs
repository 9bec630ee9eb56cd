//! One module per subcommand; `project` holds the flags every compose-reading command shares.

pub mod agent;
pub mod config;
pub mod dev;
pub mod dns;
pub mod logs;
pub mod node;
pub mod plan;
pub mod project;
pub mod ps;
pub mod routes;
pub mod server;
pub mod service;
pub mod up;
pub mod validate;
pub mod wait;
