//! DNS for the service catalog: `<service>.<stack>.<env>.<domain>` A/AAAA and SRV records of
//! the instances that are ready now, answered from live catalog state (TTL 0–1 s).
//!
//! - [`lookup`]: the answer to one question, from a catalog snapshot (no I/O);
//! - [`wire`]: the UDP fast path (answers prepared per name whenever the catalog changes);
//! - [`server`]: the listeners (UDP thread, TCP through hickory-server).

pub mod lookup;
pub mod server;
pub mod wire;

pub use lookup::{Answer, Zone, lookup};
pub use server::DnsServer;
