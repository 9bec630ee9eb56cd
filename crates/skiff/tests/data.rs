//! Environment data with real databases: MariaDB and Redis (Debian's packages) run by the
//! process driver on named volumes, seeded from snapshots these tests make, and an
//! environment's volumes copied into another one (`POST /v1/envs/{env}/copy-data`): frozen
//! (same pid) or stopped and started again, by plain copy on ext4 and by reflink on an XFS
//! image the test mounts.
//!
//! Needs `mariadbd`, `mariadb-install-db`, `redis-server`, `tar` and `zstd` (`scripts/test`
//! installs them); without them a test says so and passes, except under `CI=true`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Are the programs there? Missing ones fail under CI and skip (with a message) elsewhere.
fn have(programs: &[&str]) -> bool {
    let missing: Vec<&&str> = programs
        .iter()
        .filter(|p| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {p}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{missing:?} missing (scripts/test installs mariadb-server, redis-server, zstd)"
    );
    eprintln!("skipped: {missing:?} not installed");
    false
}

fn root() -> bool {
    run("id -u", Command::new("id").arg("-u")).trim() == "0"
}

/// mariadbd refuses to run as root unless told to.
fn user_flag() -> &'static str {
    if root() { "--user=root" } else { "" }
}

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(what: &str, script: &str) -> String {
    run(what, Command::new("sh").args(["-c", script]))
}

/// `<dir>/db.tar.zst`: a MariaDB data directory with `shop.items` holding (1, alpha),
/// (2, beta), made by running the server itself.
fn mariadb_snapshot(dir: &Path) -> PathBuf {
    let data = dir.join("db-data");
    let sock = dir.join("db.sock");
    sh(
        "mariadb-install-db",
        &format!(
            "mariadb-install-db --no-defaults --datadir={} --auth-root-authentication-method=normal \
             --skip-test-db {} --innodb-log-file-size=4M --innodb-buffer-pool-size=16M --innodb-use-native-aio=0",
            data.display(),
            user_flag()
        ),
    );
    let mut server = Command::new("mariadbd")
        .args([
            "--no-defaults",
            &format!("--datadir={}", data.display()),
            &format!("--socket={}", sock.display()),
            "--skip-networking",
            "--innodb-log-file-size=4M",
            "--innodb-buffer-pool-size=16M",
            "--innodb-use-native-aio=0",
        ])
        .args(root().then_some("--user=root"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = |sql: &str| {
        Command::new("mariadb")
            .args(["--no-defaults", "-uroot", "-S"])
            .arg(&sock)
            .args(["-e", sql])
            .output()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client("select 1").is_ok_and(|o| o.status.success()) {
        assert!(
            Instant::now() < deadline,
            "the snapshot's mariadbd never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let made = client(
        "create database shop; create table shop.items (id int primary key, name varchar(40)); \
         insert into shop.items values (1, 'alpha'), (2, 'beta');",
    )
    .unwrap();
    assert!(made.status.success(), "{made:?}");
    let down = client("shutdown").unwrap();
    assert!(down.status.success(), "{down:?}");
    assert!(server.wait().unwrap().success());
    let snap = dir.join("db.tar.zst");
    sh(
        "tar | zstd",
        &format!(
            "tar -C {} -cf - . | zstd -q -o {}",
            data.display(),
            snap.display()
        ),
    );
    snap
}

/// `<dir>/redis.tar`: a Redis directory whose `dump.rdb` holds greeting=hello.
fn redis_snapshot(dir: &Path) -> PathBuf {
    let data = dir.join("redis-data");
    std::fs::create_dir_all(&data).unwrap();
    let sock = dir.join("redis.sock");
    let mut server = Command::new("redis-server")
        .args(["--port", "0", "--unixsocket"])
        .arg(&sock)
        .arg("--dir")
        .arg(&data)
        .args(["--dbfilename", "dump.rdb", "--save", ""])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let cli = |args: &[&str]| {
        Command::new("redis-cli")
            .arg("-s")
            .arg(&sock)
            .args(args)
            .output()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cli(&["ping"]).is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG")) {
        assert!(
            Instant::now() < deadline,
            "the snapshot's redis never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(cli(&["set", "greeting", "hello"]).unwrap().status.success());
    assert!(cli(&["save"]).unwrap().status.success());
    let _ = cli(&["shutdown", "nosave"]);
    let _ = server.wait();
    let snap = dir.join("redis.tar");
    sh(
        "tar",
        &format!("tar -C {} -cf {} .", data.display(), snap.display()),
    );
    snap
}

/// MariaDB (`db`, consistency from `@DB_CONSISTENCY@`) and Redis (`cache`, stopped for copies)
/// seeded from the snapshots beside the compose file.
const STACK: &str = r#"name: shop
x-skiff: {driver: process}
services:
  db:
    command:
      - sh
      - -c
      - >-
        exec mariadbd --no-defaults --datadir="$$SKIFF_VOLUME_DATA" --port="$$PORT"
        --bind-address="$$SKIFF_HOST" --skip-networking=0
        --socket="$$SKIFF_VOLUME_DATA/mysqld.sock" --pid-file="$$SKIFF_VOLUME_DATA/mysqld.pid"
        --innodb-log-file-size=4M --innodb-buffer-pool-size=16M --innodb-use-native-aio=0 @USER@
    ports: [{name: sql, target: 3306}]
    volumes: [data:/var/lib/mysql]
    stop_grace_period: 30s
    x-skiff:
      seed: {from: ./db.tar.zst, into: data@DB_CONSISTENCY@}
      readiness:
        test: [CMD-SHELL, 'mariadb-admin --no-defaults -uroot -h"$$SKIFF_HOST" -P"$$PORT" ping']
        interval: 1s
        timeout: 330ms
  cache:
    command:
      - sh
      - -c
      - >-
        exec redis-server --port "$$PORT" --bind "$$SKIFF_HOST" --dir "$$SKIFF_VOLUME_CACHE"
        --dbfilename dump.rdb --save "3600 1"
    ports: [{name: redis, target: 6379}]
    volumes: [cache:/data]
    x-skiff:
      seed: {from: ./redis.tar, into: cache, consistency: stop}
      readiness:
        test: [CMD-SHELL, 'redis-cli -h "$$SKIFF_HOST" -p "$$PORT" ping | grep -q PONG']
        interval: 1s
        timeout: 330ms
volumes:
  data: {}
  cache: {}
"#;

fn stack(db_consistency: &str) -> String {
    STACK
        .replace("@USER@", user_flag())
        .replace("@DB_CONSISTENCY@", db_consistency)
}

/// A project with both snapshots and the stack.
fn seeded_project(db_consistency: &str) -> tempfile::TempDir {
    let dir = project(&stack(db_consistency));
    mariadb_snapshot(dir.path());
    redis_snapshot(dir.path());
    dir
}

/// Both snapshots beside the stack, and a `skiff dev` on a data dir of its own; `None` (a
/// skip) without the database programs.
fn seeded_dev() -> Option<(tempfile::TempDir, tempfile::TempDir, Dev)> {
    if !have(&[
        "mariadbd",
        "mariadb-install-db",
        "redis-server",
        "zstd",
        "tar",
    ]) {
        return None;
    }
    let project = seeded_project("");
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());
    Some((project, data, dev))
}

/// The host port `name` of `service`'s instance 1 in `env`.
fn port(dev: &Dev, env: &str, service: &str, name: &str) -> u16 {
    let (ok, out, err) = skiff(dev, &["ps", "-n", env, "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let inst = v
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"]["service"] == service && i["id"]["index"] == 1)
        .unwrap_or_else(|| panic!("no {service}-1 in {env}: {out}"));
    inst["ports"][name].as_u64().unwrap() as u16
}

fn pid(dev: &Dev, env: &str, service: &str) -> u64 {
    let (_, out, _) = skiff(dev, &["ps", "-n", env, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"]["service"] == service)
        .and_then(|i| i["pid"].as_u64())
        .unwrap_or(0)
}

fn state(dev: &Dev, env: &str, service: &str) -> String {
    let (_, out, _) = skiff(dev, &["ps", "-n", env, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v.as_array()
        .and_then(|a| a.iter().find(|i| i["id"]["service"] == service))
        .and_then(|i| i["state"].as_str())
        .unwrap_or("")
        .to_string()
}

/// `mariadb -N -e sql` against the instance on `port`.
fn sql(port: u16, sql: &str) -> String {
    run(
        sql,
        Command::new("mariadb")
            .args(["--no-defaults", "-uroot", "-h127.0.0.1", "-N", "-B"])
            .arg(format!("-P{port}"))
            .args(["-e", sql]),
    )
    .trim()
    .to_string()
}

fn redis(port: u16, args: &[&str]) -> String {
    run(
        "redis-cli",
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
    )
    .trim()
    .to_string()
}

fn names(port: u16) -> String {
    sql(
        port,
        "select group_concat(name order by id) from shop.items",
    )
}

fn up(dev: &Dev, project: &Path, env: &str) {
    let (ok, out, err) = skiff_in(dev, project, &[], &["up", "-n", env]);
    assert!(ok, "up -n {env}: {out}{err}");
}

fn events(dev: &Dev) -> String {
    let (ok, out, err) = skiff(dev, &["events"]);
    assert!(ok, "{err}");
    out
}

fn copy_data(dev: &Dev, from: &str, to: &str) -> (u16, serde_json::Value) {
    let (code, body) = http(
        &dev.addr,
        "POST",
        &format!("/v1/envs/{from}/copy-data"),
        &format!(r#"{{"to": "{to}"}}"#),
    );
    (
        code,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

#[test]
fn mariadb_and_redis_start_filled_from_their_snapshots_and_are_seeded_once() {
    let Some((project, data, dev)) = seeded_dev() else {
        return;
    };
    up(&dev, project.path(), "default");

    let db = port(&dev, "default", "db", "sql");
    assert_eq!(names(db), "alpha,beta");
    let cache = port(&dev, "default", "cache", "redis");
    assert_eq!(redis(cache, &["get", "greeting"]), "hello");
    // The volumes are the agent's directories, named by the env, stack and volume.
    let vol = data.path().join("volumes/default/shop/data");
    assert!(vol.join("shop/items.frm").exists(), "{}", vol.display());
    assert!(
        data.path()
            .join("volumes/default/shop/.data.seeded")
            .exists()
    );

    // A row written since the seed survives a restart: the volume is not seeded again.
    sql(db, "insert into shop.items values (3, 'gamma')");
    let before = pid(&dev, "default", "db");
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["restart", "db"]);
    assert!(ok, "{out}{err}");
    wait_for("db restarted and ready", || {
        let p = pid(&dev, "default", "db");
        p != 0 && p != before && state(&dev, "default", "db") == "healthy"
    });
    let db = port(&dev, "default", "db", "sql");
    assert_eq!(names(db), "alpha,beta,gamma");
    let ev = events(&dev);
    let seeded: Vec<&str> = ev.lines().filter(|l| l.contains("seeded from")).collect();
    assert_eq!(seeded.len(), 2, "one seed per volume:\n{ev}");
    assert!(
        seeded
            .iter()
            .any(|l| l.contains("volume data seeded from") && l.contains("db.tar.zst")),
        "{ev}"
    );
}

#[test]
fn a_missing_snapshot_fails_the_start_naming_the_source() {
    let dir = project(
        "name: shop
x-skiff: {driver: process}
services:
  db:
    command: [sleep, '600']
    volumes: [data:/var/lib/db]
    restart: 'no'
    x-skiff:
      seed: {from: ./missing.tar.zst, into: data}
volumes:
  data: {}
",
    );
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());
    let (ok, out, err) = skiff_in(&dev, dir.path(), &[], &["up", "--timeout", "60"]);
    let text = format!("{out}{err}");
    assert!(!ok, "up succeeded without the snapshot: {text}");
    assert!(text.contains("missing.tar.zst: cannot read"), "{text}");
    let ev = events(&dev);
    let expected = format!(
        "seeding volume data from {}/missing.tar.zst: cannot read",
        dir.path().display()
    );
    assert!(ev.contains(&expected), "{expected:?} not in events:\n{ev}");
    assert!(!data.path().join("volumes/default/shop/data").exists());
}

#[test]
fn copy_data_carries_env_a_into_b_freezing_the_db_and_restarting_the_stopped_cache() {
    let Some((project, data, dev)) = seeded_dev() else {
        return;
    };
    up(&dev, project.path(), "alpha");
    let db_a = port(&dev, "alpha", "db", "sql");
    let cache_a = port(&dev, "alpha", "cache", "redis");
    sql(db_a, "insert into shop.items values (3, 'written-in-a')");
    redis(cache_a, &["set", "visits", "41"]);
    let (db_pid, cache_pid) = (pid(&dev, "alpha", "db"), pid(&dev, "alpha", "cache"));

    let (code, answer) = copy_data(&dev, "alpha", "beta");
    assert_eq!(code, 200, "{answer}");
    let vols = answer["volumes"].as_array().unwrap();
    let by_volume = |v: &str| {
        vols.iter()
            .find(|x| x["volume"] == v)
            .unwrap_or_else(|| panic!("no {v} in {answer}"))
    };
    for v in ["data", "cache"] {
        let c = by_volume(v);
        assert_eq!(c["stack"], "shop");
        // This machine's ext4 has no reflinks: every byte is written.
        assert_eq!(c["method"], "copy", "{c}");
        assert!(c["bytes"].as_u64().unwrap() > 0, "{c}");
        assert_eq!(c["written"], c["bytes"], "{c}");
    }
    // freeze: the same mariadbd, never restarted; stop: redis stopped (saving its data on
    // SIGTERM) and started again.
    assert_eq!(pid(&dev, "alpha", "db"), db_pid);
    wait_for("the stopped cache back and ready", || {
        let p = pid(&dev, "alpha", "cache");
        p != 0 && p != cache_pid && state(&dev, "alpha", "cache") == "healthy"
    });
    assert_eq!(names(db_a), "alpha,beta,written-in-a");

    // B starts on the copies (they hold data: no seed), with what A had written.
    up(&dev, project.path(), "beta");
    let db_b = port(&dev, "beta", "db", "sql");
    let cache_b = port(&dev, "beta", "cache", "redis");
    assert_eq!(names(db_b), "alpha,beta,written-in-a");
    assert_eq!(redis(cache_b, &["get", "visits"]), "41");
    // The environments are apart from now on.
    sql(db_b, "insert into shop.items values (4, 'only-in-b')");
    assert_eq!(names(db_b), "alpha,beta,written-in-a,only-in-b");
    assert_eq!(names(db_a), "alpha,beta,written-in-a");
    let ev = events(&dev);
    assert!(ev.contains("already holds data: not seeded"), "{ev}");

    // A second copy would overwrite B's data: refused, and A runs on.
    let (code, answer) = copy_data(&dev, "alpha", "beta");
    assert_eq!(code, 409, "{answer}");
    assert_eq!(answer["code"], "copy_failed");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("already holds data"),
        "{answer}"
    );
    assert_eq!(
        pid(&dev, "alpha", "db"),
        db_pid,
        "a failed copy left the db frozen or stopped"
    );
    assert_eq!(names(db_a), "alpha,beta,written-in-a");

    // What a user types: a clone with its data, then its removal with the data.
    let (ok, out, err) = skiff(&dev, &["env", "clone", "alpha", "gamma", "--with-data"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("volume data of shop") && out.contains("by copy"),
        "{out}"
    );
    wait_for("gamma's db ready", || {
        state(&dev, "gamma", "db") == "healthy"
    });
    assert_eq!(
        names(port(&dev, "gamma", "db", "sql")),
        "alpha,beta,written-in-a"
    );
    let volumes = data.path().join("volumes").join("gamma");
    assert!(volumes.join("shop").join("data").is_dir());
    let (ok, out, err) = skiff(&dev, &["env", "rm", "gamma", "--yes"]);
    assert!(ok, "{out}{err}");
    assert!(!volumes.exists(), "env rm removed gamma's volumes");
    assert!(
        data.path().join("volumes/alpha/shop/data").is_dir(),
        "and only gamma's"
    );
}

/// A loop-mounted XFS image with reflinks, unmounted (and its loop device freed) on drop.
struct Xfs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Xfs {
    fn make() -> Option<Xfs> {
        if !root() {
            eprintln!("skipped: mounting an XFS image needs root");
            return None;
        }
        if !have(&["mkfs.xfs", "losetup"]) {
            return None;
        }
        if !Path::new("/dev/loop-control").exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "no loop devices (/dev/loop-control)"
            );
            eprintln!("skipped: no loop devices");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("xfs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        // Sparse: the 320 MiB the file system needs at least take no disk.
        std::fs::File::create(&image)
            .unwrap()
            .set_len(320 << 20)
            .unwrap();
        sh(
            "mkfs.xfs",
            &format!("mkfs.xfs -q -m reflink=1 {}", image.display()),
        );
        sh(
            "mount",
            &format!("mount -o loop {} {}", image.display(), mnt.display()),
        );
        Some(Xfs { mnt, _dir: dir })
    }

    /// Bytes in use on the file system.
    fn used(&self) -> u64 {
        let out = run(
            "df",
            Command::new("df")
                .args(["-B1", "--output=used"])
                .arg(&self.mnt),
        );
        out.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-d").arg(&self.mnt).status();
    }
}

#[test]
fn copy_data_reflinks_on_xfs_and_writes_nothing() {
    let Some(xfs) = Xfs::make() else { return };
    let data = xfs.mnt.join("skiff");
    let dir = project(
        "name: blobs
x-skiff: {driver: process}
services:
  store:
    command: [sh, -c, 'head -c 16777216 /dev/urandom > \"$$SKIFF_VOLUME_BLOB/blob.tmp\" && mv \"$$SKIFF_VOLUME_BLOB/blob.tmp\" \"$$SKIFF_VOLUME_BLOB/blob\"; exec sleep 600']
    volumes: [blob:/blob]
    x-skiff:
      readiness: {test: [CMD-SHELL, 'test -s \"$$SKIFF_VOLUME_BLOB/blob\"'], interval: 1s, timeout: 330ms}
volumes:
  blob: {}
",
    );
    {
        let dev = start_dev(&data);
        up(&dev, dir.path(), "alpha");
        let pid_before = pid(&dev, "alpha", "store");
        let used = xfs.used();
        let (code, answer) = copy_data(&dev, "alpha", "beta");
        assert_eq!(code, 200, "{answer}");
        let c = &answer["volumes"][0];
        assert_eq!(
            (c["volume"].as_str(), c["method"].as_str()),
            (Some("blob"), Some("reflink")),
            "{answer}"
        );
        assert_eq!(c["bytes"], 16 << 20);
        assert_eq!(c["written"], 0);
        // Shared extents: the file system grew by metadata only, not by the 16 MiB.
        let grew = xfs.used().saturating_sub(used);
        assert!(grew < 2 << 20, "the reflink copy took {grew} bytes");
        let a = std::fs::read(data.join("volumes/alpha/blobs/blob/blob")).unwrap();
        let b = std::fs::read(data.join("volumes/beta/blobs/blob/blob")).unwrap();
        assert!(a == b && a.len() == 16 << 20);
        assert_eq!(
            pid(&dev, "alpha", "store"),
            pid_before,
            "frozen, not restarted"
        );
    }
    // The server stopped (dropped) before the image is unmounted.
}
