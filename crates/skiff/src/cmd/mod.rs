//! One module per subcommand; `project` holds the flags every compose-reading command shares.

pub mod config;
pub mod plan;
pub mod project;
pub mod validate;
