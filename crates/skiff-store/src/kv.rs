//! The revisioned key-value contract under the control plane's state, shaped after etcd's v3
//! API so that an etcd backend can slot in: every write gets the next store-wide revision,
//! each key remembers the revision of its last change, a write can be conditional on that
//! revision (compare-and-swap), and a watch replays every change of a prefix from a given
//! revision, then follows live ones.
//!
//! Two backends: [`MemKv`] (tests, `--store memory`) and [`RedbKv`] (one redb file; each write
//! durable when it returns, but for [soft](Durability::Soft) ones). Both keep the last
//! [`HISTORY`] changes for watches; a watch from an older revision fails with
//! [`KvError::Compacted`], as etcd's does.
//!
//! A write is [`Durability::Immediate`] (durable when it returns: `put`, `delete`, `txn`) or
//! [`Durability::Soft`] (`txn_soft`): applied, numbered and watched like any other, but a crash
//! may lose it until a group commit makes it durable, at most [`FLUSH_EVERY`] later. Soft
//! writes are for what is observed and rebuilt anyway (instance states, events), so that a
//! burst of them costs a few fsyncs, not one each. A backend without the distinction (etcd)
//! treats a soft write as a normal one.
//!
//! **Invariants:** revisions grow by one per successful write, across all keys; a watch
//! delivers each change of its prefix exactly once, in revision order, with no gap between the
//! replayed and the live part.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc};

/// Changes kept for watches that start in the past (a watch starts from the revision of the
/// list before it, so this only has to cover the moment between the two). Observed instance
/// states and events are changes too: a bring-up of 1,000 instances makes a few thousand.
pub const HISTORY: u64 = 1_000;

/// Changes buffered for live watchers that have not taken them yet; one further behind gets
/// `Lagged` (and lists again). The buffer is allocated whole up front, so it stays small.
const LIVE_BUFFER: usize = 256;

/// How long a soft write may stay undurable: a group commit this often makes every soft write
/// before it durable with one fsync.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// How durable a write is when it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Durable (fsynced) before the call returns.
    Immediate,
    /// Applied, numbered and watched at once; durable at the next group commit, at most
    /// [`FLUSH_EVERY`] later. A crash before it may lose it (and only soft writes).
    Soft,
}

/// A key's value and the revisions of its creation and last change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
}

/// The condition of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Unconditional.
    Any,
    /// Only if the key does not exist (create).
    Absent,
    /// Only if the key's last change was at this revision.
    Revision(u64),
}

/// One write of a transaction: a put (`value: Some`) or a delete (`None`), if `expect` holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnOp {
    pub key: String,
    pub expect: Expect,
    pub value: Option<Vec<u8>>,
}

impl TxnOp {
    pub fn put(key: impl Into<String>, value: Vec<u8>, expect: Expect) -> TxnOp {
        TxnOp {
            key: key.into(),
            expect,
            value: Some(value),
        }
    }

    pub fn delete(key: impl Into<String>, expect: Expect) -> TxnOp {
        TxnOp {
            key: key.into(),
            expect,
            value: None,
        }
    }
}

/// One change, as a watch delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KvEntry),
    Delete { key: String, revision: u64 },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(e) => &e.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Put(e) => e.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// A conditional write whose condition did not hold; `current` is the key's state now.
    #[error("{key}: changed since revision {expected:?} (now {})", current.as_ref().map_or("absent".to_string(), |e| format!("at revision {}", e.mod_revision)))]
    Conflict {
        key: String,
        expected: Expect,
        current: Option<KvEntry>,
    },
    #[error("watch from revision {from}: history before revision {oldest} was compacted")]
    Compacted { from: u64, oldest: u64 },
    /// A watcher fell so far behind that changes were dropped; it must list and watch again.
    #[error("watch fell behind by {0} changes; list and watch again")]
    Lagged(u64),
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

pub type KvResult<T> = Result<T, KvError>;

/// The contract. Methods are async so that a networked backend (etcd) fits the same shape.
pub trait Kv: Send + Sync + 'static {
    fn get(&self, key: &str) -> impl Future<Output = KvResult<Option<KvEntry>>> + Send;
    /// Every key under `prefix`, in key order, and the store's revision they were read at.
    fn list(&self, prefix: &str) -> impl Future<Output = KvResult<(Vec<KvEntry>, u64)>> + Send {
        self.list_from(prefix, prefix, usize::MAX)
    }
    /// At most `limit` keys under `prefix` from `start` on (`start` included), in key order,
    /// and the store's revision they were read at (etcd's range with a limit).
    fn list_from(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
    ) -> impl Future<Output = KvResult<(Vec<KvEntry>, u64)>> + Send {
        async move {
            let (entries, revision) = self.list(prefix).await?;
            let from = entries.partition_point(|e| e.key.as_str() < start);
            Ok((
                entries.into_iter().skip(from).take(limit).collect(),
                revision,
            ))
        }
    }
    /// Writes `value` if `expect` holds; returns the write's revision.
    fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        expect: Expect,
    ) -> impl Future<Output = KvResult<u64>> + Send {
        let op = TxnOp::put(key, value, expect);
        async move { Ok(self.commit(vec![op], Durability::Immediate).await?.0) }
    }
    /// Deletes `key` if `expect` holds; returns the revision of the deletion, or `None` when
    /// there was nothing to delete (no revision is used then).
    fn delete(
        &self,
        key: &str,
        expect: Expect,
    ) -> impl Future<Output = KvResult<Option<u64>>> + Send {
        let op = TxnOp::delete(key, expect);
        async move {
            let (revision, changed) = self.commit(vec![op], Durability::Immediate).await?;
            Ok(changed.then_some(revision))
        }
    }
    /// Every change under `prefix` after revision `after` (0: from the oldest kept), then the
    /// live ones. The receiver ends with an error if the watcher falls too far behind.
    fn watch(
        &self,
        prefix: &str,
        after: u64,
    ) -> impl Future<Output = KvResult<mpsc::Receiver<KvResult<WatchEvent>>>> + Send;
    /// Applies every op or none: the first op whose `expect` fails makes it a
    /// [`KvError::Conflict`] naming that key. Keys must be distinct. Returns the store's
    /// revision after it. The ops that change something get consecutive revisions (etcd gives
    /// a transaction one): callers compare a key's `mod_revision`, never count revisions.
    fn txn(&self, ops: Vec<TxnOp>) -> impl Future<Output = KvResult<u64>> + Send {
        async move { Ok(self.commit(ops, Durability::Immediate).await?.0) }
    }
    /// [`Kv::txn`] as a [soft](Durability::Soft) write.
    fn txn_soft(&self, ops: Vec<TxnOp>) -> impl Future<Output = KvResult<u64>> + Send {
        async move { Ok(self.commit(ops, Durability::Soft).await?.0) }
    }
    /// What a backend implements under `put`, `delete`, `txn` and `txn_soft`: applies the ops
    /// as [`Kv::txn`] does, durable as asked, and also says whether any of them changed
    /// something.
    fn commit(
        &self,
        ops: Vec<TxnOp>,
        durability: Durability,
    ) -> impl Future<Output = KvResult<(u64, bool)>> + Send;
}

/// Rejects a transaction that names a key twice.
fn distinct(ops: &[TxnOp]) -> KvResult<()> {
    let mut seen = std::collections::HashSet::new();
    match ops.iter().find(|op| !seen.insert(op.key.as_str())) {
        Some(op) => Err(KvError::Unavailable(format!(
            "a transaction names key {} twice",
            op.key
        ))),
        None => Ok(()),
    }
}

/// The changes `ops` make at revisions after `revision`, given each key's current entry
/// (deleting an absent key changes nothing).
fn changes(ops: Vec<TxnOp>, current: &[Option<KvEntry>], mut revision: u64) -> Vec<WatchEvent> {
    let mut out = Vec::with_capacity(ops.len());
    for (op, cur) in ops.into_iter().zip(current) {
        match op.value {
            Some(value) => {
                revision += 1;
                out.push(WatchEvent::Put(KvEntry {
                    create_revision: cur.as_ref().map_or(revision, |c| c.create_revision),
                    key: op.key,
                    value,
                    mod_revision: revision,
                }));
            }
            None if cur.is_some() => {
                revision += 1;
                out.push(WatchEvent::Delete {
                    key: op.key,
                    revision,
                });
            }
            None => {}
        }
    }
    out
}

/// What both backends share: the recent changes and the live feed.
struct Log {
    recent: VecDeque<WatchEvent>,
    live: broadcast::Sender<WatchEvent>,
}

impl Log {
    fn new() -> Self {
        Log {
            recent: VecDeque::new(),
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }

    fn record(&mut self, ev: WatchEvent) {
        if self.recent.len() as u64 >= HISTORY {
            self.recent.pop_front();
        }
        self.recent.push_back(ev.clone());
        let _ = self.live.send(ev);
    }

    /// Subscribes, and replays from history, under the caller's lock: nothing is missed or
    /// delivered twice between the two.
    fn watch(
        &self,
        prefix: &str,
        after: u64,
        now: u64,
    ) -> KvResult<mpsc::Receiver<KvResult<WatchEvent>>> {
        let oldest = self.recent.front().map_or(now + 1, WatchEvent::revision);
        if after != 0 && after + 1 < oldest && after < now {
            return Err(KvError::Compacted {
                from: after,
                oldest,
            });
        }
        let replay: Vec<WatchEvent> = self
            .recent
            .iter()
            .filter(|e| e.revision() > after && e.key().starts_with(prefix))
            .cloned()
            .collect();
        let mut live = self.live.subscribe();
        let (tx, rx) = mpsc::channel(1024);
        let prefix = prefix.to_string();
        let mut last = after.max(replay.last().map_or(0, WatchEvent::revision));
        tokio::spawn(async move {
            for ev in replay {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(ev) if ev.revision() > last && ev.key().starts_with(&prefix) => {
                        last = ev.revision();
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx.send(Err(KvError::Lagged(n))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(rx)
    }
}

fn check(key: &str, expect: Expect, current: Option<&KvEntry>) -> KvResult<()> {
    let holds = match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Revision(r) => current.is_some_and(|c| c.mod_revision == r),
    };
    if holds {
        Ok(())
    } else {
        Err(KvError::Conflict {
            key: key.to_string(),
            expected: expect,
            current: current.cloned(),
        })
    }
}

// === memory ===

/// Keys in memory: for tests and `--store memory`. Every write is as durable as the process.
#[derive(Clone, Default)]
pub struct MemKv {
    inner: Arc<Mutex<MemState>>,
}

struct MemState {
    data: BTreeMap<String, KvEntry>,
    revision: u64,
    log: Log,
}

impl Default for MemState {
    fn default() -> Self {
        MemState {
            data: BTreeMap::new(),
            revision: 0,
            log: Log::new(),
        }
    }
}

impl MemKv {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a transaction; returns the revision after it and whether it changed anything.
    fn apply(&self, ops: Vec<TxnOp>) -> KvResult<(u64, bool)> {
        distinct(&ops)?;
        let mut st = self.lock();
        let current: Vec<Option<KvEntry>> =
            ops.iter().map(|op| st.data.get(&op.key).cloned()).collect();
        for (op, cur) in ops.iter().zip(&current) {
            check(&op.key, op.expect, cur.as_ref())?;
        }
        let mut changed = false;
        for ev in changes(ops, &current, st.revision) {
            st.revision = ev.revision();
            match &ev {
                WatchEvent::Put(e) => {
                    st.data.insert(e.key.clone(), e.clone());
                }
                WatchEvent::Delete { key, .. } => {
                    st.data.remove(key);
                }
            }
            st.log.record(ev);
            changed = true;
        }
        Ok((st.revision, changed))
    }
}

impl Kv for MemKv {
    async fn get(&self, key: &str) -> KvResult<Option<KvEntry>> {
        Ok(self.lock().data.get(key).cloned())
    }

    async fn list_from(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
    ) -> KvResult<(Vec<KvEntry>, u64)> {
        let st = self.lock();
        let entries = st
            .data
            .range(start.max(prefix).to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect();
        Ok((entries, st.revision))
    }

    async fn commit(&self, ops: Vec<TxnOp>, _: Durability) -> KvResult<(u64, bool)> {
        self.apply(ops)
    }

    async fn watch(
        &self,
        prefix: &str,
        after: u64,
    ) -> KvResult<mpsc::Receiver<KvResult<WatchEvent>>> {
        let st = self.lock();
        st.log.watch(prefix, after, st.revision)
    }
}

// === redb ===

/// key → `mod_revision (8 bytes LE) · create_revision (8 bytes LE) · value`.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// revision → `p` + key + `\0` + value, or `d` + key: the kept history, for watches after a
/// restart.
const KV_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("kv_log");

/// Keys in a redb file. An immediate write is fsynced before it returns (on a blocking
/// thread); soft writes are committed without fsync and made durable together by a group commit
/// (an empty fsynced commit) at most [`FLUSH_EVERY`] later, or by the next immediate write,
/// whichever is first.
#[derive(Clone)]
pub struct RedbKv {
    db: Arc<Database>,
    state: Arc<Mutex<RedbState>>,
    sync: Arc<SyncState>,
}

struct RedbState {
    revision: u64,
    log: Log,
}

/// What the group commit needs, shared with its thread.
#[derive(Default)]
struct SyncState {
    /// A soft write is not durable yet.
    dirty: AtomicBool,
    /// Commits that reached the disk (fsynced): immediate writes and group commits.
    durable_commits: AtomicU64,
    /// Held by a group commit from taking `dirty` to its end: one waiting for it knows the
    /// soft writes it saw are durable.
    flushing: Mutex<()>,
}

impl SyncState {
    /// Makes every soft write so far durable (one fsync, if there is any).
    fn group_commit(&self, db: &Database) -> KvResult<()> {
        let _flushing = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let commit = || -> Result<(), redb::Error> {
            let mut tx = db.begin_write()?;
            tx.set_durability(redb::Durability::Immediate)?;
            tx.commit()?;
            Ok(())
        };
        match commit() {
            Ok(()) => {
                self.durable_commits.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Err(e) => {
                self.dirty.store(true, Ordering::Release);
                Err(unavailable(e))
            }
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(e.to_string())
}

fn decode_entry(key: &str, bytes: &[u8]) -> Option<KvEntry> {
    let mod_revision = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let create_revision = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some(KvEntry {
        key: key.to_string(),
        value: bytes[16..].to_vec(),
        create_revision,
        mod_revision,
    })
}

fn encode_entry(e: &KvEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + e.value.len());
    out.extend_from_slice(&e.mod_revision.to_le_bytes());
    out.extend_from_slice(&e.create_revision.to_le_bytes());
    out.extend_from_slice(&e.value);
    out
}

fn encode_event(ev: &WatchEvent) -> Vec<u8> {
    match ev {
        WatchEvent::Put(e) => {
            let mut out = vec![b'p'];
            out.extend_from_slice(e.key.as_bytes());
            out.push(0);
            out.extend_from_slice(&encode_entry(e));
            out
        }
        WatchEvent::Delete { key, .. } => {
            let mut out = vec![b'd'];
            out.extend_from_slice(key.as_bytes());
            out
        }
    }
}

fn decode_event(revision: u64, bytes: &[u8]) -> Option<WatchEvent> {
    match bytes.split_first()? {
        (b'p', rest) => {
            let nul = rest.iter().position(|b| *b == 0)?;
            let key = std::str::from_utf8(&rest[..nul]).ok()?;
            decode_entry(key, &rest[nul + 1..]).map(WatchEvent::Put)
        }
        (b'd', rest) => Some(WatchEvent::Delete {
            key: String::from_utf8(rest.to_vec()).ok()?,
            revision,
        }),
        _ => None,
    }
}

impl RedbKv {
    /// Opens (or creates) the key-value file at `path`.
    pub fn open(path: &Path) -> KvResult<RedbKv> {
        let db = Database::create(path)
            .map_err(|e| KvError::Unavailable(format!("opening {}: {e}", path.display())))?;
        let mut log = Log::new();
        let mut revision = 0;
        {
            let tx = db.begin_write().map_err(unavailable)?;
            tx.open_table(KV).map_err(unavailable)?;
            let history = tx.open_table(KV_LOG).map_err(unavailable)?;
            for row in history.iter().map_err(unavailable)? {
                let (rev, bytes) = row.map_err(unavailable)?;
                revision = rev.value();
                if let Some(ev) = decode_event(rev.value(), bytes.value()) {
                    log.recent.push_back(ev);
                }
            }
            drop(history);
            tx.commit().map_err(unavailable)?;
        }
        let kv = RedbKv {
            db: Arc::new(db),
            state: Arc::new(Mutex::new(RedbState { revision, log })),
            sync: Arc::new(SyncState::default()),
        };
        kv.start_flusher();
        Ok(kv)
    }

    /// Commits that reached the disk so far (immediate writes and group commits), for tests
    /// that check soft writes are batched.
    pub fn durable_commits(&self) -> u64 {
        self.sync.durable_commits.load(Ordering::Acquire)
    }

    /// Makes every soft write so far durable now (one fsync, if there is any): the group
    /// commit without waiting for it.
    pub fn flush(&self) -> KvResult<()> {
        self.sync.group_commit(&self.db)
    }

    /// The group commit's thread: every [`FLUSH_EVERY`], one fsynced empty commit if a soft
    /// write happened since the last durable one. It ends with the last handle on the file.
    fn start_flusher(&self) {
        let db: Weak<Database> = Arc::downgrade(&self.db);
        let sync = self.sync.clone();
        let spawned = std::thread::Builder::new()
            .name("kv-flush".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    let Some(db) = db.upgrade() else { return };
                    if let Err(e) = sync.group_commit(&db) {
                        tracing::warn!("kv: group commit: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("kv: no group-commit thread ({e}); soft writes stay undurable");
        }
    }

    fn lock(&self) -> MutexGuard<'_, RedbState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self, key: &str) -> KvResult<Option<KvEntry>> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let table = tx.open_table(KV).map_err(unavailable)?;
        Ok(table
            .get(key)
            .map_err(unavailable)?
            .and_then(|v| decode_entry(key, v.value())))
    }

    /// Applies a transaction's changes at the next revisions in one commit (checked and
    /// written in the same redb write transaction), durable as asked, then records them for
    /// watches.
    fn apply(&self, ops: Vec<TxnOp>, durability: Durability) -> KvResult<(u64, bool)> {
        distinct(&ops)?;
        let mut st = self.lock();
        let mut tx = self.db.begin_write().map_err(unavailable)?;
        tx.set_durability(match durability {
            Durability::Immediate => redb::Durability::Immediate,
            Durability::Soft => redb::Durability::None,
        })
        .map_err(unavailable)?;
        let events = {
            let mut table = tx.open_table(KV).map_err(unavailable)?;
            let mut current = Vec::with_capacity(ops.len());
            for op in &ops {
                let entry = table
                    .get(op.key.as_str())
                    .map_err(unavailable)?
                    .and_then(|v| decode_entry(&op.key, v.value()));
                check(&op.key, op.expect, entry.as_ref())?;
                current.push(entry);
            }
            let events = changes(ops, &current, st.revision);
            let mut history = tx.open_table(KV_LOG).map_err(unavailable)?;
            for ev in &events {
                match ev {
                    WatchEvent::Put(e) => {
                        table
                            .insert(e.key.as_str(), encode_entry(e).as_slice())
                            .map_err(unavailable)?;
                    }
                    WatchEvent::Delete { key, .. } => {
                        table.remove(key.as_str()).map_err(unavailable)?;
                    }
                }
                let revision = ev.revision();
                history
                    .insert(revision, encode_event(ev).as_slice())
                    .map_err(unavailable)?;
                if revision > HISTORY {
                    history.remove(revision - HISTORY).map_err(unavailable)?;
                }
            }
            events
        };
        let Some(last) = events.last().map(WatchEvent::revision) else {
            // Nothing changes: no commit, no revision. (A failed check above dropped the
            // transaction, which aborts it.)
            tx.abort().map_err(unavailable)?;
            return Ok((st.revision, false));
        };
        tx.commit().map_err(unavailable)?;
        match durability {
            Durability::Immediate => {
                // Durable, and so is every soft commit before it.
                self.sync.dirty.store(false, Ordering::Release);
                self.sync.durable_commits.fetch_add(1, Ordering::AcqRel);
            }
            Durability::Soft => self.sync.dirty.store(true, Ordering::Release),
        }
        st.revision = last;
        for ev in events {
            st.log.record(ev);
        }
        Ok((last, true))
    }
}

impl Kv for RedbKv {
    async fn get(&self, key: &str) -> KvResult<Option<KvEntry>> {
        self.read(key)
    }

    async fn list_from(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
    ) -> KvResult<(Vec<KvEntry>, u64)> {
        // Under the write lock: the entries and the revision belong together.
        let st = self.lock();
        let tx = self.db.begin_read().map_err(unavailable)?;
        let table = tx.open_table(KV).map_err(unavailable)?;
        let mut out = Vec::new();
        for row in table.range(start.max(prefix)..).map_err(unavailable)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(unavailable)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            if let Some(e) = decode_entry(k.value(), v.value()) {
                out.push(e);
            }
        }
        Ok((out, st.revision))
    }

    async fn commit(&self, ops: Vec<TxnOp>, durability: Durability) -> KvResult<(u64, bool)> {
        match durability {
            // An fsync: on a blocking thread, not on the async ones.
            Durability::Immediate => {
                let kv = self.clone();
                tokio::task::spawn_blocking(move || kv.apply(ops, durability))
                    .await
                    .map_err(unavailable)?
            }
            Durability::Soft => self.apply(ops, durability),
        }
    }

    async fn watch(
        &self,
        prefix: &str,
        after: u64,
    ) -> KvResult<mpsc::Receiver<KvResult<WatchEvent>>> {
        let st = self.lock();
        st.log.watch(prefix, after, st.revision)
    }
}

// === either ===

/// One of the backends, chosen at run time (the trait's async methods make it no `dyn` trait).
#[derive(Clone)]
pub enum AnyKv {
    Mem(MemKv),
    Redb(RedbKv),
}

macro_rules! each {
    ($self:ident, $kv:ident => $e:expr) => {
        match $self {
            AnyKv::Mem($kv) => $e,
            AnyKv::Redb($kv) => $e,
        }
    };
}

impl Kv for AnyKv {
    async fn get(&self, key: &str) -> KvResult<Option<KvEntry>> {
        each!(self, kv => kv.get(key).await)
    }

    async fn list(&self, prefix: &str) -> KvResult<(Vec<KvEntry>, u64)> {
        each!(self, kv => kv.list(prefix).await)
    }

    async fn list_from(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
    ) -> KvResult<(Vec<KvEntry>, u64)> {
        each!(self, kv => kv.list_from(prefix, start, limit).await)
    }

    async fn watch(
        &self,
        prefix: &str,
        after: u64,
    ) -> KvResult<mpsc::Receiver<KvResult<WatchEvent>>> {
        each!(self, kv => kv.watch(prefix, after).await)
    }

    async fn commit(&self, ops: Vec<TxnOp>, durability: Durability) -> KvResult<(u64, bool)> {
        each!(self, kv => kv.commit(ops, durability).await)
    }
}
