//! The driver contract battery (`skiff_driver::testkit`) against the process driver, with real
//! processes and real cgroups: the test binary itself serves as the shim (`shim_entry`), as
//! `skiff __shim` does in production.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use skiff_driver::testkit::{Fixture, contract};
use skiff_driver::{Driver, Kind};
use skiff_driver_process::ShimCommand;
use skiff_driver_process::driver::{Config, ProcessDriver};
use skiff_model::ServiceSpec;

/// Shim mode: the instance directory is the last argument.
#[test]
#[ignore = "subprocess: the shim of the other tests"]
fn shim_entry() {
    let dir = std::env::args().next_back().expect("instance dir");
    std::process::exit(skiff_driver_process::shim::run(Path::new(&dir)));
}

fn shim() -> ShimCommand {
    let exe = std::env::current_exe().unwrap().display().to_string();
    ShimCommand(vec![
        exe,
        "--exact".into(),
        "shim_entry".into(),
        "--ignored".into(),
        "--nocapture".into(),
        "--quiet".into(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_driver_keeps_the_driver_contract() {
    let root = tempfile::tempdir().unwrap();
    let scope = format!("skiff-test/driver-contract-{}", std::process::id());
    let (cgroups_scope, root_path) = (scope.clone(), root.path().to_path_buf());
    let make = move || -> Arc<dyn Driver> {
        let cgroups = skiff_cgroup::Cgroups::detect(&cgroups_scope);
        Arc::new(ProcessDriver::new(Config {
            shim: shim(),
            cgroups,
            base_env: BTreeMap::new(),
            node_addr: "127.0.0.1".parse().unwrap(),
            root: root_path.clone(),
        }))
    };
    if let Err(e) = skiff_cgroup::Cgroups::detect(&scope) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root with cgroups: {e}"
        );
        eprintln!("no cgroups ({e}): the battery runs without stats");
    }
    let fixture = Fixture {
        driver: Box::new(make.clone()),
        service: Box::new(|argv| ServiceSpec {
            driver: Kind::Process,
            command: Some(argv),
            stop_signal: "SIGTERM".into(),
            stop_grace: Duration::from_secs(1),
            ..ServiceSpec::default()
        }),
        root: root.path().to_path_buf(),
    };
    contract(&fixture).await;
    make().shutdown().await;
}
