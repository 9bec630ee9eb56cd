//! The driver contract battery (`skiff_driver::testkit`) against the Docker driver and the
//! real engine, with an image built here `FROM scratch` (busybox-static, a static
//! skiff-demo). Without an engine the test says so and passes, except in CI (`CI=true`),
//! where a missing engine is a failure; `SKIFF_TEST_NO_DOCKER=1` skips it explicitly.

use std::sync::Arc;
use std::time::Duration;

use skiff_driver::testkit::{Fixture, contract};
use skiff_driver::{Driver, Kind};
use skiff_driver_docker::Engine;
use skiff_driver_docker::driver::DockerDriver;
use skiff_model::ServiceSpec;

const IMAGE: &str = "skiff-demo:contract";

async fn engine(cluster: &str) -> Option<Engine> {
    if std::env::var_os("SKIFF_TEST_NO_DOCKER").is_some() {
        eprintln!("SKIFF_TEST_NO_DOCKER set: skipped");
        return None;
    }
    match Engine::connect(cluster).await {
        Ok(e) => Some(e),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI starts dockerd (scripts/test): {e}"
            );
            eprintln!("skipped: {e}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_driver_keeps_the_driver_contract() {
    let cluster = format!("test-{}-contract", std::process::id());
    let Some(engine) = engine(&cluster).await else {
        return;
    };
    let ctx = tempfile::tempdir().unwrap();
    let dir = ctx.path().to_path_buf();
    tokio::task::spawn_blocking(move || skiff_driver_docker::testkit::demo_build_context(&dir))
        .await
        .unwrap();
    engine
        .build(ctx.path(), None, IMAGE, |_| {})
        .await
        .expect("building the demo image");

    let root = tempfile::tempdir().unwrap();
    let make_engine = engine.clone();
    let fixture = Fixture {
        driver: Box::new(move || -> Arc<dyn Driver> {
            Arc::new(DockerDriver::new(
                make_engine.clone(),
                "127.0.0.1".parse().unwrap(),
            ))
        }),
        service: Box::new(|argv| ServiceSpec {
            driver: Kind::Docker,
            image: Some(IMAGE.into()),
            entrypoint: Some(argv),
            command: Some(Vec::new()),
            stop_signal: "SIGTERM".into(),
            stop_grace: Duration::from_secs(1),
            ..ServiceSpec::default()
        }),
        root: root.path().to_path_buf(),
    };
    contract(&fixture).await;

    // Nothing of this cluster is left.
    let left = engine.list().await.unwrap();
    for c in &left {
        engine.remove(&c.id).await.unwrap();
    }
    engine.remove_unused_networks().await.unwrap();
    assert!(left.is_empty(), "left behind: {left:?}");
}
