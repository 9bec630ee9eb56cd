//! One contract, two kvs: every test runs the domain layer ([`Store`]) over `MemKv` and
//! `RedbKv`.

use skiff_model::{Author, Cause, Instance, InstanceId, InstanceState, StackKey, StackSpec};
use skiff_store::{Expect, Kv, MemKv, NewEvent, Observed, RedbKv, Store, StoreError};

/// Records an empty release of `key` with `source` at `now` (by `up`, author unknown): its
/// number.
async fn release<K: Kv>(s: &Store<K>, key: &StackKey, source: &str, now: u64) -> u64 {
    s.create_release(
        key,
        StackSpec::default(),
        source.into(),
        now,
        Author::unknown(),
        Cause::Up,
    )
    .await
    .unwrap()
    .number
}

fn stack(name: &str) -> StackKey {
    StackKey::new("default", name).unwrap()
}

fn instance(stack_name: &str, service: &str, index: u32) -> Instance {
    Instance {
        node: String::new(),
        id: InstanceId {
            stack: stack(stack_name),
            service: service.into(),
            index,
        },
        release: 1,
        state: InstanceState::Pending,
        pid: None,
        ports: Default::default(),
        restarts: 0,
        exit_code: None,
        reason: None,
        updated_ms: 0,
    }
}

fn event(i: u64) -> NewEvent {
    NewEvent {
        time_ms: i,
        stack: stack("a"),
        instance: Some("web-1".into()),
        kind: "started".into(),
        message: format!("m{i}"),
    }
}

macro_rules! store_battery {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            fn kv() -> (impl Kv + Clone, Option<tempfile::TempDir>) {
                $make
            }

            async fn store() -> (Store<impl Kv + Clone>, Option<tempfile::TempDir>) {
                let (kv, dir) = kv();
                (Store::open(kv, "test").await.unwrap(), dir)
            }

            #[tokio::test]
            async fn the_cluster_id_is_set_once() {
                let (kv, _d) = kv();
                let s = Store::open(kv.clone(), "first").await.unwrap();
                assert_eq!(s.cluster_id(), "first");
                let again = Store::open(kv, "second").await.unwrap();
                assert_eq!(again.cluster_id(), "first");
            }

            #[tokio::test]
            async fn a_newer_layout_is_refused() {
                let (kv, _d) = kv();
                kv.put("meta/format", b"99".to_vec(), Expect::Any)
                    .await
                    .unwrap();
                match Store::open(kv, "x").await {
                    Err(StoreError::NewerFormat { found: 99 }) => {}
                    Err(other) => panic!("wrong error: {other}"),
                    Ok(_) => panic!("opened a newer layout"),
                }
            }

            #[tokio::test]
            async fn release_numbers_start_at_one_and_grow_per_stack() {
                let (s, _d) = store().await;
                let a = stack("a");
                let b = stack("b");
                assert_eq!(release(&s, &a, "x", 1).await, 1);
                assert_eq!(release(&s, &a, "y", 2).await, 2);
                assert_eq!(release(&s, &b, "z", 3).await, 1);
                let history: Vec<u64> = s
                    .releases(&a)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.number)
                    .collect();
                assert_eq!(history, vec![1, 2]);
                assert_eq!(s.release(&a, 2).await.unwrap().unwrap().source, "y");
                assert!(s.release(&a, 3).await.unwrap().is_none());
            }

            #[tokio::test]
            async fn a_release_keeps_its_author_and_cause() {
                let (s, _d) = store().await;
                let a = stack("a");
                let by = Author {
                    user: "alice".into(),
                    host: "box".into(),
                };
                let cause = Cause::Rollback { to: 1, from: 2 };
                let r = s
                    .create_release(
                        &a,
                        StackSpec::default(),
                        String::new(),
                        5,
                        by.clone(),
                        cause.clone(),
                    )
                    .await
                    .unwrap();
                let back = s.release(&a, r.number).await.unwrap().unwrap();
                assert_eq!((back.author, back.cause), (by, cause));
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_releases_get_distinct_numbers_without_gaps() {
                let (s, _d) = store().await;
                let a = stack("a");
                let writers: Vec<_> = (0..8)
                    .map(|i| {
                        let (s, a) = (s.clone(), a.clone());
                        tokio::spawn(async move {
                            let mut got = Vec::new();
                            for j in 0..5 {
                                got.push(release(&s, &a, &format!("{i}.{j}"), 0).await);
                            }
                            got
                        })
                    })
                    .collect();
                let mut numbers = Vec::new();
                for w in writers {
                    numbers.extend(w.await.unwrap());
                }
                numbers.sort_unstable();
                assert_eq!(numbers, (1..=40).collect::<Vec<u64>>());
                assert_eq!(s.releases(&a).await.unwrap().len(), 40);
            }

            #[tokio::test]
            async fn service_controls_are_per_stack_and_defaults_are_not_kept() {
                let (s, _d) = store().await;
                let a = stack("a");
                let b = stack("b");
                release(&s, &a, "", 1).await;
                release(&s, &b, "", 1).await;
                let after = s
                    .update_controls(&a, |c| {
                        c.entry("web".into()).or_default().stopped = true;
                        c.entry("db".into()).or_default().generation += 1;
                    })
                    .await
                    .unwrap();
                assert_eq!(after.len(), 2);
                let controls = |k: StackKey| {
                    let s = s.clone();
                    async move {
                        s.stacks()
                            .await
                            .unwrap()
                            .into_iter()
                            .find(|st| st.stack == k)
                            .unwrap()
                            .controls
                    }
                };
                assert!(controls(a.clone()).await["web"].stopped);
                assert_eq!(controls(a.clone()).await["db"].generation, 1);
                assert!(controls(b.clone()).await.is_empty());
                // Back to the default: nothing is stored for web.
                s.update_controls(&a, |c| {
                    c.entry("web".into()).or_default().stopped = false;
                })
                .await
                .unwrap();
                assert_eq!(controls(a.clone()).await.keys().collect::<Vec<_>>(), ["db"]);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_control_updates_are_all_kept() {
                let (s, _d) = store().await;
                let a = stack("a");
                release(&s, &a, "", 1).await;
                let writers: Vec<_> = (0..8)
                    .map(|_| {
                        let (s, a) = (s.clone(), a.clone());
                        tokio::spawn(async move {
                            for _ in 0..5 {
                                s.update_controls(&a, |c| {
                                    c.entry("web".into()).or_default().generation += 1
                                })
                                .await
                                .unwrap();
                            }
                        })
                    })
                    .collect();
                for w in writers {
                    w.await.unwrap();
                }
                let st = s.stacks().await.unwrap().remove(0);
                assert_eq!(st.controls["web"].generation, 40, "no update lost");
            }

            #[tokio::test]
            async fn a_new_release_becomes_current_and_down_keeps_history() {
                let (s, _d) = store().await;
                let a = stack("a");
                release(&s, &a, "", 1).await;
                release(&s, &a, "", 2).await;
                assert_eq!(s.stacks().await.unwrap()[0].current, Some(2));
                s.set_current(&a, Some(1)).await.unwrap();
                assert_eq!(s.stacks().await.unwrap()[0].current, Some(1));
                s.set_current(&a, None).await.unwrap();
                assert_eq!(s.stacks().await.unwrap()[0].current, None);
                assert_eq!(s.releases(&a).await.unwrap().len(), 2);
                // Numbers are never reused, even after a rollback and down.
                assert_eq!(release(&s, &a, "", 3).await, 3);
            }

            #[tokio::test]
            async fn instances_are_listed_per_stack_in_numeric_order() {
                let (s, _d) = store().await;
                for i in [10, 2, 1] {
                    s.put_instance(&instance("a", "web", i)).await.unwrap();
                }
                s.put_instance(&instance("ab", "web", 1)).await.unwrap();
                let ids: Vec<String> = s
                    .instances(Some(&stack("a")))
                    .await
                    .unwrap()
                    .iter()
                    .map(|i| i.id.short())
                    .collect();
                assert_eq!(ids, vec!["web-1", "web-2", "web-10"]);
                assert_eq!(s.instances(None).await.unwrap().len(), 4);
                let mut changed = instance("a", "web", 2);
                changed.state = InstanceState::Healthy;
                s.put_instance(&changed).await.unwrap();
                s.delete_instance(&instance("a", "web", 1).id)
                    .await
                    .unwrap();
                let left = s.instances(Some(&stack("a"))).await.unwrap();
                assert_eq!(left.len(), 2);
                assert_eq!(left[0].state, InstanceState::Healthy);
            }

            #[tokio::test]
            async fn events_get_increasing_sequence_numbers() {
                let (s, _d) = store().await;
                for i in 0..5 {
                    let e = s.append_event(event(i)).await.unwrap();
                    assert_eq!(e.seq, i + 1);
                }
                let after: Vec<u64> = s
                    .events_after(2, 2)
                    .await
                    .unwrap()
                    .iter()
                    .map(|e| e.seq)
                    .collect();
                assert_eq!(after, vec![3, 4]);
                assert!(s.events_after(5, 10).await.unwrap().is_empty());
                assert!(s.events_after(u64::MAX, 10).await.unwrap().is_empty());
            }

            #[tokio::test]
            async fn a_commit_with_events_writes_both_or_neither_and_numbers_them_in_order() {
                let (s, _d) = store().await;
                s.append_event(event(0)).await.unwrap();
                let put = |v: &str, expect| {
                    skiff_store::TxnOp::put("rollouts/x", v.as_bytes().to_vec(), expect)
                };
                let (revision, events) = s
                    .commit_with_events(vec![put("1", Expect::Absent)], vec![event(1), event(2)])
                    .await
                    .unwrap();
                assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
                let entry = s.kv().get("rollouts/x").await.unwrap().unwrap();
                assert_eq!(
                    entry.mod_revision, revision,
                    "the revision of the caller's op"
                );
                // A conflict writes neither the op nor its events.
                let lost = s
                    .commit_with_events(vec![put("2", Expect::Absent)], vec![event(3)])
                    .await;
                assert!(matches!(lost, Err(StoreError::Kv(_))), "{lost:?}");
                assert_eq!(s.kv().get("rollouts/x").await.unwrap().unwrap().value, b"1");
                let all = s.events_after(0, 10).await.unwrap();
                assert_eq!(all.len(), 3);
                // The next event comes after the lost one's number (a gap, never a reuse).
                assert!(s.append_event(event(4)).await.unwrap().seq > 4);
            }

            #[tokio::test]
            async fn a_release_created_with_writes_of_its_own_carries_them_and_its_events() {
                let (s, _d) = store().await;
                let (rel, _) = s
                    .create_release_with(
                        skiff_model::Release {
                            stack: stack("a"),
                            number: 0,
                            created_ms: 1,
                            spec: StackSpec::default(),
                            source: "x".into(),
                            author: Author {
                                user: "alice".into(),
                                host: "box".into(),
                            },
                            cause: Cause::Up,
                        },
                        |r| {
                            let key = format!("rollouts/default/a/web/{}", r.number);
                            let op = skiff_store::TxnOp::put(key, b"r".to_vec(), Expect::Absent);
                            (vec![op], vec![event(r.number)])
                        },
                    )
                    .await
                    .unwrap();
                assert_eq!(rel.number, 1);
                assert!(
                    s.kv()
                        .get("rollouts/default/a/web/1")
                        .await
                        .unwrap()
                        .is_some()
                );
                let events = s.events_after(0, 10).await.unwrap();
                assert_eq!(events.len(), 1);
                assert_eq!(events[0].message, "m1");
                assert_eq!(s.stacks().await.unwrap()[0].current, Some(1));
            }

            #[tokio::test]
            async fn observed_changes_are_written_in_order_also_of_one_instance() {
                let (s, _d) = store().await;
                let mut up = instance("a", "web", 1);
                up.state = InstanceState::Healthy;
                let events = s
                    .observe(vec![
                        Observed::Instance(instance("a", "web", 1)),
                        Observed::Event(event(1)),
                        Observed::Instance(up.clone()),
                        Observed::Instance(instance("a", "web", 2)),
                        Observed::Event(event(2)),
                        Observed::Removed(instance("a", "web", 2).id),
                        Observed::Instance(instance("a", "db", 1)),
                    ])
                    .await
                    .unwrap();
                assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
                let now: Vec<(String, InstanceState)> = s
                    .instances(None)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|i| (i.id.short(), i.state))
                    .collect();
                assert_eq!(
                    now,
                    [
                        ("db-1".to_string(), InstanceState::Pending),
                        ("web-1".to_string(), InstanceState::Healthy)
                    ]
                );
                // Every change of web-1 reached the kv, in order, as its watchers see it.
                let mut w = s.kv().watch("instances/default/a/web/", 0).await.unwrap();
                let mut seen = Vec::new();
                while let Ok(Some(Ok(ev))) =
                    tokio::time::timeout(std::time::Duration::from_millis(200), w.recv()).await
                {
                    seen.push(match ev {
                        skiff_store::WatchEvent::Put(e) => {
                            let i: Instance = serde_json::from_slice(&e.value).unwrap();
                            format!("{} {:?}", i.id.short(), i.state)
                        }
                        skiff_store::WatchEvent::Delete { key, .. } => format!("- {key}"),
                    });
                }
                assert_eq!(
                    seen,
                    [
                        "web-1 Pending",
                        "web-1 Healthy",
                        "web-2 Pending",
                        "- instances/default/a/web/0000000002"
                    ]
                );
            }

            #[tokio::test]
            async fn events_past_the_kept_history_are_dropped() {
                let (s, _d) = store().await;
                let n = skiff_store::EVENTS_KEPT + 30;
                let mut batch = Vec::new();
                for i in 0..n {
                    batch.push(Observed::Event(event(i)));
                    if batch.len() == 1000 {
                        s.observe(std::mem::take(&mut batch)).await.unwrap();
                    }
                }
                s.observe(batch).await.unwrap();
                let kept = s.events_after(0, usize::MAX).await.unwrap();
                assert_eq!(kept.len() as u64, skiff_store::EVENTS_KEPT);
                assert_eq!(kept[0].seq, 31);
                assert_eq!(kept.last().unwrap().seq, n);
            }
        }
    };
}

store_battery!(memory, (MemKv::new(), None));
store_battery!(redb, {
    let d = tempfile::tempdir().unwrap();
    let kv = RedbKv::open(&d.path().join("control.redb")).unwrap();
    (kv, Some(d))
});

#[tokio::test]
async fn event_numbers_go_on_after_a_restart_and_are_never_reused() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("control.redb");
    let before = {
        let s = Store::open(RedbKv::open(&path).unwrap(), "x")
            .await
            .unwrap();
        s.append_event(event(1)).await.unwrap();
        s.append_event(event(2)).await.unwrap().seq
    };
    // What a crash may lose (the soft writes) does not matter: the next process starts after
    // every number the last one could have handed out.
    let s = Store::open(RedbKv::open(&path).unwrap(), "x")
        .await
        .unwrap();
    let after = s.append_event(event(3)).await.unwrap().seq;
    assert!(after > before, "{after} after {before}");
    let seqs: Vec<u64> = s
        .events_after(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [1, 2, after]);
}
