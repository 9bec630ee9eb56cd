//! A data dir of the former layout (`state.redb`, written by the former `RedbStore`, next to
//! `control.redb`) is imported into the kv at open, once.

use std::path::Path;

use skiff_model::{Author, Cause, InstanceState, StackKey, StackSpec};
use skiff_store::{Expect, Kv, MemKv, RedbKv, Store, StoreError};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/state-format1.redb"
);

fn shop() -> StackKey {
    StackKey::new("default", "shop").unwrap()
}

fn blog() -> StackKey {
    StackKey::new("staging", "blog").unwrap()
}

/// A data dir as the former skiff left it: its `state.redb`, and a `control.redb` holding the
/// control plane's own keys already.
async fn old_data_dir() -> (tempfile::TempDir, RedbKv) {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(FIXTURE, d.path().join("state.redb")).unwrap();
    let kv = RedbKv::open(&d.path().join("control.redb")).unwrap();
    kv.put("nodes/n1", b"{}".to_vec(), Expect::Any)
        .await
        .unwrap();
    (d, kv)
}

#[tokio::test]
async fn everything_in_state_redb_is_imported_once_and_the_file_set_aside() {
    let (d, kv) = old_data_dir().await;
    let legacy = d.path().join("state.redb");
    let s = Store::open_importing(kv.clone(), "new-id", &legacy)
        .await
        .unwrap();

    assert_eq!(
        s.cluster_id(),
        "0123456789abcdef",
        "the data dir keeps its id"
    );
    assert!(!legacy.exists());
    assert!(d.path().join("state.redb.imported").exists());

    let stacks = s.stacks().await.unwrap();
    let of = |k: &StackKey| stacks.iter().find(|s| &s.stack == k).unwrap().clone();
    assert_eq!(stacks.len(), 2);
    assert_eq!(of(&shop()).current, Some(2), "rolled back to 2");
    assert_eq!(of(&blog()).current, None, "taken down");
    assert!(of(&shop()).controls["db"].stopped);
    assert_eq!(of(&shop()).controls["web"].generation, 4);

    let numbers: Vec<u64> = s
        .releases(&shop())
        .await
        .unwrap()
        .iter()
        .map(|r| r.number)
        .collect();
    assert_eq!(numbers, [1, 2, 3]);
    let r2 = s.release(&shop(), 2).await.unwrap().unwrap();
    assert_eq!(r2.spec.services["web"].replicas, 3);
    assert_eq!(r2.created_ms, 1_700_000_000_002);
    assert_eq!(s.releases(&blog()).await.unwrap().len(), 1);

    let instances: Vec<(String, InstanceState)> = s
        .instances(Some(&shop()))
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.id.short(), i.state))
        .collect();
    assert_eq!(
        instances,
        [
            ("db-1".to_string(), InstanceState::Stopped),
            ("web-1".to_string(), InstanceState::Healthy),
            ("web-2".to_string(), InstanceState::Healthy),
            ("web-10".to_string(), InstanceState::Healthy),
        ]
    );

    let events = s.events_after(0, 100).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<u64>>()
    );
    assert_eq!(events[6].message, "event 6");
    assert!(
        kv.get("nodes/n1").await.unwrap().is_some(),
        "the kv's own keys stay"
    );

    // Numbering goes on where the old file left it.
    let next = s
        .create_release(
            &shop(),
            StackSpec::default(),
            String::new(),
            0,
            Author::unknown(),
            Cause::Up,
        )
        .await
        .unwrap();
    assert_eq!(next.number, 4);
    let e = s
        .append_event(skiff_store::NewEvent {
            time_ms: 0,
            stack: shop(),
            instance: None,
            kind: "k".into(),
            message: "after the import".into(),
        })
        .await
        .unwrap();
    assert!(e.seq > 7);

    // A second open neither imports again nor needs the file.
    drop(s);
    let again = Store::open_importing(kv, "other", &legacy).await.unwrap();
    assert_eq!(again.cluster_id(), "0123456789abcdef");
    assert_eq!(again.releases(&shop()).await.unwrap().len(), 4);
}

#[tokio::test]
async fn an_import_cut_short_before_the_rename_finishes_it_on_the_next_open() {
    let (d, kv) = old_data_dir().await;
    let legacy = d.path().join("state.redb");
    Store::open_importing(kv.clone(), "x", &legacy)
        .await
        .unwrap();
    // As if the process had died between the kv's commit and the rename.
    std::fs::rename(d.path().join("state.redb.imported"), &legacy).unwrap();
    let s = Store::open_importing(kv, "x", &legacy).await.unwrap();
    assert!(!legacy.exists());
    assert_eq!(
        s.releases(&shop()).await.unwrap().len(),
        3,
        "not imported twice"
    );
}

#[tokio::test]
async fn a_store_set_up_already_ignores_a_state_redb_that_shows_up_later() {
    let d = tempfile::tempdir().unwrap();
    let kv = MemKv::new();
    Store::open(kv.clone(), "mine").await.unwrap();
    let legacy = d.path().join("state.redb");
    std::fs::copy(FIXTURE, &legacy).unwrap();
    let s = Store::open_importing(kv, "mine", &legacy).await.unwrap();
    assert_eq!(s.cluster_id(), "mine");
    assert!(s.stacks().await.unwrap().is_empty());
    assert!(legacy.exists(), "left alone");
}

#[tokio::test]
async fn without_a_state_redb_the_store_starts_empty() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open_importing(MemKv::new(), "fresh", &d.path().join("state.redb"))
        .await
        .unwrap();
    assert_eq!(s.cluster_id(), "fresh");
    assert!(s.stacks().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_state_redb_of_a_newer_format_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let legacy = d.path().join("state.redb");
    {
        let db = redb::Database::create(&legacy).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap();
            t.insert("format_version", b"99".as_slice()).unwrap();
            t.insert("cluster_id", b"\"c\"".as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    match Store::open_importing(MemKv::new(), "x", Path::new(&legacy)).await {
        Err(StoreError::NewerFormat { found: 99 }) => {}
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("imported a newer file"),
    }
    assert!(legacy.exists());
}
