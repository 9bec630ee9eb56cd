//! One contract, two stores: every test runs against `MemStore` and `RedbStore`.

use skiff_model::{Instance, InstanceId, InstanceState, StackKey, StackSpec};
use skiff_store::{MemStore, NewEvent, RedbStore, Store};

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

macro_rules! store_battery {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            fn store() -> (impl Store, Option<tempfile::TempDir>) {
                $make
            }

            #[test]
            fn release_numbers_start_at_one_and_grow_per_stack() {
                let (s, _d) = store();
                let a = stack("a");
                let b = stack("b");
                assert_eq!(
                    s.create_release(&a, StackSpec::default(), "x".into(), 1)
                        .unwrap()
                        .number,
                    1
                );
                assert_eq!(
                    s.create_release(&a, StackSpec::default(), "y".into(), 2)
                        .unwrap()
                        .number,
                    2
                );
                assert_eq!(
                    s.create_release(&b, StackSpec::default(), "z".into(), 3)
                        .unwrap()
                        .number,
                    1
                );
                let history: Vec<u64> = s.releases(&a).unwrap().iter().map(|r| r.number).collect();
                assert_eq!(history, vec![1, 2]);
                assert_eq!(s.release(&a, 2).unwrap().unwrap().source, "y");
                assert!(s.release(&a, 3).unwrap().is_none());
            }

            #[test]
            fn service_controls_are_per_stack_and_defaults_are_not_kept() {
                let (s, _d) = store();
                let a = stack("a");
                let b = stack("b");
                s.create_release(&a, StackSpec::default(), String::new(), 1)
                    .unwrap();
                s.create_release(&b, StackSpec::default(), String::new(), 1)
                    .unwrap();
                let after = s
                    .update_controls(&a, &mut |c| {
                        c.entry("web".into()).or_default().stopped = true;
                        c.entry("db".into()).or_default().generation += 1;
                    })
                    .unwrap();
                assert_eq!(after.len(), 2);
                let controls = |k: &StackKey| {
                    s.stacks()
                        .unwrap()
                        .into_iter()
                        .find(|st| &st.stack == k)
                        .unwrap()
                        .controls
                };
                assert!(controls(&a)["web"].stopped);
                assert_eq!(controls(&a)["db"].generation, 1);
                assert!(controls(&b).is_empty());
                // Back to the default: nothing is stored for web.
                s.update_controls(&a, &mut |c| {
                    c.entry("web".into()).or_default().stopped = false;
                })
                .unwrap();
                assert_eq!(controls(&a).keys().collect::<Vec<_>>(), ["db"]);
            }

            #[test]
            fn a_new_release_becomes_current_and_down_keeps_history() {
                let (s, _d) = store();
                let a = stack("a");
                s.create_release(&a, StackSpec::default(), String::new(), 1)
                    .unwrap();
                s.create_release(&a, StackSpec::default(), String::new(), 2)
                    .unwrap();
                assert_eq!(s.stacks().unwrap()[0].current, Some(2));
                s.set_current(&a, None).unwrap();
                assert_eq!(s.stacks().unwrap()[0].current, None);
                assert_eq!(s.releases(&a).unwrap().len(), 2);
                // Numbers are never reused, even after down.
                assert_eq!(
                    s.create_release(&a, StackSpec::default(), String::new(), 3)
                        .unwrap()
                        .number,
                    3
                );
            }

            #[test]
            fn instances_are_listed_per_stack_in_numeric_order() {
                let (s, _d) = store();
                for i in [10, 2, 1] {
                    s.put_instance(&instance("a", "web", i)).unwrap();
                }
                s.put_instance(&instance("ab", "web", 1)).unwrap();
                let ids: Vec<String> = s
                    .instances(Some(&stack("a")))
                    .unwrap()
                    .iter()
                    .map(|i| i.id.short())
                    .collect();
                assert_eq!(ids, vec!["web-1", "web-2", "web-10"]);
                assert_eq!(s.instances(None).unwrap().len(), 4);
                let mut changed = instance("a", "web", 2);
                changed.state = InstanceState::Healthy;
                s.put_instance(&changed).unwrap();
                s.delete_instance(&instance("a", "web", 1).id).unwrap();
                let left = s.instances(Some(&stack("a"))).unwrap();
                assert_eq!(left.len(), 2);
                assert_eq!(left[0].state, InstanceState::Healthy);
            }

            #[test]
            fn events_get_increasing_sequence_numbers() {
                let (s, _d) = store();
                for i in 0..5 {
                    let e = s
                        .append_event(NewEvent {
                            time_ms: i,
                            stack: stack("a"),
                            instance: Some("web-1".into()),
                            kind: "started".into(),
                            message: format!("m{i}"),
                        })
                        .unwrap();
                    assert_eq!(e.seq, i + 1);
                }
                let after: Vec<u64> = s
                    .events_after(2, 2)
                    .unwrap()
                    .iter()
                    .map(|e| e.seq)
                    .collect();
                assert_eq!(after, vec![3, 4]);
                assert!(s.events_after(5, 10).unwrap().is_empty());
            }
        }
    };
}

store_battery!(memory, (MemStore::new("test"), None));
store_battery!(redb, {
    let d = tempfile::tempdir().unwrap();
    let s = RedbStore::open(&d.path().join("state.redb"), "test").unwrap();
    (s, Some(d))
});
