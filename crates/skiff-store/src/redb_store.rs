//! The durable store: one redb file under the data dir.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use skiff_model::{Event, Instance, InstanceId, Release, StackKey, StackSpec};

use crate::{
    Controls, FORMAT_VERSION, NewEvent, Result, StackState, Store, StoreError, decode, encode,
    instance_key, release_key, stack_prefix,
};

/// Key → JSON value tables.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const RELEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("releases");
const CURRENT: TableDefinition<&str, &[u8]> = TableDefinition::new("current");
/// `<env>/<stack>/` → `{service: ServiceControl}`.
const CONTROLS: TableDefinition<&str, &[u8]> = TableDefinition::new("controls");
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

pub struct RedbStore {
    db: Arc<Database>,
    path: String,
    /// Set by a soft write; the flusher makes it durable within [`FLUSH_EVERY`].
    dirty: Arc<AtomicBool>,
}

/// How long a soft write (event, observed instance state) may stay undurable: a group
/// commit every this often persists all of them with one fsync.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbStore {
    /// Opens the store at `path`, creating it (with `new_cluster_id`) when absent.
    pub fn open(path: &Path, new_cluster_id: &str) -> Result<Self> {
        let shown = path.display().to_string();
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let store = RedbStore {
            db: Arc::new(db),
            path: shown,
            dirty: Arc::new(AtomicBool::new(false)),
        };
        store.init(new_cluster_id)?;
        store.start_flusher();
        Ok(store)
    }

    /// Group commit: an empty `Durability::Immediate` transaction makes every earlier
    /// `Durability::None` commit durable. The thread ends with the store.
    fn start_flusher(&self) {
        let db: Weak<Database> = Arc::downgrade(&self.db);
        let dirty = self.dirty.clone();
        let spawned = std::thread::Builder::new()
            .name("store-flush".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    let Some(db) = db.upgrade() else { return };
                    if !dirty.swap(false, Ordering::AcqRel) {
                        continue;
                    }
                    if let Err(e) = group_commit(&db) {
                        tracing::warn!("store: group commit: {e}");
                        dirty.store(true, Ordering::Release);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("store: no group-commit thread ({e}); soft writes stay undurable");
        }
    }

    fn init(&self, new_cluster_id: &str) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(backend)?;
        tx.set_durability(Durability::Immediate).map_err(backend)?;
        {
            let mut meta = tx.open_table(META).map_err(backend)?;
            let version = meta
                .get("format_version")
                .map_err(backend)?
                .map(|v| decode::<u64>("format_version", v.value()))
                .transpose()?;
            match version {
                Some(v) if v > FORMAT_VERSION => {
                    return Err(StoreError::NewerFormat {
                        path: self.path.clone(),
                        found: v,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert("format_version", encode(&FORMAT_VERSION)?.as_slice())
                        .map_err(backend)?;
                    meta.insert("cluster_id", encode(&new_cluster_id)?.as_slice())
                        .map_err(backend)?;
                }
            }
            // Create every table so readers never meet a missing one.
            tx.open_table(RELEASES).map_err(backend)?;
            tx.open_table(CURRENT).map_err(backend)?;
            tx.open_table(CONTROLS).map_err(backend)?;
            tx.open_table(INSTANCES).map_err(backend)?;
            tx.open_table(EVENTS).map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    /// A durable write: fsynced before it returns (releases, desired state).
    fn write<T>(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<T>) -> Result<T> {
        self.write_with(Durability::Immediate, f)
    }

    /// A fast write that a crash may roll back to the last durable one: observed instance
    /// state and events, which the agent rebuilds from instance directories anyway.
    fn write_soft<T>(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<T>) -> Result<T> {
        let out = self.write_with(Durability::None, f)?;
        self.dirty.store(true, Ordering::Release);
        Ok(out)
    }

    fn write_with<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        let mut tx = self.db.begin_write().map_err(backend)?;
        tx.set_durability(durability).map_err(backend)?;
        let out = f(&tx)?;
        tx.commit().map_err(backend)?;
        Ok(out)
    }

    fn read_prefix<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        prefix: &str,
    ) -> Result<Vec<T>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(table).map_err(backend)?;
        let mut out = Vec::new();
        for item in t.range(prefix..).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }
}

fn group_commit(db: &Database) -> std::result::Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    tx.commit()?;
    Ok(())
}

impl Store for RedbStore {
    fn cluster_id(&self) -> Result<String> {
        let tx = self.db.begin_read().map_err(backend)?;
        let meta = tx.open_table(META).map_err(backend)?;
        let v = meta
            .get("cluster_id")
            .map_err(backend)?
            .ok_or_else(|| StoreError::Corrupt {
                key: "cluster_id".into(),
                message: "missing".into(),
            })?;
        decode("cluster_id", v.value())
    }

    fn create_release(
        &self,
        stack: &StackKey,
        spec: StackSpec,
        source: String,
        now_ms: u64,
    ) -> Result<Release> {
        self.write(|tx| {
            let mut releases = tx.open_table(RELEASES).map_err(backend)?;
            let prefix = stack_prefix(stack);
            let last = releases
                .range(prefix.as_str()..)
                .map_err(backend)?
                .map_while(|item| {
                    item.ok()
                        .filter(|(k, _)| k.value().starts_with(&prefix))
                        .map(|(k, _)| k.value().to_string())
                })
                .last();
            let number = match last {
                Some(k) => {
                    k[prefix.len()..]
                        .parse::<u64>()
                        .map_err(|e| StoreError::Corrupt {
                            key: k.clone(),
                            message: e.to_string(),
                        })?
                        + 1
                }
                None => 1,
            };
            let release = crate::new_release(stack, number, spec, source, now_ms);
            releases
                .insert(
                    release_key(stack, number).as_str(),
                    encode(&release)?.as_slice(),
                )
                .map_err(backend)?;
            let mut current = tx.open_table(CURRENT).map_err(backend)?;
            current
                .insert(prefix.as_str(), encode(&Some(number))?.as_slice())
                .map_err(backend)?;
            Ok(release)
        })
    }

    fn release(&self, stack: &StackKey, number: u64) -> Result<Option<Release>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(RELEASES).map_err(backend)?;
        let key = release_key(stack, number);
        t.get(key.as_str())
            .map_err(backend)?
            .map(|v| decode(&key, v.value()))
            .transpose()
    }

    fn releases(&self, stack: &StackKey) -> Result<Vec<Release>> {
        self.read_prefix(RELEASES, &stack_prefix(stack))
    }

    fn set_current(&self, stack: &StackKey, number: Option<u64>) -> Result<()> {
        self.write(|tx| {
            let mut current = tx.open_table(CURRENT).map_err(backend)?;
            current
                .insert(stack_prefix(stack).as_str(), encode(&number)?.as_slice())
                .map_err(backend)?;
            Ok(())
        })
    }

    fn stacks(&self) -> Result<Vec<StackState>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(CURRENT).map_err(backend)?;
        let controls = tx.open_table(CONTROLS).map_err(backend)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let key = k.value();
            let mut parts = key.trim_end_matches('/').splitn(2, '/');
            let (Some(env), Some(stack)) = (parts.next(), parts.next()) else {
                return Err(StoreError::Corrupt {
                    key: key.to_string(),
                    message: "not <env>/<stack>/".into(),
                });
            };
            out.push(StackState {
                stack: StackKey {
                    env: env.to_string(),
                    stack: stack.to_string(),
                },
                current: decode(key, v.value())?,
                controls: controls
                    .get(key)
                    .map_err(backend)?
                    .map(|c| decode(key, c.value()))
                    .transpose()?
                    .unwrap_or_default(),
            });
        }
        Ok(out)
    }

    fn update_controls(
        &self,
        stack: &StackKey,
        f: &mut dyn FnMut(&mut Controls),
    ) -> Result<Controls> {
        self.write(|tx| {
            let mut t = tx.open_table(CONTROLS).map_err(backend)?;
            let key = stack_prefix(stack);
            let mut controls: Controls = t
                .get(key.as_str())
                .map_err(backend)?
                .map(|v| decode(&key, v.value()))
                .transpose()?
                .unwrap_or_default();
            f(&mut controls);
            controls.retain(|_, c| *c != Default::default());
            t.insert(key.as_str(), encode(&controls)?.as_slice())
                .map_err(backend)?;
            Ok(controls)
        })
    }

    fn put_instance(&self, instance: &Instance) -> Result<()> {
        self.write_soft(|tx| {
            let mut t = tx.open_table(INSTANCES).map_err(backend)?;
            t.insert(
                instance_key(&instance.id).as_str(),
                encode(instance)?.as_slice(),
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    fn delete_instance(&self, id: &InstanceId) -> Result<()> {
        self.write_soft(|tx| {
            let mut t = tx.open_table(INSTANCES).map_err(backend)?;
            t.remove(instance_key(id).as_str()).map_err(backend)?;
            Ok(())
        })
    }

    fn instances(&self, stack: Option<&StackKey>) -> Result<Vec<Instance>> {
        let prefix = stack.map(stack_prefix).unwrap_or_default();
        self.read_prefix(INSTANCES, &prefix)
    }

    fn append_event(&self, e: NewEvent) -> Result<Event> {
        self.write_soft(|tx| {
            let mut t = tx.open_table(EVENTS).map_err(backend)?;
            let seq = t.last().map_err(backend)?.map_or(0, |(k, _)| k.value()) + 1;
            let event = e.numbered(seq);
            t.insert(seq, encode(&event)?.as_slice()).map_err(backend)?;
            Ok(event)
        })
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(EVENTS).map_err(backend)?;
        let mut out = Vec::new();
        for item in t
            .range(after.saturating_add(1)..)
            .map_err(backend)?
            .take(limit)
        {
            let (k, v) = item.map_err(backend)?;
            out.push(decode(&k.value().to_string(), v.value())?);
        }
        Ok(out)
    }
}
