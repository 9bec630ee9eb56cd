//! `configs:` delivered to process instances and graceful reload (`x-skiff.reload`): a
//! release that changes only config files rewrites them and signals the running instances
//! (same pids, no request lost under load); any other change replaces them; an agent that
//! died half-way through a reload finishes it after adoption.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Two demo replicas serving their config file at /config; `@RELOAD@` and `@ENV@` are
/// replaced per test.
const STACK: &str = "name: cfg
x-skiff: {driver: process}
services:
  web:
    command: [skiff-demo, --name, web, --config-from, SKIFF_CONFIG_APP]
    ports: [{name: http, target: 8080}]
    deploy: {replicas: 2}
    stop_grace_period: 5s
    configs: [app]
    environment: {MODE: '@ENV@'}
    x-skiff:
      readiness: {http: {path: /health}, interval: 200ms, retries: 1}
@RELOAD@
configs:
  app:
    file: ./app.conf
";

const RELOAD: &str = "      reload: {signal: SIGHUP}";
const WEB: &str = "web.cfg.default.localhost";

fn compose(reload: bool, env: &str) -> String {
    STACK
        .replace("@RELOAD@", if reload { RELOAD } else { "" })
        .replace("@ENV@", env)
}

/// Writes the compose file and the config, then `skiff up` (or `up -d`).
fn up(dev: &Dev, project: &Path, file: &str, config: &str, detach: bool) -> (bool, String) {
    std::fs::write(project.join("compose.yaml"), file).unwrap();
    std::fs::write(project.join("app.conf"), config).unwrap();
    let args: &[&str] = if detach { &["up", "-d"] } else { &["up"] };
    let (ok, out, err) = skiff_in(dev, project, &[], args);
    (ok, format!("{out}{err}"))
}

fn get(dev: &Dev, path: &str) -> (u16, String) {
    HttpConn::connect(&dev.ingress)
        .and_then(|mut c| c.get(WEB, path))
        .unwrap_or_else(|e| panic!("GET {path} through {}: {e}", dev.ingress))
}

/// The pids of web's instances, by index.
fn web_pids(dev: &Dev) -> Vec<u64> {
    vec![instance_pid(dev, "web", 1), instance_pid(dev, "web", 2)]
}

/// Whether 20 requests through the ingress (spread over both replicas) all see `config`.
fn all_serve(dev: &Dev, config: &str) -> bool {
    (0..20).all(|_| get(dev, "/config") == (200, config.to_string()))
}

fn events(dev: &Dev, project: &Path) -> String {
    let (ok, out, err) = skiff_in(dev, project, &[], &["events"]);
    assert!(ok, "{err}");
    out
}

/// wrk through the ingress for `secs` seconds; a Lua script counts answers that are not
/// 2xx/3xx. Returns wrk's output and the failed requests (socket errors + bad answers).
fn wrk(ingress: &str, secs: u32) -> std::thread::JoinHandle<(String, u64)> {
    const LUA: &str = r#"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) failed = 0 end
function response(status, headers, body)
  if status >= 400 then failed = failed + 1 end
end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("failed") end
  io.write(string.format("bad answers: %d\n", n))
end
"#;
    let script = std::env::temp_dir().join(format!("skiff-reload-{}.lua", std::process::id()));
    std::fs::write(&script, LUA).unwrap();
    let url = format!("http://{ingress}/config");
    std::thread::spawn(move || {
        let out = Command::new("wrk")
            .args(["-t1", "-c8", &format!("-d{secs}s"), "-s"])
            .arg(&script)
            .args(["-H", &format!("Host: {WEB}"), &url])
            .output()
            .expect("wrk (Debian's wrk package) runs the load");
        let _ = std::fs::remove_file(&script);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let number_after = |key: &str| -> u64 {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix(key))
                .map(|rest| {
                    // "Socket errors: connect 0, read 0, write 0, timeout 0"
                    rest.split(|c: char| !c.is_ascii_digit())
                        .filter_map(|n| n.parse::<u64>().ok())
                        .sum::<u64>()
                })
                .sum()
        };
        let failed = number_after("Socket errors:") + number_after("bad answers:");
        assert!(text.contains("requests in"), "wrk ran: {text}");
        (text, failed)
    })
}

#[test]
fn a_configs_only_change_with_reload_rewrites_the_files_and_signals_the_same_pids_under_load() {
    let (dev, project, data) = up_stack_with_config(&compose(true, "a"), "v1\n");
    assert!(all_serve(&dev, "v1\n"));
    let before = web_pids(&dev);

    // The process learns where its file is from SKIFF_CONFIG_APP: under its instance
    // directory.
    let (code, env) = get(&dev, "/env");
    assert_eq!(code, 200);
    let env: serde_json::Value = serde_json::from_str(&env).unwrap();
    let path = env["SKIFF_CONFIG_APP"].as_str().unwrap().to_string();
    assert!(
        path.starts_with(&data.path().display().to_string())
            && path.ends_with(&format!(
                "/instances/default/cfg/{}/configs/app",
                env["SKIFF_INSTANCE"].as_str().unwrap()
            )),
        "{path}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "v1\n");

    let load = wrk(&dev.ingress, 4);
    std::thread::sleep(Duration::from_millis(700));
    let (ok, out) = up(&dev, project.path(), &compose(true, "a"), "v2\n", false);
    assert!(ok, "{out}");
    let returned = Instant::now();
    while !all_serve(&dev, "v2\n") {
        assert!(
            returned.elapsed() < Duration::from_secs(1),
            "the new config is served within 1 s of up returning"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        web_pids(&dev),
        before,
        "reloaded in place: the same processes"
    );
    let (text, failed) = load.join().unwrap();
    assert_eq!(failed, 0, "no request failed during the reload:\n{text}");

    let events = events(&dev, project.path());
    for i in ["web-1", "web-2"] {
        assert!(
            events
                .lines()
                .any(|l| l.contains(i) && l.contains("reloaded: configs app; SIGHUP")),
            "{i} reloaded:\n{events}"
        );
    }
    assert!(
        events.contains("changes only configs app; reloading web-1, web-2 with SIGHUP"),
        "{events}"
    );
    // Both are of the new release (that is what `up` waited for) and healthy.
    let (ok, ps, err) = skiff_in(&dev, project.path(), &[], &["ps", "-o", "json"]);
    assert!(ok, "{err}");
    let ps: Vec<serde_json::Value> = serde_json::from_str(&ps).unwrap();
    assert!(
        ps.iter()
            .all(|i| i["release"] == 2 && i["state"] == "healthy"),
        "{ps:?}"
    );
}

#[test]
fn a_config_change_without_reload_or_with_an_environment_change_replaces_the_instances() {
    let (dev, project, _data) = up_stack_with_config(&compose(false, "a"), "v1\n");
    let mut pids = web_pids(&dev);
    // No x-skiff.reload: new processes with the new file. Reload declared, but the
    // environment changes too: replaced as well.
    for (file, config) in [(compose(false, "a"), "v2\n"), (compose(true, "b"), "v3\n")] {
        let (ok, out) = up(&dev, project.path(), &file, config, false);
        assert!(ok, "{out}");
        wait_for("the new config served", || all_serve(&dev, config));
        let now = web_pids(&dev);
        assert!(
            now.iter().all(|p| !pids.contains(p)),
            "{config}: replaced: {pids:?} -> {now:?}"
        );
        pids = now;
    }
    assert!(!events(&dev, project.path()).contains("reloaded: configs"));
}

#[test]
fn an_agent_killed_during_a_reload_finishes_it_after_adopting_the_instances() {
    let (mut dev, project, data) = up_stack_with_config(&compose(true, "a"), "v1\n");
    let before = web_pids(&dev);
    // Release 2's files are written for the first instance, then the server dies before
    // any signal is sent or any record says so.
    dev.child.kill().unwrap();
    dev.child.wait().unwrap();
    dev = start_dev_with(data.path(), &[("SKIFF_CRASH_AT", "config-written")]);
    let (ok, out) = up(&dev, project.path(), &compose(true, "a"), "v2\n", true);
    assert!(ok, "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(dev.child.try_wait(), Ok(Some(_))) {
        assert!(Instant::now() < deadline, "the crash point was reached");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(before.iter().all(|p| alive(*p)), "the instances outlive it");

    let dev = start_dev(data.path());
    wait_for("v2 served by both after adoption", || {
        all_serve(&dev, "v2\n")
    });
    assert_eq!(web_pids(&dev), before, "adopted and reloaded, not replaced");
}

/// `skiff dev` with `compose` up, its `app.conf` holding `config`.
fn up_stack_with_config(
    compose: &str,
    config: &str,
) -> (Dev, tempfile::TempDir, tempfile::TempDir) {
    ensure_demo_built();
    let project = project(compose);
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());
    let (ok, out) = up(&dev, project.path(), compose, config, false);
    assert!(ok, "{out}");
    (dev, project, data)
}
