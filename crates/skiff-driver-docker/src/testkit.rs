//! Test support (feature `testkit`, for dev-dependencies only): the demo image's build
//! context — busybox-static and a statically linked skiff-demo `FROM scratch` — since no
//! registry is reachable from the test machines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds skiff-demo statically (once per process) into `target/static`; returns its path.
pub fn static_demo() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let target_dir = root.join("target/static");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let ok = Command::new(cargo)
                .args(["build", "-q", "--release", "-p", "skiff-demo"])
                .args(["--target", "x86_64-unknown-linux-gnu", "--target-dir"])
                .arg(&target_dir)
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .current_dir(&root)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "building a static skiff-demo failed");
            target_dir.join("x86_64-unknown-linux-gnu/release/skiff-demo")
        })
        .clone()
}

/// Writes the demo image's build context into `dir`: busybox-static (also as `/bin/sh`), a
/// static skiff-demo listening on all interfaces, and a Dockerfile `FROM scratch`.
pub fn demo_build_context(dir: &Path) {
    std::fs::copy(static_demo(), dir.join("skiff-demo")).expect("copying skiff-demo");
    std::fs::copy("/bin/busybox", dir.join("busybox"))
        .expect("busybox-static at /bin/busybox (scripts/ensure-docker installs it)");
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\n\
         COPY skiff-demo /bin/skiff-demo\nENV DEMO_HOST=0.0.0.0\n\
         ENTRYPOINT [\"/bin/skiff-demo\"]\n",
    )
    .expect("writing the Dockerfile");
}
