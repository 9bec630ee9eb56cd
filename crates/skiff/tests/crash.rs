//! `kill -9` of `skiff dev` at random moments and at named crash points: no acknowledged
//! release is lost, and once the server is back every desired instance runs exactly once —
//! no duplicate, no leak, no orphaned shim.
//!
//! `SKIFF_CRASH_ROUNDS` sets the random rounds (default 12); `SKIFF_CRASH_SEED` replays a
//! run (the seed is printed).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::*;

/// Two services of `sleep` processes; replica counts come from the environment.
const COMPOSE: &str = r#"
x-skiff:
  driver: process
services:
  a:
    command: [sleep, "1000"]
    environment:
      CRASH_MARK: ${MARK}
    deploy:
      replicas: ${A:-2}
  b:
    command: [sh, -c, "exec sleep 1000"]
    environment:
      CRASH_MARK: ${MARK}
    depends_on: [a]
    deploy:
      replicas: ${B:-1}
"#;

struct Fixture {
    data: tempfile::TempDir,
    project: tempfile::TempDir,
    stack: String,
    mark: String,
}

impl Fixture {
    fn new(stack: &str) -> Fixture {
        let data = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        std::fs::write(
            project.path().join("compose.yaml"),
            format!("name: {stack}\n{COMPOSE}"),
        )
        .unwrap();
        let mark = data.path().display().to_string();
        Fixture {
            data,
            project,
            stack: stack.to_string(),
            mark,
        }
    }

    fn cli(&self, dev: &Dev, env: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
        let mut all = vec![("MARK", self.mark.as_str())];
        all.extend_from_slice(env);
        skiff_in(dev, self.project.path(), &all, args)
    }

    fn get(&self, dev: &Dev, path: &str) -> serde_json::Value {
        let (code, body) = http(&dev.addr, "GET", path, "");
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Instance names the server wants running now: current release, minus stopped services.
    fn desired(&self, dev: &Dev) -> BTreeSet<String> {
        let stacks = self.get(dev, "/v1/stacks");
        let Some(current) = stacks
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stack"] == self.stack.as_str())
            .and_then(|s| s["current"].as_u64())
        else {
            return BTreeSet::new();
        };
        let base = format!("/v1/envs/default/stacks/{}", self.stack);
        let rel = self.get(dev, &format!("{base}/releases/{current}"));
        let mut out = BTreeSet::new();
        for (svc, spec) in rel["spec"]["services"].as_object().unwrap() {
            let status = self.get(dev, &format!("{base}/services/{svc}"));
            if status["stopped"] == true {
                continue;
            }
            for i in 1..=spec["replicas"].as_u64().unwrap() {
                out.insert(format!("{svc}-{i}"));
            }
        }
        out
    }

    /// Live workload processes of this fixture, by instance name (from their environment).
    fn workloads(&self) -> BTreeMap<String, Vec<i32>> {
        let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (pid, env) in processes() {
            if env.get("CRASH_MARK") == Some(&self.mark)
                && let Some(inst) = env.get("SKIFF_INSTANCE")
            {
                out.entry(inst.clone()).or_default().push(pid);
            }
        }
        out
    }

    /// Shim processes serving this fixture's data dir.
    fn shims(&self) -> usize {
        let needle = format!("__shim\0{}", self.data.path().display());
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name().to_string_lossy().parse::<i32>().is_ok()
                    && !is_zombie(&e.path())
                    && std::fs::read(e.path().join("cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                        .unwrap_or(false)
            })
            .count()
    }

    /// Waits until every desired instance runs exactly once and nothing else runs; fails at
    /// once if an instance ever runs twice.
    fn assert_converges(&self, dev: &Dev, context: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let desired = self.desired(dev);
            let running = self.workloads();
            for (inst, pids) in &running {
                assert!(
                    pids.len() == 1,
                    "{context}: {inst} runs {} times: {pids:?}",
                    pids.len()
                );
            }
            let names: BTreeSet<String> = running.keys().cloned().collect();
            let shims = self.shims();
            if names == desired && shims == desired.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{context}: did not converge: desired {desired:?}, running {names:?}, \
                 {shims} shims"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Whatever a failed assertion left behind.
        for (_, pids) in self.workloads() {
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A small deterministic generator (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn kill_9(mut dev: Dev) {
    dev.child.kill().unwrap();
    dev.child.wait().unwrap();
}

#[test]
fn kill_9_at_random_moments_loses_no_release_and_never_duplicates_an_instance() {
    let seed = std::env::var("SKIFF_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let rounds: u32 = std::env::var("SKIFF_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    println!("SKIFF_CRASH_SEED={seed} SKIFF_CRASH_ROUNDS={rounds}");
    let mut rng = Rng(seed);
    let fx = Fixture::new("crashloop");
    let mut dev = start_dev(fx.data.path());
    let (ok, out, err) = fx.cli(&dev, &[], &["up"]);
    assert!(ok, "{out}{err}");
    fx.assert_converges(&dev, "first up");

    // Releases the server acknowledged: number → replicas of a and b (scale leaves b as it
    // was in the current release, which an unacknowledged up may have changed: unknown).
    let mut acked: BTreeMap<u64, (u64, Option<u64>)> = BTreeMap::new();
    acked.insert(1, (2, Some(1)));
    let mut interrupted = 0;
    for round in 0..rounds {
        let a = 1 + rng.below(3);
        let b = rng.below(3);
        let op = rng.below(5);
        let delay = Duration::from_millis(rng.below(400));
        let context = format!("round {round} (seed {seed}): op {op}, kill after {delay:?}");
        let addr = dev.addr.clone();
        let (a_s, b_s) = (a.to_string(), b.to_string());
        let worker = {
            let fx_dir = fx.project.path().to_path_buf();
            let mark = fx.mark.clone();
            std::thread::spawn(move || {
                let d = Dev::detached(addr);
                let env = [("MARK", mark.as_str()), ("A", &a_s), ("B", &b_s)];
                let args: Vec<String> = match op {
                    0 => vec!["up".into()],
                    1 => vec!["scale".into(), format!("a={a_s}")],
                    2 => vec!["stop".into(), "b".into()],
                    3 => vec!["start".into(), "b".into()],
                    _ => vec!["restart".into(), "a".into()],
                };
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                skiff_in(&d, &fx_dir, &env, &args)
            })
        };
        std::thread::sleep(delay);
        kill_9(dev);
        let (ok, out, _) = worker.join().unwrap();
        interrupted += u32::from(!ok);
        // An acknowledged up or scale names its release number.
        if (ok || out.contains("recorded"))
            && let Some(n) = release_number(&out)
        {
            acked.insert(n, (a, (op == 0).then_some(b)));
        }
        dev = start_dev(fx.data.path());
        fx.assert_converges(&dev, &context);
        // No acknowledged release is lost or changed.
        for (n, (a, b)) in &acked {
            let rel = fx.get(
                &dev,
                &format!("/v1/envs/default/stacks/crashloop/releases/{n}"),
            );
            let replicas = |s: &str| rel["spec"]["services"][s]["replicas"].as_u64().unwrap();
            assert_eq!(replicas("a"), *a, "{context}: release {n} changed");
            if let Some(b) = b {
                assert_eq!(replicas("b"), *b, "{context}: release {n} changed");
            }
        }
    }
    println!(
        "{rounds} rounds: {interrupted} commands cut off by the kill, {} releases acknowledged \
         and intact",
        acked.len()
    );
    let (ok, _, err) = fx.cli(&dev, &[], &["down", "crashloop"]);
    assert!(ok, "{err}");
    fx.assert_converges(&dev, "down");
    assert!(fx.workloads().is_empty());
}

/// `release 7` in "stack s (env e): release 7 recorded" or "release 7: a scaled to 2".
fn release_number(out: &str) -> Option<u64> {
    let rest = out.split("release ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Starts a server that aborts at `point`, runs `trigger` until it dies there, then starts a
/// normal server and checks that the stack converges.
fn crash_at(point: &str, stack: &str, before: &[&[&str]], trigger: &[&str]) {
    let fx = Fixture::new(stack);
    if !before.is_empty() {
        let dev = start_dev(fx.data.path());
        for args in before {
            let (ok, out, err) = fx.cli(&dev, &[], args);
            assert!(ok, "{args:?}: {out}{err}");
        }
        fx.assert_converges(&dev, "before the crash");
        kill_9(dev);
    }
    let mut dev = start_dev_with(fx.data.path(), &[("SKIFF_CRASH_AT", point)]);
    let (ok, out, err) = fx.cli(&dev, &[], trigger);
    let status = dev.child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(6),
        "{point}: the server did not abort there ({status}); cli: {ok} {out}{err}"
    );
    let dev = start_dev(fx.data.path());
    fx.assert_converges(&dev, point);
    let (ok, _, err) = fx.cli(&dev, &[], &["down", stack]);
    assert!(ok, "{err}");
    fx.assert_converges(&dev, "down");
}

#[test]
fn crash_after_a_release_is_stored_but_before_it_is_acknowledged() {
    crash_at("release-stored", "cp-release", &[], &["up"]);
}

#[test]
fn crash_between_writing_an_instance_dir_and_starting_its_shim() {
    crash_at("instance-dir-written:2", "cp-dir", &[], &["up"]);
}

#[test]
fn crash_after_a_workload_started_but_before_the_agent_recorded_it() {
    crash_at("instance-started:2", "cp-started", &[], &["up"]);
}

#[test]
fn crash_after_a_workload_stopped_but_before_its_directory_was_removed() {
    crash_at(
        "instance-stopped",
        "cp-stopped",
        &[&["up"]],
        &["scale", "a=1"],
    );
}
