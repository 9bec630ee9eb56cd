//! [`Store`]: releases, stacks, controls, observed instances and events over any [`Kv`].

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use skiff_model::{
    Author, Cause, Event, Instance, InstanceId, NewEvent, Release, StackKey, StackSpec,
};

use crate::kv::{AnyKv, Expect, Kv, KvEntry, KvError, TxnOp};
use crate::{Controls, FORMAT_VERSION, Result, StackState, StoreError};

pub(crate) const META_FORMAT: &str = "meta/format";
pub(crate) const META_CLUSTER_ID: &str = "meta/cluster_id";
pub(crate) const META_EVENT_SEQ: &str = "meta/event_seq";
pub(crate) const META_IMPORTED: &str = "meta/imported";
const STACKS: &str = "stacks/";
const RELEASES: &str = "releases/";
const CONTROLS: &str = "controls/";
const INSTANCES: &str = "instances/";
const EVENTS: &str = "events/";

/// Events kept: appending one removes those numbered this far or further below it.
pub const EVENTS_KEPT: u64 = 10_000;

/// Event numbers a process reserves at once (one durable write per block).
const EVENT_SEQ_BLOCK: u64 = 1_000;

/// Observed changes written in one soft transaction at most.
const OBSERVED_PER_TXN: usize = 1_024;

/// Compare-and-swap attempts before an update gives up.
const TRIES: u32 = 100;

/// What a stack's record says: the release that should run and the number the next one gets.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StackRecord {
    pub current: Option<u64>,
    pub next: u64,
}

impl Default for StackRecord {
    fn default() -> Self {
        StackRecord {
            current: None,
            next: 1,
        }
    }
}

/// One observed change, as agents report them: written in order, as soft writes.
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// An instance's latest state.
    Instance(Instance),
    /// An instance that no longer exists.
    Removed(InstanceId),
    /// Something that happened; it gets the next event number.
    Event(NewEvent),
}

/// The control plane's state over a [`Kv`] (see the crate docs for the key layout). Cheap to
/// clone; clones share the kv and the event numbering.
#[derive(Clone)]
pub struct Store<K: Kv = AnyKv> {
    kv: K,
    cluster_id: Arc<str>,
    /// This process's event numbers, taken and written under this lock so that they reach the
    /// kv in order.
    seq: Arc<tokio::sync::Mutex<Seq>>,
}

/// Event numbers this process owns: `next..=reserved` (`next == 0`: none yet).
#[derive(Default)]
struct Seq {
    next: u64,
    reserved: u64,
}

pub(crate) fn stack_path(stack: &StackKey) -> String {
    format!("{}/{}", stack.env, stack.stack)
}

pub(crate) fn stack_key(stack: &StackKey) -> String {
    format!("{STACKS}{}", stack_path(stack))
}

pub(crate) fn controls_key(stack: &StackKey) -> String {
    format!("{CONTROLS}{}", stack_path(stack))
}

fn releases_prefix(stack: &StackKey) -> String {
    format!("{RELEASES}{}/", stack_path(stack))
}

pub(crate) fn release_key(stack: &StackKey, number: u64) -> String {
    format!("{}{number:020}", releases_prefix(stack))
}

fn instances_prefix(stack: &StackKey) -> String {
    format!("{INSTANCES}{}/", stack_path(stack))
}

/// Sorts instances by stack, service, then numeric index (`web-2` before `web-10`).
pub(crate) fn instance_key(id: &InstanceId) -> String {
    format!(
        "{}{}/{:010}",
        instances_prefix(&id.stack),
        id.service,
        id.index
    )
}

pub(crate) fn event_key(seq: u64) -> String {
    format!("{EVENTS}{seq:020}")
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

fn decode_entry<T: serde::de::DeserializeOwned>(e: &KvEntry) -> Result<T> {
    decode(&e.key, &e.value)
}

pub(crate) fn encode<T: serde::Serialize>(key: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: format!("cannot encode: {e}"),
    })
}

/// The stack of an `<env>/<stack>` path.
pub(crate) fn parse_stack_path(path: &str) -> Option<StackKey> {
    let (env, stack) = path.split_once('/')?;
    (!stack.contains('/')).then(|| StackKey {
        env: env.to_string(),
        stack: stack.to_string(),
    })
}

/// The stack of a `stacks/` or `controls/` key.
fn stack_of(key: &str, prefix: &str) -> Result<StackKey> {
    key.strip_prefix(prefix)
        .and_then(parse_stack_path)
        .ok_or_else(|| StoreError::Corrupt {
            key: key.to_string(),
            message: format!("not {prefix}<env>/<stack>"),
        })
}

/// The writes that set the layout up in an empty kv (conditional on that).
pub(crate) fn layout_ops(cluster_id: &str) -> Result<Vec<TxnOp>> {
    Ok(vec![
        TxnOp::put(
            META_FORMAT,
            encode(META_FORMAT, &FORMAT_VERSION)?,
            Expect::Absent,
        ),
        TxnOp::put(
            META_CLUSTER_ID,
            encode(META_CLUSTER_ID, &cluster_id)?,
            Expect::Absent,
        ),
    ])
}

/// The expectation that the key is still as `entry` was read (absent if it was).
fn as_read(entry: Option<&KvEntry>) -> Expect {
    entry.map_or(Expect::Absent, |e| Expect::Revision(e.mod_revision))
}

impl<K: Kv> Store<K> {
    /// Opens the state in `kv`, initialising the layout (with `new_cluster_id`) when the kv has
    /// none yet; a layout newer than this skiff's is refused.
    pub async fn open(kv: K, new_cluster_id: &str) -> Result<Self> {
        Self::init(kv, new_cluster_id, None).await
    }

    /// [`Store::open`], but a kv without the layout first gets everything in the former
    /// `state.redb` at `legacy`, if that file exists, which is then renamed to
    /// `state.redb.imported` (its cluster id is kept; `new_cluster_id` is not used then).
    pub async fn open_importing(kv: K, new_cluster_id: &str, legacy: &Path) -> Result<Self> {
        Self::init(kv, new_cluster_id, Some(legacy)).await
    }

    async fn init(kv: K, new_cluster_id: &str, legacy: Option<&Path>) -> Result<Self> {
        for _ in 0..TRIES {
            if let Some(format) = kv.get(META_FORMAT).await? {
                let found: u64 = decode_entry(&format)?;
                if found > FORMAT_VERSION {
                    return Err(StoreError::NewerFormat { found });
                }
                if let Some(path) = legacy.filter(|p| p.exists()) {
                    if kv.get(META_IMPORTED).await?.is_some() {
                        // Imported, but the rename did not happen (a crash in between).
                        crate::legacy::set_aside(path);
                    } else {
                        tracing::warn!(
                            "{} is not imported: the store in this data dir was set up without it",
                            path.display()
                        );
                    }
                }
                let id = kv
                    .get(META_CLUSTER_ID)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt {
                        key: META_CLUSTER_ID.into(),
                        message: "missing".into(),
                    })?;
                return Ok(Store {
                    cluster_id: decode_entry::<String>(&id)?.into(),
                    kv,
                    seq: Arc::default(),
                });
            }
            let import = match legacy.filter(|p| p.exists()) {
                Some(path) => Some((path, crate::legacy::import_ops(path).await?)),
                None => None,
            };
            let ops = match &import {
                Some((_, ops)) => ops.clone(),
                None => layout_ops(new_cluster_id)?,
            };
            match kv.txn(ops).await {
                Ok(_) => {
                    if let Some((path, ops)) = import {
                        tracing::info!(
                            "imported {} ({} keys) into the store",
                            path.display(),
                            ops.len()
                        );
                        crate::legacy::set_aside(path);
                    }
                }
                // Set up by another at the same time: read what it wrote.
                Err(KvError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contended {
            key: META_FORMAT.into(),
            tries: TRIES,
        })
    }
}

impl<K: Kv> Store<K> {
    /// The kv underneath, for keys of the caller's own (see [`crate::KEY_PREFIXES`]).
    pub fn kv(&self) -> &K {
        &self.kv
    }

    /// The random id this data dir got at init.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Records a new release (by `author`, made by `cause`) with the stack's next number and
    /// makes it the current one, in one durable transaction conditional on the stack record it
    /// read.
    pub async fn create_release(
        &self,
        stack: &StackKey,
        spec: StackSpec,
        source: String,
        now_ms: u64,
        author: Author,
        cause: Cause,
    ) -> Result<Release> {
        let draft = Release {
            stack: stack.clone(),
            number: 0,
            created_ms: now_ms,
            spec,
            source,
            author,
            cause,
        };
        self.create_release_with(draft, |_| (Vec::new(), Vec::new()))
            .await
            .map(|(release, _)| release)
    }

    /// [`Store::create_release`] of `draft` (its number is assigned), with the caller's writes
    /// and events that depend on the release (its number) in the same transaction: all of it
    /// happened, or none of it. Returns the release and the revision of the last of the
    /// caller's writes.
    pub async fn create_release_with(
        &self,
        draft: Release,
        with: impl Fn(&Release) -> (Vec<TxnOp>, Vec<NewEvent>),
    ) -> Result<(Release, u64)> {
        let key = stack_key(&draft.stack);
        let mut release = draft;
        for _ in 0..TRIES {
            let entry = self.kv.get(&key).await?;
            let mut record: StackRecord = match &entry {
                Some(e) => decode_entry(e)?,
                None => StackRecord::default(),
            };
            release.number = record.next.max(1);
            record.current = Some(release.number);
            record.next = release.number + 1;
            let release_key = release_key(&release.stack, release.number);
            // The record first: a writer that raced this one conflicts on it. The release's
            // own key conflicts only when the record lies about the numbers taken.
            let mut ops = vec![
                TxnOp::put(key.clone(), encode(&key, &record)?, as_read(entry.as_ref())),
                TxnOp::put(
                    release_key.clone(),
                    encode(&release_key, &release)?,
                    Expect::Absent,
                ),
            ];
            let (extra, events) = with(&release);
            ops.extend(extra);
            match self.commit_with_events(ops, events).await {
                Ok((revision, _)) => return Ok((release, revision)),
                Err(StoreError::Kv(KvError::Conflict { key: k, .. })) if k == release_key => {
                    return Err(StoreError::Corrupt {
                        key,
                        message: format!("release {} exists already", release.number),
                    });
                }
                Err(StoreError::Kv(KvError::Conflict { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Contended { key, tries: TRIES })
    }

    /// Commits `ops` and `events` (numbered here, after every event written before) in one
    /// durable transaction: what a caller decided and what it tells of it happen together,
    /// or not at all, even across a `kill -9`. Returns the revision of the last of `ops`
    /// (events take the ones after it) and the numbered events. A conflict leaves a gap in
    /// the event numbers, never a reused one.
    pub async fn commit_with_events(
        &self,
        mut ops: Vec<TxnOp>,
        events: Vec<NewEvent>,
    ) -> Result<(u64, Vec<Event>)> {
        if events.is_empty() {
            return Ok((self.kv.txn(ops).await?, Vec::new()));
        }
        // Held until the write is done: numbers reach the kv in order.
        let mut seq = self.seq.lock().await;
        let mut next = self.take_seqs(&mut seq, events.len() as u64).await?;
        let mut numbered = Vec::with_capacity(events.len());
        for e in events {
            let event = e.numbered(next);
            next += 1;
            let key = event_key(event.seq);
            ops.push(TxnOp::put(key.clone(), encode(&key, &event)?, Expect::Any));
            numbered.push(event);
        }
        let revision = self.kv.txn(ops).await?;
        drop(seq);
        Ok((revision - numbered.len() as u64, numbered))
    }

    pub async fn release(&self, stack: &StackKey, number: u64) -> Result<Option<Release>> {
        self.kv
            .get(&release_key(stack, number))
            .await?
            .map(|e| decode_entry(&e))
            .transpose()
    }

    /// Every release of the stack, oldest first.
    pub async fn releases(&self, stack: &StackKey) -> Result<Vec<Release>> {
        let (entries, _) = self.kv.list(&releases_prefix(stack)).await?;
        entries.iter().map(decode_entry).collect()
    }

    /// Sets which release should run; `None` takes the stack down (its history stays).
    pub async fn set_current(&self, stack: &StackKey, number: Option<u64>) -> Result<()> {
        let key = stack_key(stack);
        for _ in 0..TRIES {
            let entry = self.kv.get(&key).await?;
            let mut record: StackRecord = match &entry {
                Some(e) => decode_entry(e)?,
                None => StackRecord::default(),
            };
            record.current = number;
            match self
                .kv
                .put(&key, encode(&key, &record)?, as_read(entry.as_ref()))
                .await
            {
                Ok(_) => return Ok(()),
                Err(KvError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contended { key, tries: TRIES })
    }

    /// Every stack that has had a release, with its current release and controls, by key.
    pub async fn stacks(&self) -> Result<Vec<StackState>> {
        self.stacks_within("").await
    }

    /// The stacks of environment `env` (a prefix read, not a scan of every stack).
    pub async fn env_stacks(&self, env: &str) -> Result<Vec<StackState>> {
        self.stacks_within(&format!("{env}/")).await
    }

    /// Stacks whose key (`<env>/<stack>`) starts with `within`.
    async fn stacks_within(&self, within: &str) -> Result<Vec<StackState>> {
        let (records, _) = self.kv.list(&format!("{STACKS}{within}")).await?;
        let (controls, _) = self.kv.list(&format!("{CONTROLS}{within}")).await?;
        let mut controls: BTreeMap<StackKey, Controls> = controls
            .iter()
            .map(|e| Ok((stack_of(&e.key, CONTROLS)?, decode_entry(e)?)))
            .collect::<Result<_>>()?;
        records
            .iter()
            .map(|e| {
                let stack = stack_of(&e.key, STACKS)?;
                let record: StackRecord = decode_entry(e)?;
                Ok(StackState {
                    controls: controls.remove(&stack).unwrap_or_default(),
                    stack,
                    current: record.current,
                })
            })
            .collect()
    }

    /// Changes a stack's service controls with `f` (which may run again if another writer
    /// changed them meanwhile) in one durable compare-and-swap; returns them. Controls back at
    /// their defaults are not kept.
    pub async fn update_controls(
        &self,
        stack: &StackKey,
        mut f: impl FnMut(&mut Controls) + Send,
    ) -> Result<Controls> {
        let key = controls_key(stack);
        for _ in 0..TRIES {
            let entry = self.kv.get(&key).await?;
            let before: Controls = match &entry {
                Some(e) => decode_entry(e)?,
                None => Controls::new(),
            };
            let mut controls = before.clone();
            f(&mut controls);
            controls.retain(|_, c| *c != Default::default());
            if controls == before {
                return Ok(controls);
            }
            let written = if controls.is_empty() {
                self.kv
                    .delete(&key, as_read(entry.as_ref()))
                    .await
                    .map(drop)
            } else {
                self.kv
                    .put(&key, encode(&key, &controls)?, as_read(entry.as_ref()))
                    .await
                    .map(drop)
            };
            match written {
                Ok(()) => return Ok(controls),
                Err(KvError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contended { key, tries: TRIES })
    }

    /// Records an instance's latest state (a soft write).
    pub async fn put_instance(&self, instance: &Instance) -> Result<()> {
        self.observe(vec![Observed::Instance(instance.clone())])
            .await
            .map(drop)
    }

    /// Forgets an instance (a soft write).
    pub async fn delete_instance(&self, id: &InstanceId) -> Result<()> {
        self.observe(vec![Observed::Removed(id.clone())])
            .await
            .map(drop)
    }

    /// Instances of one stack, or of all stacks, ordered by stack, service and index.
    pub async fn instances(&self, stack: Option<&StackKey>) -> Result<Vec<Instance>> {
        let prefix = stack.map_or_else(|| INSTANCES.to_string(), instances_prefix);
        let (entries, _) = self.kv.list(&prefix).await?;
        entries.iter().map(decode_entry).collect()
    }

    /// Appends an event (a soft write) and returns it with its number.
    pub async fn append_event(&self, event: NewEvent) -> Result<Event> {
        let mut out = self.observe(vec![Observed::Event(event)]).await?;
        out.pop().ok_or_else(|| StoreError::Corrupt {
            key: EVENTS.into(),
            message: "an appended event got no number".into(),
        })
    }

    /// Events with `seq > after`, oldest first, at most `limit`.
    pub async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        if limit == 0 || after == u64::MAX {
            return Ok(Vec::new());
        }
        let (entries, _) = self
            .kv
            .list_from(EVENTS, &event_key(after + 1), limit)
            .await?;
        entries.iter().map(decode_entry).collect()
    }

    /// Writes observed changes in their order, as soft writes, in as few transactions as
    /// their keys allow (a transaction names a key once: a second change of an instance starts
    /// the next one). Returns the events with their numbers.
    pub async fn observe(&self, changes: Vec<Observed>) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        let mut batch = Vec::new();
        let mut keys = HashSet::new();
        for change in changes {
            let key = match &change {
                Observed::Instance(i) => Some(instance_key(&i.id)),
                Observed::Removed(id) => Some(instance_key(id)),
                Observed::Event(_) => None,
            };
            if batch.len() >= OBSERVED_PER_TXN || key.as_ref().is_some_and(|k| keys.contains(k)) {
                events.extend(self.write_observed(std::mem::take(&mut batch)).await?);
                keys.clear();
            }
            keys.extend(key);
            batch.push(change);
        }
        if !batch.is_empty() {
            events.extend(self.write_observed(batch).await?);
        }
        Ok(events)
    }

    /// One soft transaction of changes to distinct instances and of events (numbered here),
    /// with the removal of events past [`EVENTS_KEPT`].
    async fn write_observed(&self, batch: Vec<Observed>) -> Result<Vec<Event>> {
        let count = batch
            .iter()
            .filter(|c| matches!(c, Observed::Event(_)))
            .count() as u64;
        // Held until the write is done: numbers reach the kv in order.
        let mut seq = match count {
            0 => None,
            _ => Some(self.seq.lock().await),
        };
        let mut next = match seq.as_deref_mut() {
            Some(seq) => self.take_seqs(seq, count).await?,
            None => 0,
        };
        let mut ops = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(count as usize);
        for change in batch {
            match change {
                Observed::Instance(i) => {
                    let key = instance_key(&i.id);
                    ops.push(TxnOp::put(key.clone(), encode(&key, &i)?, Expect::Any));
                }
                Observed::Removed(id) => ops.push(TxnOp::delete(instance_key(&id), Expect::Any)),
                Observed::Event(e) => {
                    let event = e.numbered(next);
                    next += 1;
                    let key = event_key(event.seq);
                    ops.push(TxnOp::put(key.clone(), encode(&key, &event)?, Expect::Any));
                    events.push(event);
                }
            }
        }
        if let Some(last) = events.last().map(|e| e.seq)
            && last > EVENTS_KEPT
        {
            // The oldest kept events, a few more than this write adds: those numbered too far
            // below the newest go.
            let below = event_key(last - EVENTS_KEPT + 1);
            let (oldest, _) = self.kv.list_from(EVENTS, EVENTS, events.len() + 16).await?;
            ops.extend(
                oldest
                    .into_iter()
                    .filter(|e| e.key < below)
                    .map(|e| TxnOp::delete(e.key, Expect::Any)),
            );
        }
        self.kv.txn_soft(ops).await?;
        drop(seq);
        Ok(events)
    }

    /// The first of `count` event numbers for this process, reserving a further block durably
    /// when its own run out. After a restart (or when another process reserved since), numbers
    /// go on after the last reservation: ones handed out before a crash are never reused.
    async fn take_seqs(&self, seq: &mut Seq, count: u64) -> Result<u64> {
        if seq.next != 0 && seq.next + count - 1 <= seq.reserved {
            let first = seq.next;
            seq.next += count;
            return Ok(first);
        }
        for _ in 0..TRIES {
            let entry = self.kv.get(META_EVENT_SEQ).await?;
            let durable: u64 = match &entry {
                Some(e) => decode_entry(e)?,
                None => 0,
            };
            let first = if seq.next != 0 && seq.reserved == durable {
                seq.next
            } else {
                durable + 1
            };
            let reserved = first + count - 1 + EVENT_SEQ_BLOCK;
            match self
                .kv
                .put(
                    META_EVENT_SEQ,
                    encode(META_EVENT_SEQ, &reserved)?,
                    as_read(entry.as_ref()),
                )
                .await
            {
                Ok(_) => {
                    seq.next = first + count;
                    seq.reserved = reserved;
                    return Ok(first);
                }
                Err(KvError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contended {
            key: META_EVENT_SEQ.into(),
            tries: TRIES,
        })
    }
}
