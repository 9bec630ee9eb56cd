//! End to end through the ingress of `skiff dev`: default hosts and `x-skiff` routes reach
//! ready instances, the ingress answers for them when none can, and instances dying or
//! coming and going under load cost no request.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

const STACK: &str = "name: shop
x-skiff: {driver: process}
services:
  web:
    command: [skiff-demo, --name, web]
    ports: [{name: http, target: 8080}]
    deploy: {replicas: 3}
    stop_grace_period: 5s
    x-skiff:
      readiness: {http: {path: /health}, interval: 200ms, retries: 1}
  slow:
    command: [skiff-demo, --name, slow]
    ports: [{name: http, target: 8080}]
    deploy: {replicas: 2}
    stop_signal: SIGKILL
  api:
    command: [skiff-demo, --name, api]
    expose: ['9000']
    x-skiff:
      routes:
        - {host: shop.example.test, path: /api, strip_prefix: true}
";

const WEB: &str = "web.shop.default.localhost";

fn get(dev: &Dev, host: &str, path: &str) -> (u16, String) {
    HttpConn::connect(&dev.ingress)
        .and_then(|mut c| c.get(host, path))
        .unwrap_or_else(|e| panic!("GET http://{host}{path} through {}: {e}", dev.ingress))
}

#[test]
fn default_hosts_and_x_skiff_routes_reach_ready_instances_and_errors_say_why() {
    let (dev, project, _data) = up_stack(STACK);

    // Every ready replica serves the default host.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let (code, body) = get(&dev, WEB, "/");
        assert_eq!(code, 200, "{body}");
        assert!(body.starts_with("web "), "{body}");
        seen.insert(body);
    }
    assert_eq!(seen.len(), 3, "requests spread over the replicas: {seen:?}");

    // An x-skiff route: host and path prefix, the prefix stripped, X-Forwarded-* set.
    let (code, body) = get(&dev, "shop.example.test:7780", "/api/echo");
    assert_eq!(code, 200, "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["x-forwarded-for"], "127.0.0.1");
    assert_eq!(echoed["x-forwarded-proto"], "http");
    assert_eq!(echoed["x-forwarded-host"], "shop.example.test:7780");
    assert_eq!(echoed["host"], "shop.example.test:7780");
    let (code, body) = get(&dev, "shop.example.test", "/apiary");
    assert_eq!(code, 404, "a prefix matches whole segments: {body}");
    assert!(body.contains("no route for host"), "{body}");

    // `skiff routes` shows the table the ingress routes by, and which route a request takes.
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["routes", "-o", "json"]);
    assert!(ok, "{out}{err}");
    let routes: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let web = routes
        .iter()
        .find(|r| r["host"] == "web.shop.default.localhost")
        .expect("the default host of web");
    assert_eq!(web["backends"].as_array().unwrap().len(), 3, "{out}");
    let (ok, out, err) = skiff_in(
        &dev,
        project.path(),
        &[],
        &["routes", "http://shop.example.test:7780/api/echo"],
    );
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("HOST"), "{out}");
    assert_eq!(out.lines().count(), 2, "one route: {out}");
    assert!(
        out.contains("/api (stripped)") && out.contains("default/shop/api"),
        "{out}"
    );
    // The path reaches the API whole, `&` and `=` included (the CLI encodes the query).
    let (ok, out, err) = skiff_in(
        &dev,
        project.path(),
        &[],
        &["routes", "shop.example.test/apiary&path=/api"],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains(r#"no route for host "shop.example.test" and path "/apiary&path=/api""#),
        "{err}"
    );
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["routes", "nope.localhost"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("no route for host \"nope.localhost\""),
        "{err}"
    );

    // Nothing ready: the ingress says which service has no instance.
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["stop", "web"]);
    assert!(ok, "{out}{err}");
    let (code, body) = get(&dev, WEB, "/");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("service web (stack shop, env default)")
            && body.contains("no ready instance"),
        "{body}"
    );
}

/// Closed-loop keep-alive GETs from `threads` connections until stopped; counts answers that
/// are not 2xx/3xx and socket errors as failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(addr: &str, host: &'static str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok, addr) = (stop.clone(), ok.clone(), addr.to_string());
                std::thread::spawn(move || {
                    let mut failures = Vec::new();
                    let mut conn = None;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match HttpConn::connect(&addr) {
                                Ok(c) => conn.insert(c),
                                Err(e) => {
                                    failures.push(format!("connect: {e}"));
                                    continue;
                                }
                            },
                        };
                        match c.get(host, "/") {
                            Ok((code, _)) if (200..400).contains(&code) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((code, body)) => failures.push(format!("{code}: {body}")),
                            Err(e) => {
                                failures.push(format!("socket: {e}"));
                                conn = None;
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        Load { stop, ok, threads }
    }

    /// Stops; more than 1,000 requests went through and none failed.
    fn finish_without_failures(self) {
        let (ok, failures) = self.finish();
        assert!(ok > 1000, "only {ok} requests went through");
        assert!(
            failures.is_empty(),
            "{} of {} requests failed: {:?}",
            failures.len(),
            ok + failures.len(),
            &failures[..failures.len().min(5)]
        );
    }

    /// Stops and returns (successful requests, failures).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// A service whose changes roll out (`@ORDER@` and `@VERSION@` are filled in per step).
const ROLLING: &str = "name: shop
x-skiff: {driver: process}
services:
  web:
    command: [skiff-demo, --name, web]
    ports: [{name: http, target: 8080}]
    environment: {DEMO_VERSION: '@VERSION@'}
    deploy:
      replicas: 3
      update_config: {order: '@ORDER@', monitor: 500ms}
    stop_grace_period: 5s
    x-skiff:
      readiness: {http: {path: /health}, interval: 200ms, retries: 1}
";

#[test]
fn rolling_updates_start_first_and_stop_first_under_load_fail_no_request() {
    let file = |order: &str, version: &str| {
        ROLLING
            .replace("@ORDER@", order)
            .replace("@VERSION@", version)
    };
    let (dev, project, _data) = up_stack(&file("start-first", "v1"));
    let load = Load::start(&dev.ingress, WEB, 4);
    std::thread::sleep(Duration::from_millis(500));
    for (order, version) in [("start-first", "v2"), ("stop-first", "v3")] {
        std::fs::write(project.path().join("compose.yaml"), file(order, version)).unwrap();
        let started = Instant::now();
        let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["up", "--timeout", "60"]);
        assert!(ok, "{order}: {out}{err}");
        // `up` returns once every instance runs the new release: all answers say so.
        for _ in 0..10 {
            let (code, body) = get(&dev, WEB, "/");
            assert!(
                code == 200 && body.contains(version),
                "{order}: {code} {body}"
            );
        }
        eprintln!("{order}: rolled out in {:?}", started.elapsed());
        let (_, events, _) = skiff_in(&dev, project.path(), &[], &["events"]);
        assert!(
            events.contains("rolling out release") && events.contains(order),
            "{events}"
        );
    }
    load.finish_without_failures();
    // `rollout status` says how the last one went, once its monitor window is over.
    wait_for("the rollout done", || {
        let (_, out, _) = skiff_in(&dev, project.path(), &[], &["rollout", "status", "shop"]);
        out.lines()
            .any(|l| l.starts_with("web ") && l.contains("2 -> 3") && l.contains("done"))
    });
    let (_, out, _) = skiff_in(&dev, project.path(), &[], &["rollout", "status", "shop"]);
    assert!(out.contains("3/3"), "{out}");
    let (ok, _, err) = skiff_in(
        &dev,
        project.path(),
        &[],
        &["rollout", "status", "shop", "db"],
    );
    assert!(
        !ok && err.contains("db of stack shop has not rolled out a change yet"),
        "{err}"
    );
}

#[test]
fn kill_9_of_an_instance_and_scaling_3_to_6_to_3_under_load_fail_no_request() {
    let (dev, project, _data) = up_stack(STACK);
    let load = Load::start(&dev.ingress, WEB, 4);
    std::thread::sleep(Duration::from_millis(500));

    // kill -9: connects to it fail, and are retried on another instance.
    let pid = instance_pid(&dev, "web", 2);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1000));

    // Scale up and down: new instances join when ready; removed ones leave the table, drain,
    // and only then get their stop signal.
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["scale", "web=6"]);
    assert!(ok, "{out}{err}");
    wait_for("6 ready", || {
        let (_, out, _) = skiff_in(&dev, project.path(), &[], &["ps", "-o", "json"]);
        let ps: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        ps.as_array().is_some_and(|a| {
            a.iter()
                .filter(|i| i["id"]["service"] == "web" && i["state"] == "healthy")
                .count()
                == 6
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["scale", "web=3"]);
    assert!(ok, "{out}{err}");
    std::thread::sleep(Duration::from_millis(500));

    load.finish_without_failures();
}

#[test]
fn a_stopped_instance_finishes_its_requests_before_its_stop_signal() {
    // `slow` dies at once on its stop signal (SIGKILL): only draining first saves the
    // requests it is serving.
    let (dev, project, _data) = up_stack(STACK);
    let started = Instant::now();
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let addr = dev.ingress.clone();
            std::thread::spawn(move || {
                HttpConn::connect(&addr)
                    .and_then(|mut c| c.get("slow.shop.default.localhost", "/?latency=1500ms"))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["scale", "slow=0"]);
    assert!(ok, "{out}{err}");
    for r in requests {
        let (code, body) = r.join().unwrap().expect("the request completes");
        assert_eq!(code, 200, "{body}");
        assert!(body.starts_with("slow "), "{body}");
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    // And then they are gone.
    wait_for("slow stopped", || {
        get(&dev, "slow.shop.default.localhost", "/").0 == 503
    });
}

#[test]
fn upgraded_connections_are_tunnelled_and_http2_clients_are_served() {
    use std::io::{Read, Write};
    let (dev, _project, _data) = up_stack(STACK);

    // An upgrade (as a websocket handshake): 101, then bytes both ways through the ingress.
    let mut s = std::net::TcpStream::connect(&dev.ingress).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /upgrade HTTP/1.1\r\nHost: {WEB}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed in the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in ["hello", "through the tunnel"] {
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(String::from_utf8_lossy(&back), msg);
    }

    // HTTP/2 without TLS (prior knowledge), as gRPC clients and curl --http2 speak it.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .arg(format!("http://{}/", dev.ingress))
        .args(["-H", &format!("Host: {WEB}")])
        .output()
        .expect("curl (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("web "), "{text}");
    assert!(text.trim_end().ends_with("2 200"), "{text}");
}

#[test]
fn a_published_port_balances_connections_over_the_replicas_and_closes_with_the_stack() {
    // compose's `ports: "HOST:CONTAINER"`: skiff listens on HOST for the whole service.
    let (dev, project, _data) = up_stack(
        "name: mesh
x-skiff: {driver: process}
services:
  web:
    command: [skiff-demo, --name, web]
    ports: ['17791:8080']
    deploy: {replicas: 2}
",
    );
    let fresh_get = || {
        HttpConn::connect("127.0.0.1:17791")
            .and_then(|mut c| c.get("anything", "/"))
            .expect("a connection through the service port")
    };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (code, body) = fresh_get();
        assert_eq!(code, 200, "{body}");
        seen.insert(body);
    }
    assert_eq!(
        seen.len(),
        2,
        "connections spread over both replicas: {seen:?}"
    );

    // One replica dies: once it is seen gone, new connections go to the other one. (A
    // connection the dying process's listen backlog took in the moment before is reset:
    // unlike the HTTP ingress, a TCP balancer cannot replay what the client sent.)
    let pid = instance_pid(&dev, "web", 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("web-1 seen dead", || {
        let (_, out, _) = skiff_in(&dev, project.path(), &[], &["ps", "-o", "json"]);
        let ps: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        ps.as_array().is_some_and(|a| {
            a.iter().any(|i| {
                i["id"]["service"] == "web"
                    && i["id"]["index"] == 1
                    && (i["restarts"].as_u64() > Some(0) || i["state"] != "healthy")
            })
        })
    });
    for _ in 0..20 {
        assert_eq!(fresh_get().0, 200);
    }

    // The stack goes: so does its port.
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["down"]);
    assert!(ok, "{out}{err}");
    wait_for("the service port closed", || {
        std::net::TcpStream::connect("127.0.0.1:17791").is_err()
    });
}
