//! Many machines for real: `skiff server` and three `skiff agent`s as separate processes,
//! each in its own network namespace, joined to the server's namespace by veth pairs
//! (addresses from 10.231.0.0/16, only inside these namespaces, created and removed here).
//! The user's view: placement by spread, constraints and global mode; work that fits
//! nowhere reported with its reason; a node drained under load with no failed request; a
//! rolling update of instances spread over the three agents under load with no failed
//! request; a node cut off and back without duplicates; an agent killed -9 and its
//! instances out of DNS and running elsewhere.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::SKIFF;

/// Three agents: n1 in zone a, n2 and n3 in zone b.
const ZONES: [&str; 3] = ["a", "b", "b"];

struct Cluster {
    prefix: String,
    /// Third octet of the first agent's /24 (the server side is .1, the agent .2).
    base: u8,
    dir: tempfile::TempDir,
    server: Option<Child>,
    agents: Vec<Option<Child>>,
}

fn run(cmd: &[&str]) -> (bool, String) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn must(cmd: &[&str]) {
    let (ok, out) = run(cmd);
    assert!(ok, "{}: {out}", cmd.join(" "));
}

/// Whether this machine lets the test build namespaces (root, iproute2).
fn can_build_namespaces() -> bool {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|u| u.split_whitespace().nth(1).map(|e| e == "0"))
            .unwrap_or(false)
    });
    root && run(&["ip", "netns", "list"]).0
}

impl Cluster {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn agent_addr(&self, i: usize) -> String {
        format!("10.231.{}.2", self.base as usize + i)
    }

    fn server_side(&self, i: usize) -> String {
        format!("10.231.{}.1", self.base as usize + i)
    }

    fn veth(&self, i: usize) -> String {
        format!("{}s{i}", self.prefix)
    }

    fn start(tag: u8) -> Cluster {
        common::ensure_demo_built();
        let prefix = format!("sk{}{tag}", std::process::id() % 10_000);
        // Distinct subnets for test processes running side by side.
        let base = ((std::process::id() % 25) as u8) * 9 + tag * 3;
        let mut c = Cluster {
            prefix,
            base,
            dir: tempfile::tempdir().unwrap(),
            server: None,
            agents: Vec::new(),
        };
        let srv = c.ns("srv");
        must(&["ip", "netns", "add", &srv]);
        must(&["ip", "-n", &srv, "link", "set", "lo", "up"]);
        must(&[
            "ip",
            "netns",
            "exec",
            &srv,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        for i in 0..ZONES.len() {
            let ns = c.ns(&format!("n{i}"));
            let (here, there) = (c.veth(i), format!("{}a{i}", c.prefix));
            must(&["ip", "netns", "add", &ns]);
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            must(&[
                "ip", "link", "add", &here, "netns", &srv, "type", "veth", "peer", "name", &there,
                "netns", &ns,
            ]);
            let (s, a) = (c.server_side(i), c.agent_addr(i));
            must(&[
                "ip",
                "-n",
                &srv,
                "addr",
                "add",
                &format!("{s}/24"),
                "dev",
                &here,
            ]);
            must(&["ip", "-n", &srv, "link", "set", &here, "up"]);
            must(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{a}/24"),
                "dev",
                &there,
            ]);
            must(&["ip", "-n", &ns, "link", "set", &there, "up"]);
            must(&["ip", "-n", &ns, "route", "add", "default", "via", &s]);
        }
        c.server = Some(c.start_server());
        for i in 0..ZONES.len() {
            let agent = c.start_agent(i);
            c.agents.push(Some(agent));
        }
        c.wait_until("three ready nodes", Duration::from_secs(20), |c| {
            c.cli(&["node", "ls"]).1.matches(" ready ").count() == 3
        });
        c
    }

    /// `skiff server` in its namespace, on its data dir (again after a kill).
    fn start_server(&self) -> Child {
        let srv = self.ns("srv");
        let data = self.dir.path().join("server");
        let mut server = Command::new("ip")
            .args(["netns", "exec", &srv, SKIFF, "server", "--data-dir"])
            .arg(&data)
            .args([
                "--api",
                "0.0.0.0:7700",
                "--dns",
                "127.0.0.1:7753",
                "--ingress",
                "127.0.0.1:7780",
                "--node-down-after",
                "2s",
            ])
            .env("SKIFF_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        loop {
            let line = lines
                .next()
                .expect("the server prints its API address")
                .unwrap();
            if line.contains("api listening on") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        server
    }

    fn start_agent(&self, i: usize) -> Child {
        let ns = self.ns(&format!("n{i}"));
        Command::new("ip")
            .args(["netns", "exec", &ns, SKIFF, "agent", "--join"])
            .arg(format!("http://{}:7700", self.server_side(i)))
            .args(["--name", &format!("n{i}"), "--address", &self.agent_addr(i)])
            .args(["--ingress", &format!("{}:7780", self.agent_addr(i))])
            .args(["--label", &format!("zone={}", ZONES[i]), "--data-dir"])
            .arg(self.agent_dir(i))
            .env("SKIFF_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn agent_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}"))
    }

    /// The CLI inside the server's namespace.
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns("srv"),
                SKIFF,
                "--addr",
                "http://127.0.0.1:7700",
            ])
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let (ok, out) = self.cli(&a);
        assert!(ok, "{out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn in_srv(&self, cmd: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec"];
        let srv = self.ns("srv");
        full.push(&srv);
        full.extend_from_slice(cmd);
        run(&full).1
    }

    /// The addresses DNS answers for a service of stack `web`.
    fn dns(&self, service: &str) -> Vec<String> {
        let name = format!("{service}.web.default.skiff");
        let mut v: Vec<String> = self
            .in_srv(&["dig", "+short", "@127.0.0.1", "-p", "7753", &name])
            .lines()
            .map(str::to_string)
            .filter(|l| l.starts_with("10.231."))
            .collect();
        v.sort();
        v
    }

    /// (instance, node name) of every allocation of a service.
    fn placed(&self, service: &str) -> Vec<(String, String)> {
        let nodes = self.json(&["node", "ls"]);
        let name_of = |id: &str| {
            nodes
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["id"] == id)
                .map(|n| n["name"].as_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for n in nodes.as_array().unwrap() {
            let name = n["name"].as_str().unwrap();
            let status = self.json(&["node", "status", name]);
            for a in status["allocations"].as_array().unwrap() {
                if a["instance"]["service"] == service {
                    let idx = a["instance"]["index"].as_u64().unwrap();
                    out.push((
                        format!("{service}-{idx}"),
                        name_of(a["node"].as_str().unwrap()),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    fn healthy(&self, service: &str) -> usize {
        self.json(&["ps"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["id"]["service"] == service && i["state"] == "healthy")
            .count()
    }

    /// Instance directories of `service` on every agent's disk: what runs, per node.
    fn on_disk(&self, service: &str) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..ZONES.len() {
            let dir = self.agent_dir(i).join("instances/default/web");
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{service}-")) {
                    out.push(name);
                }
            }
        }
        out.sort();
        out
    }

    fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut(&Cluster) -> bool,
    ) -> Duration {
        let start = Instant::now();
        while !f(self) {
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        start.elapsed()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self
            .agents
            .iter_mut()
            .flatten()
            .chain(self.server.iter_mut())
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Workloads the agents left running (agents leave them on purpose), then the
        // namespaces themselves.
        let mut names: Vec<String> = (0..ZONES.len())
            .map(|i| self.ns(&format!("n{i}")))
            .collect();
        names.push(self.ns("srv"));
        for ns in &names {
            for pid in run(&["ip", "netns", "pids", ns]).1.split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for ns in &names {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        // The agents' cgroup subtrees (`skiff/node-<id>`), empty now.
        for i in 0..ZONES.len() {
            if let Ok(id) = std::fs::read_to_string(self.agent_dir(i).join("node-id")) {
                let _ = run(&[
                    "find",
                    "/sys/fs/cgroup",
                    "-depth",
                    "-type",
                    "d",
                    "-path",
                    &format!("*/skiff/node-{}*", id.trim()),
                    "-exec",
                    "rmdir",
                    "{}",
                    ";",
                ]);
            }
        }
    }
}

const STACK: &str = r#"
name: web
x-skiff:
  driver: process
services:
  web:
    command: [skiff-demo, --name, web]
    expose: ["8080"]
    stop_grace_period: 5s
    deploy:
      replicas: 3
  solo:
    command: [skiff-demo, --name, solo, --start-delay, 1500ms]
    expose: ["8080"]
    stop_grace_period: 5s
  pinned:
    command: [skiff-demo, --name, pinned]
    expose: ["8080"]
    deploy:
      replicas: 2
      placement:
        constraints: ["node.labels.zone == b"]
  everywhere:
    command: [sleep, "1000"]
    deploy:
      mode: global
"#;

/// 6 replicas over the 3 agents, rolled 2 at a time, start-first.
const ROLLING: &str = r#"
name: roll
x-skiff:
  driver: process
services:
  web:
    command: [skiff-demo, --name, web]
    expose: ["8080"]
    environment: {DEMO_VERSION: "@VERSION@"}
    stop_grace_period: 5s
    deploy:
      replicas: 6
      update_config: {parallelism: 2, order: start-first, monitor: 500ms}
    x-skiff:
      readiness: {http: {path: /health}, interval: 500ms, retries: 3}
"#;

const BIG: &str = r#"
name: big
x-skiff:
  driver: process
services:
  huge:
    command: [sleep, "1000"]
    deploy:
      resources:
        reservations:
          memory: 100000G
"#;

fn skip() -> bool {
    if can_build_namespaces() {
        return false;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI runs as root with iproute2: the cluster tests must run"
    );
    eprintln!("skipped: building network namespaces needs root and iproute2");
    true
}

#[test]
fn placement_follows_spread_constraints_and_global_mode_and_unplaceable_work_says_why() {
    if skip() {
        return;
    }
    let c = Cluster::start(0);
    let file = c.write("compose.yaml", STACK);
    let (ok, out) = c.cli(&["up", "-f", file.to_str().unwrap(), "--timeout", "60"]);
    assert!(ok, "{out}");

    let web = c.placed("web");
    let mut nodes: Vec<&str> = web.iter().map(|(_, n)| n.as_str()).collect();
    nodes.sort();
    assert_eq!(
        nodes,
        ["n0", "n1", "n2"],
        "spread: one web per node: {web:?}"
    );
    let pinned = c.placed("pinned");
    assert!(
        pinned.len() == 2 && pinned.iter().all(|(_, n)| n != "n0"),
        "zone b only: {pinned:?}"
    );
    let everywhere = c.placed("everywhere");
    let mut nodes: Vec<&str> = everywhere.iter().map(|(_, n)| n.as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, ["n0", "n1", "n2"], "global: one per node");
    let mut want: Vec<String> = (0..3).map(|i| c.agent_addr(i)).collect();
    want.sort();
    assert_eq!(c.dns("web"), want, "DNS answers each node's instance");

    // `plan` says where things would go before anything is recorded: web scaled to 5 keeps
    // its 3 and places 2, and `huge` fits nowhere, with the reason (exit code 2).
    let scaled = c.write("scaled.yaml", &STACK.replace("replicas: 3", "replicas: 5"));
    let (ok, out) = c.cli(&["plan", "-f", scaled.to_str().unwrap()]);
    assert!(ok, "{out}");
    let web_row = out.lines().find(|l| l.starts_with("web ")).unwrap();
    let cols: Vec<&str> = web_row.split_whitespace().collect();
    assert_eq!(cols[1], "3", "keeps its three: {out}");
    assert!(web_row.contains(": 1") || web_row.contains(": 2"), "{out}");
    let big = c.write("big.yaml", BIG);
    let (ok, out) = c.cli(&["plan", "-f", big.to_str().unwrap()]);
    assert!(
        !ok && out.contains("1 fit nowhere") && out.contains("3 lack memory"),
        "{out}"
    );
    assert!(
        c.cli(&["history", "big"]).1.lines().count() <= 1,
        "plan records nothing"
    );
    let (ok, out) = c.cli(&["up", "-d", "-f", big.to_str().unwrap()]);
    assert!(ok, "{out}");
    c.wait_until("the unplaced event", Duration::from_secs(10), |c| {
        c.cli(&["events"]).1.contains("unplaced")
    });
    let events = c.cli(&["events"]).1;
    let line = events.lines().find(|l| l.contains("unplaced")).unwrap();
    assert!(
        line.contains("huge") && line.contains("memory") && line.contains("3 lack memory"),
        "the reason in words, with counts: {line}"
    );
    // `up` (waiting) fails at once with the reason; `status` shows it.
    let started = Instant::now();
    let (ok, out) = c.cli(&["up", "-f", big.to_str().unwrap(), "--timeout", "60"]);
    assert!(
        !ok && out.contains("fit no node") && out.contains("lack memory"),
        "{out}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "failed fast");
    let (ok, out) = c.cli(&["status", "huge"]);
    assert!(
        ok && out.contains("Unplaced:") && out.contains("lack memory"),
        "{out}"
    );
}

#[test]
fn a_drained_node_moves_its_instances_under_load_without_a_failed_request() {
    if skip() {
        return;
    }
    let c = Cluster::start(1);
    let file = c.write("compose.yaml", STACK);
    let (ok, out) = c.cli(&["up", "-f", file.to_str().unwrap(), "--timeout", "60"]);
    assert!(ok, "{out}");
    // Drain the node that runs solo's only instance: start-first, its replacement runs and
    // is ready before the old copy leaves the catalog.
    let (solo_before, drained) = c.placed("solo").remove(0);
    let drained_addr = c.agent_addr(drained[1..].parse().unwrap());
    // Load through the server's ingress and through the ingress of agent n1 (its own copy
    // of the catalog): a drain waits for the requests in flight on both.
    let script = c.write("mixed.lua", common::MIXED_LUA);
    let load = |service: &str, target: String| {
        let srv = c.ns("srv");
        let host = format!("Host: {service}.web.default.localhost");
        let script = script.to_str().unwrap().to_string();
        std::thread::spawn(move || {
            run(&[
                "ip", "netns", "exec", &srv, "wrk", "-t1", "-c8", "-d5s", "-s", &script, "-H",
                &host, &target,
            ])
            .1
        })
    };
    let loads = [
        (
            "web through the server",
            load("web", "http://127.0.0.1:7780/".to_string()),
        ),
        (
            "solo through the server",
            load("solo", "http://127.0.0.1:7780/".to_string()),
        ),
        (
            "web through n1",
            load("web", format!("http://{}:7780/", c.agent_addr(1))),
        ),
        (
            "solo through n1",
            load("solo", format!("http://{}:7780/", c.agent_addr(1))),
        ),
    ];
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, out) = c.cli(&["node", "drain", &drained]);
    assert!(ok, "{out}");
    for (what, wrk) in loads {
        let out = wrk.join().unwrap();
        let m = common::Mixed::parse(&out).unwrap_or_else(|| panic!("{what}: {out}"));
        assert!(
            m.requests > 0 && m.failed == 0,
            "{what}: no failed request while {drained} drained: {out}"
        );
    }
    c.wait_until(
        "web back to 3 healthy, solo to 1",
        Duration::from_secs(20),
        |c| c.healthy("web") == 3 && c.healthy("solo") == 1,
    );
    c.wait_until(
        "nothing left on the drained node",
        Duration::from_secs(20),
        |c| {
            c.placed("web")
                .iter()
                .chain(&c.placed("solo"))
                .all(|(_, n)| *n != drained)
        },
    );
    let solo_after = c.placed("solo");
    assert_eq!(solo_after.len(), 1, "one copy once the old one stopped");
    assert_ne!(
        solo_after[0].0, solo_before,
        "the replacement ran beside the old copy under its own index"
    );
    assert!(!c.dns("web").contains(&drained_addr));

    // Every node reaches web at its one stable address, wherever its instances run.
    let catalog: serde_json::Value = serde_json::from_str(&c.in_srv(&[
        "curl",
        "-s",
        "http://127.0.0.1:7700/v1/catalog?env=default&stack=web&service=web",
    ]))
    .unwrap();
    let address = catalog["services"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(address.starts_with("127.77."), "{catalog}");
    for n in ["n0", "n1", "n2"] {
        let (ok, body) = run(&[
            "ip",
            "netns",
            "exec",
            &c.ns(n),
            "curl",
            "-s",
            "--max-time",
            "5",
            &format!("http://{address}:8080/"),
        ]);
        assert!(ok && body.starts_with("web "), "{n}: {body}");
    }
}

#[test]
fn a_rolling_update_across_three_agents_under_mixed_load_fails_no_request() {
    if skip() {
        return;
    }
    let c = Cluster::start(3);
    let file = c.write("compose.yaml", &ROLLING.replace("@VERSION@", "v1"));
    let (ok, out) = c.cli(&["up", "-f", file.to_str().unwrap(), "--timeout", "60"]);
    assert!(ok, "{out}");
    let nodes = |c: &Cluster| {
        let placed = c.placed("web");
        let mut per_node: std::collections::BTreeMap<String, usize> = Default::default();
        for (_, n) in &placed {
            *per_node.entry(n.clone()).or_default() += 1;
        }
        (placed.len(), per_node)
    };
    let (count, per_node) = nodes(&c);
    assert_eq!(count, 6);
    assert_eq!(per_node.len(), 3, "spread over the 3 agents: {per_node:?}");

    // The mixed load through the server's ingress while `up` rolls v2 out.
    let script = c.write("mixed.lua", common::MIXED_LUA);
    let secs = 15;
    let wrk = {
        let srv = c.ns("srv");
        let script = script.to_str().unwrap().to_string();
        std::thread::spawn(move || {
            run(&[
                "ip",
                "netns",
                "exec",
                &srv,
                "wrk",
                "-t2",
                "-c64",
                &format!("-d{secs}s"),
                "--latency",
                "-s",
                &script,
                "-H",
                "Host: web.roll.default.localhost",
                "http://127.0.0.1:7780/",
            ])
            .1
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    c.write("compose.yaml", &ROLLING.replace("@VERSION@", "v2"));
    let (ok, out) = c.cli(&["up", "-f", file.to_str().unwrap(), "--timeout", "60"]);
    let took = started.elapsed();
    assert!(ok, "{out}");
    let out = wrk.join().unwrap();
    let m = common::Mixed::parse(&out).unwrap_or_else(|| panic!("wrk: {out}"));
    eprintln!(
        "rolled 6 over 3 agents in {took:?} under {} requests, {} failed, p99 {} ms",
        m.requests, m.failed, m.p99_ms
    );
    assert!(
        took + Duration::from_millis(1500) < Duration::from_secs(secs),
        "the rollout ({took:?}) outlasted the load"
    );
    assert!(m.requests > 0 && m.failed == 0, "failed requests: {out}");

    // Every answer from v2, and still spread over the 3 nodes.
    for _ in 0..20 {
        let body = c.in_srv(&[
            "curl",
            "-s",
            "--max-time",
            "5",
            "-H",
            "Host: web.roll.default.localhost",
            "http://127.0.0.1:7780/",
        ]);
        assert!(body.starts_with("web ") && body.contains("v2"), "{body}");
    }
    let (count, per_node) = nodes(&c);
    assert_eq!(count, 6);
    assert_eq!(
        per_node.len(),
        3,
        "still spread over the 3 agents: {per_node:?}"
    );
    c.wait_until("the rollout done", Duration::from_secs(20), |c| {
        let (_, out) = c.cli(&["rollout", "status", "roll"]);
        out.lines()
            .any(|l| l.starts_with("web ") && l.contains("done") && l.contains("6/6"))
    });
}

#[test]
fn a_node_cut_off_or_killed_is_down_its_instances_run_elsewhere_once_and_a_new_server_relearns_them()
 {
    if skip() {
        return;
    }
    let mut c = Cluster::start(2);
    let file = c.write("compose.yaml", STACK);
    let (ok, out) = c.cli(&["up", "-f", file.to_str().unwrap(), "--timeout", "60"]);
    assert!(ok, "{out}");

    // The link of n1 goes down: n1 is down after 2 s, its instances move.
    let srv = c.ns("srv");
    must(&["ip", "-n", &srv, "link", "set", &c.veth(1), "down"]);
    let gone = c.wait_until("n1 out of DNS", Duration::from_secs(10), |c| {
        !c.dns("web").contains(&c.agent_addr(1))
    });
    assert!(gone < Duration::from_secs(4), "out of DNS after {gone:?}");
    c.wait_until("web healthy on n0 and n2", Duration::from_secs(20), |c| {
        c.healthy("web") == 3 && c.placed("web").iter().all(|(_, n)| n != "n1")
    });
    // Back: n1's agent stops the copies it no longer has allocations for.
    must(&["ip", "-n", &srv, "link", "set", &c.veth(1), "up"]);
    c.wait_until("n1 ready again", Duration::from_secs(20), |c| {
        c.json(&["node", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["status"] == "ready")
    });
    c.wait_until(
        "each web instance once on disk",
        Duration::from_secs(20),
        |c| c.on_disk("web") == ["web-1", "web-2", "web-3"],
    );
    assert_eq!(c.dns("web").len(), 2, "two nodes run the three webs");

    // kill -9 of n2's agent: out of DNS within the down timeout, running elsewhere.
    let placed_on_n2 = c.placed("web").iter().filter(|(_, n)| n == "n2").count();
    assert!(placed_on_n2 > 0);
    let mut agent = c.agents[2].take().unwrap();
    let killed = Instant::now();
    agent.kill().unwrap();
    agent.wait().unwrap();
    c.wait_until("n2 out of DNS", Duration::from_secs(10), |c| {
        !c.dns("web").contains(&c.agent_addr(2))
    });
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "{:?}",
        killed.elapsed()
    );
    c.wait_until("web healthy without n2", Duration::from_secs(20), |c| {
        c.healthy("web") == 3 && c.placed("web").iter().all(|(_, n)| n == "n0" || n == "n1")
    });

    // kill -9 of the server: the agents keep serving; a new server learns from their full
    // reports what runs, and DNS answers it again.
    let before = c.dns("web");
    let mut server = c.server.take().unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    c.server = Some(c.start_server());
    c.wait_until(
        "DNS answers again after a server restart",
        Duration::from_secs(10),
        |c| c.dns("web") == before,
    );
}
