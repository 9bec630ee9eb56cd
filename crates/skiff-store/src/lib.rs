//! The control plane's state, in one revisioned key-value store.
//!
//! [`kv`] is the contract underneath, shaped after etcd v3 so an etcd backend can slot in:
//! store-wide revisions, compare-and-swap, transactions, watch from a revision, and
//! [soft](kv::Durability::Soft) writes. [`MemKv`] (tests) and [`RedbKv`] (one redb file,
//! `control.redb` in the data dir) implement it.
//!
//! [`Store`] is the domain layer over any [`Kv`]: releases, stacks (which release is current),
//! service controls, observed instances and events, each an async method. skiff-control keeps
//! its own keys (nodes, allocations, stable addresses) in the same kv, through [`Store::kv`].
//!
//! # Key layout
//!
//! Values are JSON of the `skiff-model` types unless said otherwise.
//!
//! | key | value | written |
//! |---|---|---|
//! | `meta/format` | [`FORMAT_VERSION`] of this layout | once, at init |
//! | `meta/cluster_id` | the data dir's random id (a string) | once, at init |
//! | `meta/event_seq` | event numbers up to this are taken (durable reservation) | durable |
//! | `meta/imported` | path of the `state.redb` imported at init, if one was | once |
//! | `stacks/<env>/<stack>` | `{"current": n or null, "next": n}` | durable, CAS |
//! | `releases/<env>/<stack>/<n:020>` | [`Release`](skiff_model::Release) | durable, create-only |
//! | `controls/<env>/<stack>` | `{service: ServiceControl}`, absent when all default | durable, CAS |
//! | `instances/<env>/<stack>/<service>/<index:010>` | [`Instance`](skiff_model::Instance) | soft |
//! | `events/<seq:020>` | [`Event`](skiff_model::Event), the last [`EVENTS_KEPT`] | soft |
//! | `envs/<name>` | [`Environment`](skiff_model::Environment) (`default` needs none) | durable, CAS |
//!
//! skiff-control uses `nodes/`, `allocs/` and `addresses/` ([`KEY_PREFIXES`] are this crate's).
//! Numbers are zero-padded so that key order is numeric order (`web-2` before `web-10`).
//!
//! # Durability
//!
//! Releases, stack records and controls are durable (fsynced) when the call returns.
//! Observed instance state and events are soft writes: applied, numbered and watched at once,
//! made durable by a group commit at most [`FLUSH_EVERY`] later, so a burst of 1,000 instance
//! starts costs a few fsyncs, not 1,000, and a `kill -9` loses at most the last ~100 ms of them
//! (agents report their instances again in full when they reconnect).
//!
//! # Invariants
//!
//! - Release numbers per stack start at 1, only grow, and are never reused, even after a
//!   crash: the number comes from the stack record, read at revision r, and the release is
//!   written in the transaction that moves the record on, conditional on r (retried on a
//!   conflict).
//! - Event numbers strictly grow and are never reused, even when a crash loses the last soft
//!   writes: a process takes them from blocks reserved durably (`meta/event_seq`), so after a
//!   restart numbering goes on after the last block (with a gap).
//! - A layout newer than [`FORMAT_VERSION`] is refused ([`StoreError::NewerFormat`]) rather
//!   than misread.
//!
//! # Import
//!
//! A data dir written before the state moved onto the kv has `state.redb` (the former
//! `RedbStore`, format 1) next to `control.redb`. [`Store::open_importing`] with its path
//! imports everything from it (releases with their numbers, current releases, controls,
//! instances, events with their numbers, the cluster id) in the transaction that initialises
//! the layout, then renames it to `state.redb.imported`.

mod envs;
pub mod kv;
mod legacy;
mod store;

pub use kv::{
    AnyKv, Durability, Expect, FLUSH_EVERY, Kv, KvEntry, KvError, MemKv, RedbKv, TxnOp, WatchEvent,
};
pub use skiff_model::NewEvent;
pub use store::{EVENTS_KEPT, Observed, Store};

use std::collections::BTreeMap;

use skiff_model::{ServiceControl, StackKey};

/// Version of the key layout (`meta/format`). Format 1 was the former `state.redb`.
pub const FORMAT_VERSION: u64 = 2;

/// The key prefixes this crate writes; everything else in the kv belongs to its callers.
pub const KEY_PREFIXES: [&str; 7] = [
    "meta/",
    "envs/",
    "stacks/",
    "releases/",
    "controls/",
    "instances/",
    "events/",
];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(
        "the store was written by a newer skiff (format {found}, this one reads {FORMAT_VERSION})"
    )]
    NewerFormat { found: u64 },
    #[error("store: {0}")]
    Kv(#[from] KvError),
    #[error("store: corrupt value under {key}: {message}")]
    Corrupt { key: String, message: String },
    /// Reading the former `state.redb` for the import failed.
    #[error("importing {path}: {message}")]
    Import { path: String, message: String },
    /// A compare-and-swap lost to other writers this many times in a row.
    #[error("store: {key} kept changing under {tries} attempts to update it")]
    Contended { key: String, tries: u32 },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stack with the release that should run (`None` after `down`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackState {
    pub stack: StackKey,
    pub current: Option<u64>,
    /// Per-service stop flags and restart generations (absent = running, generation 0).
    pub controls: BTreeMap<String, ServiceControl>,
}

/// Controls of a stack's services, by service name.
pub type Controls = BTreeMap<String, ServiceControl>;

/// Named crash points for durability tests: with `SKIFF_CRASH_AT=<name>` (or `<name>:<n>`
/// for the n-th time it is reached) the process aborts right there, as a `kill -9` would
/// stop it at the worst moment. Unset, a crash point is one relaxed atomic load.
///
/// Points: `release-stored` (the API, after the commit, before the answer),
/// `instance-dir-written` (the agent, before the shim starts), `instance-started` (after the
/// workload runs, before the agent records it), `instance-stopped` (after the workload ended,
/// before its directory and cgroup are removed), `config-written` (a reload's new config
/// files written, before the signal and before the instance's record names the release). Rollouts (the control plane, each right after
/// the commit that makes the step durable, with the step's events): `rollout-started` (the
/// pass that created a service's rollout), `rollout-batch` (a batch's re-stamps or
/// replacements, before the new instances are ready), `rollout-retire` (a replaced copy's
/// deletion), `rollout-done`, `rollout-failed` (a rollout failed with `failure_action:
/// rollback`, its rollback not recorded yet) and `rollout-rollback` (a rollback's release,
/// its rollouts and its event).
pub fn crash_point(name: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    static TARGET: OnceLock<Option<(String, u32)>> = OnceLock::new();
    static HITS: AtomicU32 = AtomicU32::new(0);
    let target = TARGET.get_or_init(|| {
        let v = std::env::var("SKIFF_CRASH_AT").ok()?;
        let (point, n) = match v.split_once(':') {
            Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
            None => (v, 1),
        };
        Some((point, n))
    });
    if let Some((point, n)) = target
        && point == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        eprintln!("skiff: SKIFF_CRASH_AT={name}:{n} reached, aborting");
        std::process::abort();
    }
}
