//! One contract, two backends: every test runs against `MemKv` and `RedbKv` — the contract an
//! etcd backend will have to meet too (revisions, compare-and-swap, watch from a revision).

use std::time::Duration;

use skiff_store::{Expect, Kv, KvError, MemKv, RedbKv, TxnOp, WatchEvent};

async fn next(rx: &mut tokio::sync::mpsc::Receiver<Result<WatchEvent, KvError>>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a watch event within 5 s")
        .expect("the watch is open")
        .expect("no watch error")
}

macro_rules! kv_battery {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            fn kv() -> (impl Kv, Option<tempfile::TempDir>) {
                $make
            }

            #[tokio::test]
            async fn every_write_takes_the_next_revision_and_keys_remember_theirs() {
                let (kv, _d) = kv();
                assert_eq!(kv.put("a", b"1".to_vec(), Expect::Any).await.unwrap(), 1);
                assert_eq!(kv.put("b", b"2".to_vec(), Expect::Any).await.unwrap(), 2);
                assert_eq!(kv.put("a", b"3".to_vec(), Expect::Any).await.unwrap(), 3);
                let a = kv.get("a").await.unwrap().unwrap();
                assert_eq!((a.value.as_slice(), a.create_revision, a.mod_revision), (&b"3"[..], 1, 3));
                assert_eq!(kv.delete("b", Expect::Any).await.unwrap(), Some(4));
                assert_eq!(kv.delete("b", Expect::Any).await.unwrap(), None, "nothing to delete");
                assert_eq!(kv.get("b").await.unwrap(), None);
            }

            #[tokio::test]
            async fn compare_and_swap_writes_only_over_the_expected_revision() {
                let (kv, _d) = kv();
                let r1 = kv.put("k", b"x".to_vec(), Expect::Absent).await.unwrap();
                assert!(matches!(
                    kv.put("k", b"y".to_vec(), Expect::Absent).await,
                    Err(KvError::Conflict { current: Some(_), .. })
                ));
                let r2 = kv.put("k", b"y".to_vec(), Expect::Revision(r1)).await.unwrap();
                // A second writer that read r1 loses, and learns the current state.
                match kv.put("k", b"z".to_vec(), Expect::Revision(r1)).await {
                    Err(KvError::Conflict { current: Some(c), .. }) => {
                        assert_eq!((c.mod_revision, c.value), (r2, b"y".to_vec()))
                    }
                    other => panic!("expected a conflict, got {other:?}"),
                }
                assert!(kv.delete("k", Expect::Revision(r1)).await.is_err());
                assert!(kv.delete("k", Expect::Revision(r2)).await.unwrap().is_some());
                assert!(matches!(
                    kv.put("k", b"w".to_vec(), Expect::Revision(r2)).await,
                    Err(KvError::Conflict { current: None, .. })
                ));
            }

            #[tokio::test]
            async fn list_returns_one_prefix_in_key_order_with_its_revision() {
                let (kv, _d) = kv();
                for k in ["nodes/b", "nodes/a", "allocs/x", "nodesx"] {
                    kv.put(k, k.as_bytes().to_vec(), Expect::Any).await.unwrap();
                }
                let (entries, rev) = kv.list("nodes/").await.unwrap();
                let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
                assert_eq!(keys, ["nodes/a", "nodes/b"]);
                assert_eq!(rev, 4);
            }

            #[tokio::test]
            async fn a_watch_replays_from_a_revision_then_follows_live_changes_of_its_prefix() {
                let (kv, _d) = kv();
                kv.put("a/1", b"1".to_vec(), Expect::Any).await.unwrap();
                let r = kv.put("a/2", b"2".to_vec(), Expect::Any).await.unwrap();
                kv.put("b/1", b"x".to_vec(), Expect::Any).await.unwrap();
                kv.delete("a/1", Expect::Any).await.unwrap();
                let mut w = kv.watch("a/", r - 1).await.unwrap();
                assert_eq!(next(&mut w).await.key(), "a/2");
                assert!(matches!(next(&mut w).await, WatchEvent::Delete { ref key, revision: 4 } if key == "a/1"));
                // Live: only its prefix, in order, nothing twice.
                kv.put("b/2", b"y".to_vec(), Expect::Any).await.unwrap();
                kv.put("a/3", b"3".to_vec(), Expect::Any).await.unwrap();
                let ev = next(&mut w).await;
                assert_eq!((ev.key(), ev.revision()), ("a/3", 6));
                assert!(w.try_recv().is_err(), "nothing else");
            }

            #[tokio::test]
            async fn a_transaction_applies_every_op_or_none() {
                let (kv, _d) = kv();
                let r1 = kv.put("p/a", b"1".to_vec(), Expect::Any).await.unwrap();
                let r2 = kv.put("p/b", b"2".to_vec(), Expect::Any).await.unwrap();
                let mut w = kv.watch("p/", r2).await.unwrap();
                // One stale expectation: nothing of it is applied, the conflict names the key.
                let stale = vec![
                    TxnOp::put("p/c", b"3".to_vec(), Expect::Absent),
                    TxnOp::delete("p/a", Expect::Revision(r1)),
                    TxnOp::put("p/b", b"x".to_vec(), Expect::Revision(r1)),
                ];
                match kv.txn(stale).await {
                    Err(KvError::Conflict { key, .. }) => assert_eq!(key, "p/b"),
                    other => panic!("expected a conflict, got {other:?}"),
                }
                assert_eq!(kv.get("p/c").await.unwrap(), None);
                assert!(kv.get("p/a").await.unwrap().is_some());
                let ok = vec![
                    TxnOp::put("p/c", b"3".to_vec(), Expect::Absent),
                    TxnOp::delete("p/a", Expect::Revision(r1)),
                    TxnOp::put("p/b", b"x".to_vec(), Expect::Revision(r2)),
                    TxnOp::delete("p/none", Expect::Any),
                ];
                let rev = kv.txn(ok).await.unwrap();
                assert_eq!(rev, r2 + 3, "three changes, the absent key's delete is none");
                let (entries, at) = kv.list("p/").await.unwrap();
                let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
                assert_eq!((keys, at), (vec!["p/b", "p/c"], rev));
                let seen: Vec<String> = [next(&mut w).await, next(&mut w).await, next(&mut w).await]
                    .iter()
                    .map(|e| e.key().to_string())
                    .collect();
                assert_eq!(seen, ["p/c", "p/a", "p/b"]);
                assert!(kv.txn(vec![TxnOp::delete("p/b", Expect::Any), TxnOp::delete("p/b", Expect::Any)]).await.is_err(), "a key twice");
            }

            #[tokio::test]
            async fn list_from_starts_at_a_key_and_stops_at_the_limit() {
                let (kv, _d) = kv();
                for k in ["e/1", "e/2", "e/3", "e/4", "f/1"] {
                    kv.put(k, k.as_bytes().to_vec(), Expect::Any).await.unwrap();
                }
                let keys = |entries: Vec<skiff_store::KvEntry>| -> Vec<String> {
                    entries.into_iter().map(|e| e.key).collect()
                };
                let (got, rev) = kv.list_from("e/", "e/2", 2).await.unwrap();
                assert_eq!((keys(got), rev), (vec!["e/2".to_string(), "e/3".to_string()], 5));
                let (got, _) = kv.list_from("e/", "e/3", 10).await.unwrap();
                assert_eq!(keys(got), ["e/3", "e/4"], "not past the prefix");
                let (got, _) = kv.list_from("e/", "a", 1).await.unwrap();
                assert_eq!(keys(got), ["e/1"], "a start before the prefix is the prefix");
                assert!(kv.list_from("e/", "e/9", 10).await.unwrap().0.is_empty());
            }

            #[tokio::test]
            async fn soft_writes_get_revisions_and_are_watched_in_order_with_the_others() {
                let (kv, _d) = kv();
                let r1 = kv.put("s/a", b"1".to_vec(), Expect::Any).await.unwrap();
                let mut w = kv.watch("s/", 0).await.unwrap();
                let r2 = kv
                    .txn_soft(vec![
                        TxnOp::put("s/b", b"2".to_vec(), Expect::Absent),
                        TxnOp::put("s/a", b"3".to_vec(), Expect::Revision(r1)),
                    ])
                    .await
                    .unwrap();
                assert_eq!(r2, r1 + 2);
                let r3 = kv.put("s/c", b"4".to_vec(), Expect::Any).await.unwrap();
                assert_eq!(r3, r2 + 1);
                // Compare-and-swap holds for soft writes too.
                assert!(matches!(
                    kv.txn_soft(vec![TxnOp::put("s/a", b"x".to_vec(), Expect::Revision(r1))]).await,
                    Err(KvError::Conflict { .. })
                ));
                let seen: Vec<(String, u64)> = [
                    next(&mut w).await,
                    next(&mut w).await,
                    next(&mut w).await,
                    next(&mut w).await,
                ]
                .iter()
                .map(|e| (e.key().to_string(), e.revision()))
                .collect();
                assert_eq!(
                    seen,
                    [
                        ("s/a".to_string(), r1),
                        ("s/b".to_string(), r1 + 1),
                        ("s/a".to_string(), r2),
                        ("s/c".to_string(), r3)
                    ]
                );
                assert_eq!(kv.get("s/a").await.unwrap().unwrap().value, b"3");
            }

            #[tokio::test]
            async fn list_then_watch_from_its_revision_misses_nothing() {
                let (kv, _d) = kv();
                kv.put("n/1", b"1".to_vec(), Expect::Any).await.unwrap();
                let (_, rev) = kv.list("n/").await.unwrap();
                kv.put("n/2", b"2".to_vec(), Expect::Any).await.unwrap();
                let mut w = kv.watch("n/", rev).await.unwrap();
                assert_eq!(next(&mut w).await.key(), "n/2");
            }
        }
    };
}

kv_battery!(memory, (MemKv::new(), None));
kv_battery!(redb, {
    let d = tempfile::tempdir().unwrap();
    (RedbKv::open(&d.path().join("kv.redb")).unwrap(), Some(d))
});

#[tokio::test]
async fn redb_keeps_keys_revisions_and_watch_history_across_a_reopen() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("kv.redb");
    {
        let kv = RedbKv::open(&path).unwrap();
        kv.put("a", b"1".to_vec(), Expect::Any).await.unwrap();
        kv.put("a", b"2".to_vec(), Expect::Any).await.unwrap();
    }
    let kv = RedbKv::open(&path).unwrap();
    let a = kv.get("a").await.unwrap().unwrap();
    assert_eq!(
        (a.value, a.create_revision, a.mod_revision),
        (b"2".to_vec(), 1, 2)
    );
    assert_eq!(
        kv.put("b", b"x".to_vec(), Expect::Any).await.unwrap(),
        3,
        "revisions go on"
    );
    let mut w = kv.watch("a", 1).await.unwrap();
    assert_eq!(
        next(&mut w).await.revision(),
        2,
        "history before the reopen is replayed"
    );
}

#[tokio::test]
async fn redb_soft_writes_are_read_back_after_a_reopen() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("kv.redb");
    {
        let kv = RedbKv::open(&path).unwrap();
        kv.txn_soft(vec![TxnOp::put("a", b"1".to_vec(), Expect::Any)])
            .await
            .unwrap();
        kv.put("b", b"2".to_vec(), Expect::Any).await.unwrap();
    }
    let kv = RedbKv::open(&path).unwrap();
    assert_eq!(kv.get("a").await.unwrap().unwrap().mod_revision, 1);
    assert_eq!(kv.get("b").await.unwrap().unwrap().mod_revision, 2);
}

#[tokio::test]
async fn a_watch_from_before_the_kept_history_fails_as_compacted() {
    let kv = MemKv::new();
    for i in 0..skiff_store::kv::HISTORY + 5 {
        kv.put("k", i.to_le_bytes().to_vec(), Expect::Any)
            .await
            .unwrap();
    }
    assert!(matches!(
        kv.watch("k", 2).await,
        Err(KvError::Compacted { from: 2, oldest: 6 })
    ));
    assert!(kv.watch("k", 5).await.is_ok());
}
