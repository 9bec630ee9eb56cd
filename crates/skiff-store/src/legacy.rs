//! The former `state.redb` (the synchronous `RedbStore`, format 1), read once to import it.
//!
//! Its tables: `meta` (`format_version`, `cluster_id`), `releases` (`<env>/<stack>/<n:020>`),
//! `current` (`<env>/<stack>/` → the current number or null), `controls` (`<env>/<stack>/` →
//! `{service: ServiceControl}`), `instances` (`<env>/<stack>/<service>/<index:010>`) and
//! `events` (seq → event); every value JSON of the model types, as now.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use skiff_model::{Event, Instance, Release, StackKey};

use crate::kv::{Expect, TxnOp};
use crate::store::{
    META_EVENT_SEQ, META_IMPORTED, StackRecord, controls_key, decode, encode, event_key,
    instance_key, layout_ops, parse_stack_path, release_key, stack_key,
};
use crate::{Controls, EVENTS_KEPT, Result, StoreError};

/// The only format `state.redb` ever had.
const LEGACY_FORMAT: u64 = 1;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const RELEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("releases");
const CURRENT: TableDefinition<&str, &[u8]> = TableDefinition::new("current");
const CONTROLS: TableDefinition<&str, &[u8]> = TableDefinition::new("controls");
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// Where an imported file is moved: next to it, `state.redb.imported`.
fn imported_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".imported");
    path.with_file_name(name)
}

/// Moves an imported file aside, so it is not imported again and not mistaken for live state.
pub(crate) fn set_aside(path: &Path) {
    let to = imported_path(path);
    match std::fs::rename(path, &to) {
        Ok(()) => tracing::info!("{} renamed to {}", path.display(), to.display()),
        Err(e) => tracing::warn!(
            "imported {} but could not rename it to {}: {e}",
            path.display(),
            to.display()
        ),
    }
}

/// Everything in the file at `path` as the writes of the kv's first transaction: the layout's
/// format, the file's cluster id, stacks, releases, controls, instances and the last
/// [`EVENTS_KEPT`] events, each with its number. Read on a blocking thread.
pub(crate) async fn import_ops(path: &Path) -> Result<Vec<TxnOp>> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || read(&owned))
        .await
        .map_err(|e| StoreError::Import {
            path: path.display().to_string(),
            message: e.to_string(),
        })?
}

fn read(path: &Path) -> Result<Vec<TxnOp>> {
    let shown = path.display().to_string();
    let failed = |e: &dyn std::fmt::Display| StoreError::Import {
        path: shown.clone(),
        message: e.to_string(),
    };
    let db = Database::open(path).map_err(|e| failed(&e))?;
    let tx = db.begin_read().map_err(|e| failed(&e))?;

    // Each table as (key, value) rows; a table the file does not have is empty.
    macro_rules! rows {
        ($table:expr) => {{
            let mut out = Vec::new();
            match tx.open_table($table) {
                Ok(t) => {
                    for row in t.iter().map_err(|e| failed(&e))? {
                        let (k, v) = row.map_err(|e| failed(&e))?;
                        out.push((k.value().to_owned(), v.value().to_vec()));
                    }
                }
                Err(TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(failed(&e)),
            }
            out
        }};
    }

    let meta: BTreeMap<String, Vec<u8>> = rows!(META).into_iter().collect();
    let format: u64 = match meta.get("format_version") {
        Some(v) => decode("format_version", v)?,
        None => LEGACY_FORMAT,
    };
    if format > LEGACY_FORMAT {
        return Err(StoreError::NewerFormat { found: format });
    }
    let cluster_id: String = decode(
        "cluster_id",
        meta.get("cluster_id").ok_or_else(|| StoreError::Import {
            path: shown.clone(),
            message: "no cluster id".into(),
        })?,
    )?;

    let mut ops = layout_ops(&cluster_id)?;
    ops.push(TxnOp::put(
        META_IMPORTED,
        encode(META_IMPORTED, &shown)?,
        Expect::Any,
    ));

    let mut stacks: BTreeMap<StackKey, StackRecord> = BTreeMap::new();
    for (key, value) in rows!(RELEASES) {
        let release: Release = decode(&key, &value)?;
        let record = stacks.entry(release.stack.clone()).or_default();
        record.next = record.next.max(release.number + 1);
        let new_key = release_key(&release.stack, release.number);
        ops.push(TxnOp::put(
            new_key.clone(),
            encode(&new_key, &release)?,
            Expect::Any,
        ));
    }
    for (key, value) in rows!(CURRENT) {
        let current: Option<u64> = decode(&key, &value)?;
        stacks.entry(old_stack(&key)?).or_default().current = current;
    }
    for (stack, record) in &stacks {
        let key = stack_key(stack);
        ops.push(TxnOp::put(key.clone(), encode(&key, record)?, Expect::Any));
    }
    for (key, value) in rows!(CONTROLS) {
        let mut controls: Controls = decode(&key, &value)?;
        controls.retain(|_, c| *c != Default::default());
        if !controls.is_empty() {
            let new_key = controls_key(&old_stack(&key)?);
            ops.push(TxnOp::put(
                new_key.clone(),
                encode(&new_key, &controls)?,
                Expect::Any,
            ));
        }
    }
    for (key, value) in rows!(INSTANCES) {
        let instance: Instance = decode(&key, &value)?;
        let new_key = instance_key(&instance.id);
        ops.push(TxnOp::put(
            new_key.clone(),
            encode(&new_key, &instance)?,
            Expect::Any,
        ));
    }
    let events = rows!(EVENTS);
    if let Some((last, _)) = events.last() {
        let last = *last;
        for (seq, value) in events {
            if seq + EVENTS_KEPT <= last {
                continue;
            }
            let event: Event = decode(&seq.to_string(), &value)?;
            let key = event_key(event.seq);
            ops.push(TxnOp::put(key.clone(), encode(&key, &event)?, Expect::Any));
        }
        ops.push(TxnOp::put(
            META_EVENT_SEQ,
            encode(META_EVENT_SEQ, &last)?,
            Expect::Any,
        ));
    }
    Ok(ops)
}

/// The stack of a `<env>/<stack>/` key of the former file.
fn old_stack(key: &str) -> Result<StackKey> {
    key.strip_suffix('/')
        .and_then(parse_stack_path)
        .ok_or_else(|| StoreError::Corrupt {
            key: key.to_string(),
            message: "not <env>/<stack>/".into(),
        })
}
