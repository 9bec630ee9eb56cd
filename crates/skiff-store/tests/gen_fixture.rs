//! Writes `fixtures/state-format1.redb` with the former `RedbStore` (run by hand:
//! `FIXTURE_OUT=… cargo test -p skiff-store --test gen_fixture -- --ignored generate`).

use skiff_model::{Instance, InstanceId, InstanceState, ServiceSpec, StackKey, StackSpec};
use skiff_store::{NewEvent, RedbStore, Store};
use std::collections::BTreeMap;

fn inst(stack: &StackKey, service: &str, index: u32, state: InstanceState) -> Instance {
    Instance {
        node: "node-1".into(),
        id: InstanceId {
            stack: stack.clone(),
            service: service.into(),
            index,
        },
        release: 2,
        state,
        pid: Some(1000 + index),
        ports: BTreeMap::from([("http".to_string(), 20000 + index as u16)]),
        restarts: 0,
        exit_code: None,
        reason: None,
        updated_ms: 1_700_000_000_000,
    }
}

#[test]
#[ignore]
fn generate() {
    let out = std::env::var("FIXTURE_OUT").unwrap();
    let _ = std::fs::remove_file(&out);
    let s = RedbStore::open(std::path::Path::new(&out), "0123456789abcdef").unwrap();
    let shop = StackKey::new("default", "shop").unwrap();
    let blog = StackKey::new("staging", "blog").unwrap();
    let spec = |replicas: u32| StackSpec {
        services: BTreeMap::from([
            (
                "web".to_string(),
                ServiceSpec {
                    replicas,
                    ..ServiceSpec::default()
                },
            ),
            ("db".to_string(), ServiceSpec::default()),
        ]),
        batches: vec![vec!["db".into()], vec!["web".into()]],
    };
    s.create_release(
        &shop,
        spec(2),
        "services: {web: {}}\n".into(),
        1_700_000_000_001,
    )
    .unwrap();
    s.create_release(
        &shop,
        spec(3),
        "services: {web: {replicas: 3}}\n".into(),
        1_700_000_000_002,
    )
    .unwrap();
    s.create_release(&shop, spec(12), "v3".into(), 1_700_000_000_003)
        .unwrap();
    s.set_current(&shop, Some(2)).unwrap(); // rolled back to 2
    s.create_release(&blog, spec(1), "blog".into(), 1_700_000_000_004)
        .unwrap();
    s.set_current(&blog, None).unwrap(); // down
    s.update_controls(&shop, &mut |c| {
        c.entry("db".into()).or_default().stopped = true;
        c.entry("web".into()).or_default().generation = 4;
    })
    .unwrap();
    for i in [1, 2, 10] {
        s.put_instance(&inst(&shop, "web", i, InstanceState::Healthy))
            .unwrap();
    }
    s.put_instance(&inst(&shop, "db", 1, InstanceState::Stopped))
        .unwrap();
    for i in 0..7u64 {
        s.append_event(NewEvent {
            time_ms: 1_700_000_000_100 + i,
            stack: shop.clone(),
            instance: (i % 2 == 0).then(|| format!("web-{}", i + 1)),
            kind: "started".into(),
            message: format!("event {i}"),
        })
        .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(400));
    drop(s);
}

#[test]
#[ignore]
fn show() {
    let out = std::env::var("FIXTURE_OUT").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("s.redb");
    std::fs::copy(&out, &p).unwrap();
    let s = RedbStore::open(&p, "x").unwrap();
    println!("cluster {}", s.cluster_id().unwrap());
    for st in s.stacks().unwrap() {
        println!("{st:?}");
    }
    println!("instances {}", s.instances(None).unwrap().len());
    println!("events {}", s.events_after(0, 100).unwrap().len());
}
