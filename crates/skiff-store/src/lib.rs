//! Durable state of the control plane, behind one [`Store`] trait.
//!
//! [`RedbStore`] keeps it in one redb file (ACID; every write transaction is committed with
//! `Durability::Immediate`, i.e. fsynced before the call returns, so an acknowledged release
//! survives `kill -9`). [`MemStore`] keeps it in memory for tests. Both pass the same contract
//! battery (`tests/contract.rs`).
//!
//! Releases and desired state (service controls) are fsynced before the call returns.
//! Observed instance state and events are "soft" writes: committed without fsync and made
//! durable together by a group commit at most [`FLUSH_EVERY`] later, so a burst of 100
//! instance starts costs a few fsyncs, not 100, and a `kill -9` loses at most the last
//! ~100 ms of them (the agent rebuilds observed state from the instance directories anyway).
//!
//! Values are JSON of the `skiff-model` types; the file records [`FORMAT_VERSION`] and a store
//! written by a newer skiff is refused rather than misread.
//!
//! **Invariant:** release numbers per stack start at 1, only grow, and are never reused, even
//! after a crash between two writes: the number is assigned in the same transaction that
//! stores the release.

pub mod kv;
mod mem;
mod redb_store;

pub use kv::{AnyKv, Durability, Expect, Kv, KvEntry, KvError, MemKv, RedbKv, TxnOp, WatchEvent};
pub use mem::MemStore;
pub use redb_store::{FLUSH_EVERY, RedbStore};
use std::collections::BTreeMap;

use skiff_model::{Event, Instance, InstanceId, Release, ServiceControl, StackKey, StackSpec};

/// Version of the on-disk encoding.
pub const FORMAT_VERSION: u64 = 1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store {path}: {message}")]
    Open { path: String, message: String },
    #[error(
        "store {path} was written by a newer skiff (format {found}, this one reads {FORMAT_VERSION})"
    )]
    NewerFormat { path: String, found: u64 },
    #[error("store: {0}")]
    Backend(String),
    #[error("store: corrupt value under {key}: {message}")]
    Corrupt { key: String, message: String },
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

pub use skiff_model::NewEvent;

fn new_release(
    stack: &StackKey,
    number: u64,
    spec: StackSpec,
    source: String,
    now_ms: u64,
) -> Release {
    Release {
        stack: stack.clone(),
        number,
        created_ms: now_ms,
        spec,
        source,
    }
}

/// The control plane's durable state.
pub trait Store: Send + Sync {
    /// The random id this data dir got at init.
    fn cluster_id(&self) -> Result<String>;

    /// Records a new release with the next number and makes it the stack's current one, in
    /// one transaction.
    fn create_release(
        &self,
        stack: &StackKey,
        spec: StackSpec,
        source: String,
        now_ms: u64,
    ) -> Result<Release>;

    fn release(&self, stack: &StackKey, number: u64) -> Result<Option<Release>>;

    /// Every release of the stack, oldest first.
    fn releases(&self, stack: &StackKey) -> Result<Vec<Release>>;

    /// Sets which release should run; `None` takes the stack down (its history stays).
    fn set_current(&self, stack: &StackKey, number: Option<u64>) -> Result<()>;

    fn stacks(&self) -> Result<Vec<StackState>>;

    /// Changes a stack's service controls with `f` in one durable transaction; returns them.
    fn update_controls(
        &self,
        stack: &StackKey,
        f: &mut dyn FnMut(&mut Controls),
    ) -> Result<Controls>;

    fn put_instance(&self, instance: &Instance) -> Result<()>;

    fn delete_instance(&self, id: &InstanceId) -> Result<()>;

    /// Instances of one stack, or of all stacks, ordered by id.
    fn instances(&self, stack: Option<&StackKey>) -> Result<Vec<Instance>>;

    /// Appends an event and returns it with its sequence number.
    fn append_event(&self, event: NewEvent) -> Result<Event>;

    /// Events with `seq > after`, oldest first, at most `limit`.
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>>;
}

fn stack_prefix(stack: &StackKey) -> String {
    format!("{}/{}/", stack.env, stack.stack)
}

fn release_key(stack: &StackKey, number: u64) -> String {
    format!("{}{number:020}", stack_prefix(stack))
}

/// Sorts instances by stack, service, then numeric index (`web-2` before `web-10`).
fn instance_key(id: &InstanceId) -> String {
    format!("{}{}/{:010}", stack_prefix(&id.stack), id.service, id.index)
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.to_string()))
}

/// Named crash points for durability tests: with `SKIFF_CRASH_AT=<name>` (or `<name>:<n>`
/// for the n-th time it is reached) the process aborts right there, as a `kill -9` would
/// stop it at the worst moment. Unset, a crash point is one relaxed atomic load.
///
/// Points: `release-stored` (the API, after the commit, before the answer),
/// `instance-dir-written` (the agent, before the shim starts), `instance-started` (after the
/// workload runs, before the agent records it), `instance-stopped` (after the workload ended,
/// before its directory and cgroup are removed).
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
