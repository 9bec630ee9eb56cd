//! Readiness and liveness probes.
//!
//! An instance is ready when its readiness check passes: `x-skiff.readiness` (http, tcp or a
//! test), else compose's `healthcheck` (`CMD` runs the program, `CMD-SHELL` runs `sh -c`,
//! through the instance's driver: in its environment and working directory, inside the
//! container for containers); without either, when
//! its first port accepts a TCP connection; without ports, as soon as it runs. A liveness
//! check (`x-skiff.liveness`) is probed the same way.
//!
//! The first probe runs right after start and retries fast (from ~10 ms, doubling) until the
//! first success; then probes settle to the interval (compose#12782: no waiting a full
//! interval before the first probe).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use skiff_driver::Workload;
use skiff_model::HealthSpec;
use tokio::process::Command;

/// What to probe for one instance.
#[derive(Clone, Debug)]
pub enum Probe {
    Command {
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        timeout: Duration,
    },
    Tcp(SocketAddr),
    /// `GET path`; passes on `status`, else on any 2xx or 3xx.
    Http {
        addr: SocketAddr,
        path: String,
        status: Option<u16>,
        timeout: Duration,
    },
    /// A check names a port the instance does not have.
    Broken(String),
    /// A compose health check run through the workload's driver: inside a container, or
    /// with a process's environment and working directory.
    Exec {
        workload: Arc<dyn Workload>,
        argv: Vec<String>,
        timeout: Duration,
    },
    /// No health check and no port: running is ready.
    Running,
}

impl Probe {
    /// The probe of `health` for an instance reached at `node` on `ports` (name, host port);
    /// without a check, the readiness default.
    pub fn for_instance(
        health: Option<&HealthSpec>,
        node: std::net::IpAddr,
        ports: &[(String, u16)],
        env: &BTreeMap<String, String>,
        workload: Option<Arc<dyn Workload>>,
    ) -> Probe {
        let addr_of = |name: &str| {
            ports
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| SocketAddr::new(node, *p))
        };
        match health {
            Some(h) if h.http.is_some() || h.tcp.is_some() => {
                let name = h
                    .http
                    .as_ref()
                    .map_or_else(|| h.tcp.clone().unwrap_or_default(), |x| x.port.clone());
                let Some(addr) = addr_of(&name) else {
                    return Probe::Broken(format!("the instance has no port {name:?}"));
                };
                match &h.http {
                    Some(x) => Probe::Http {
                        addr,
                        path: x.path.clone(),
                        status: x.status,
                        timeout: h.timeout,
                    },
                    None => Probe::Tcp(addr),
                }
            }
            Some(h) => {
                let argv = match h.test.split_first() {
                    Some((kind, rest)) if kind == "CMD-SHELL" => {
                        vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
                    }
                    Some((_, rest)) => rest.to_vec(),
                    None => Vec::new(),
                };
                if let Some(workload) = workload {
                    return Probe::Exec {
                        workload,
                        argv,
                        timeout: h.timeout,
                    };
                }
                Probe::Command {
                    argv,
                    env: env.clone(),
                    timeout: h.timeout,
                }
            }
            None => match ports.first() {
                Some((_, p)) => Probe::Tcp(SocketAddr::new(node, *p)),
                None => Probe::Running,
            },
        }
    }

    /// Runs the probe once: `Ok(())` when ready, else why not.
    #[cfg(test)]
    pub async fn check(&self) -> Result<(), String> {
        self.check_with_output().await.map_err(|f| f.why)
    }

    /// Runs the probe once: `Ok(())` when ready, else why not and what the check said (a
    /// command's output tail, an HTTP status).
    pub async fn check_with_output(&self) -> Result<(), Failure> {
        match self {
            Probe::Running => Ok(()),
            Probe::Broken(why) => Err(Failure::said(why.clone())),
            Probe::Http {
                addr,
                path,
                status,
                timeout,
            } => match tokio::time::timeout(*timeout, http_get(*addr, path)).await {
                Ok(Ok(code)) => {
                    let pass = match status {
                        Some(want) => code == *want,
                        None => (200..400).contains(&code),
                    };
                    if pass {
                        Ok(())
                    } else {
                        Err(Failure::said(format!(
                            "GET {path} on {addr}: status {code}"
                        )))
                    }
                }
                Ok(Err(e)) => Err(Failure::said(format!("GET {path} on {addr}: {e}"))),
                Err(_) => Err(Failure::said(format!(
                    "GET {path} on {addr}: timed out after {timeout:?}"
                ))),
            },
            Probe::Tcp(addr) => {
                match tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(Failure::said(format!("connect {addr}: {e}"))),
                    Err(_) => Err(Failure::said(format!("connect {addr}: timed out"))),
                }
            }
            Probe::Exec {
                workload,
                argv,
                timeout,
            } => {
                if argv.is_empty() {
                    return Err(Failure::said("empty health check command".into()));
                }
                match tokio::time::timeout(*timeout, workload.exec(argv)).await {
                    Ok(Ok(out)) if out.exit_code == 0 => Ok(()),
                    Ok(Ok(out)) => Err(Failure {
                        why: format!(
                            "health check exited {}: {}",
                            out.exit_code,
                            out.output.lines().last().unwrap_or("").trim()
                        ),
                        output: tail(&out.output),
                    }),
                    Ok(Err(e)) => Err(Failure::said(e.to_string())),
                    Err(_) => Err(Failure::said(format!(
                        "health check timed out after {timeout:?}"
                    ))),
                }
            }
            Probe::Command { argv, env, timeout } => {
                let Some((program, args)) = argv.split_first() else {
                    return Err(Failure::said("empty health check command".into()));
                };
                let mut cmd = Command::new(program);
                cmd.args(args)
                    .envs(env)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true);
                let run = async {
                    let out = cmd
                        .output()
                        .await
                        .map_err(|e| Failure::said(format!("{program}: {e}")))?;
                    if out.status.success() {
                        Ok(())
                    } else {
                        let err = String::from_utf8_lossy(&out.stderr);
                        let all = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
                        Err(Failure {
                            why: format!(
                                "health check {}: {}",
                                out.status,
                                err.lines().last().unwrap_or("").trim()
                            ),
                            output: tail(&all),
                        })
                    }
                };
                tokio::time::timeout(*timeout, run)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failure::said(format!(
                            "health check timed out after {timeout:?}"
                        )))
                    })
            }
        }
    }
}

/// A probe that did not pass: why (one line), and what the check itself said — the tail of
/// a command's output, else the same line (an HTTP status, a refused connection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub why: String,
    pub output: String,
}

impl Failure {
    fn said(why: String) -> Failure {
        Failure {
            output: why.clone(),
            why,
        }
    }
}

/// Lines of a check's output kept for the report of a failed bring-up.
pub const OUTPUT_LINES: usize = 10;
/// Bytes of a check's output kept (the last ones).
const OUTPUT_BYTES: usize = 2048;

/// The last [`OUTPUT_LINES`] lines of `output`, at most [`OUTPUT_BYTES`] bytes.
fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.trim_end().lines().collect();
    let mut out = lines[lines.len().saturating_sub(OUTPUT_LINES)..].join("\n");
    if out.len() > OUTPUT_BYTES {
        let mut cut = out.len() - OUTPUT_BYTES;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out.drain(..cut);
    }
    out
}

/// The status code of `GET path` on `addr` (HTTP/1.1, one connection per probe).
async fn http_get(addr: SocketAddr, path: &str) -> Result<u16, String> {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::USER_AGENT, "skiff-health")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string());
    conn.abort();
    Ok(resp?.status().as_u16())
}

/// What one probe means for the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Failed, but not yet `retries` times in a row since the last pass (or never passed yet).
    Failing(String),
    /// Failed `retries` times in a row after having passed.
    Failed(String),
    /// Readiness never passed within `start_period` + `retries` × `interval` of the start
    /// (said once; the probes go on at the interval and a later pass still counts).
    NeverReady(Failure),
}

/// Runs a probe on its schedule: right after start, then fast (10 ms, doubling up to the
/// start interval) until the first pass, then every `interval` counted from each probe's
/// start. Failures inside `start_period` before the first pass do not count.
pub struct Checker {
    probe: Probe,
    interval: Duration,
    retries: u32,
    start_period: Duration,
    fast: Box<dyn Iterator<Item = Duration> + Send>,
    next: Option<tokio::time::Instant>,
    passed_once: bool,
    failures: u32,
    /// Liveness: probes at the interval from the start, and fails without having passed.
    liveness: bool,
    /// Readiness of an explicit check: how long it may take to pass for the first time.
    ready_within: Option<Duration>,
    /// `NeverReady` was said.
    gave_up: bool,
    /// The last failed probe's output.
    last: Option<Failure>,
}

impl Checker {
    pub fn new(probe: Probe, spec: Option<&HealthSpec>) -> Checker {
        let (interval, retries, start_period, start_interval) = match spec {
            Some(h) => (
                h.interval,
                h.retries.max(1),
                h.start_period,
                h.start_interval.min(Duration::from_millis(500)),
            ),
            // The readiness default (a TCP connect or "running").
            None => (
                Duration::from_secs(5),
                1,
                Duration::ZERO,
                Duration::from_millis(200),
            ),
        };
        Checker {
            probe,
            interval,
            retries,
            start_period,
            fast: Box::new(first_probe_delays(start_interval)),
            next: None,
            passed_once: false,
            failures: 0,
            liveness: false,
            ready_within: spec.map(|_| start_period + interval * retries),
            gave_up: false,
            last: None,
        }
    }

    /// A liveness checker: no fast first probes, and an instance that never passed fails too
    /// (after `start_period`).
    pub fn liveness(probe: Probe, spec: &HealthSpec) -> Checker {
        Checker {
            liveness: true,
            ready_within: None,
            ..Checker::new(probe, Some(spec))
        }
    }

    /// When the next probe is due (`None`: now).
    pub fn next_due(&self) -> Option<tokio::time::Instant> {
        self.next
    }

    /// Whether a probe ever passed.
    pub fn passed_once(&self) -> bool {
        self.passed_once
    }

    /// The last failed probe (why, and what the check said); `None` after a pass.
    pub fn last_failure(&self) -> Option<&Failure> {
        self.last.as_ref()
    }

    /// Probes when one is due; `None` when none is.
    pub async fn due(&mut self, started: std::time::Instant) -> Option<Verdict> {
        let now = tokio::time::Instant::now();
        if self.next.is_some_and(|t| now < t) {
            return None;
        }
        let result = self.probe.check_with_output().await;
        self.next = Some(
            now + if self.passed_once || result.is_ok() || self.liveness || self.gave_up {
                self.interval
            } else {
                self.fast.next().unwrap_or(self.interval)
            },
        );
        Some(match result {
            Ok(()) => {
                self.passed_once = true;
                self.failures = 0;
                self.last = None;
                Verdict::Pass
            }
            Err(fail) if !self.passed_once => {
                self.last = Some(fail.clone());
                if started.elapsed() >= self.start_period {
                    self.failures = self.failures.saturating_add(1);
                }
                if self.liveness && self.failures >= self.retries {
                    Verdict::Failed(fail.why)
                } else if !self.gave_up && self.ready_within.is_some_and(|d| started.elapsed() >= d)
                {
                    self.gave_up = true;
                    Verdict::NeverReady(fail)
                } else {
                    Verdict::Failing(fail.why)
                }
            }
            Err(fail) => {
                self.last = Some(fail.clone());
                self.failures += 1;
                if self.failures >= self.retries {
                    Verdict::Failed(fail.why)
                } else {
                    Verdict::Failing(fail.why)
                }
            }
        })
    }
}

/// Delays between probes before the first success: 10 ms, doubling, capped at `cap`.
pub fn first_probe_delays(cap: Duration) -> impl Iterator<Item = Duration> {
    let cap = cap.max(Duration::from_millis(10));
    std::iter::successors(Some(Duration::from_millis(10)), move |d| {
        Some((*d * 2).min(cap))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_probe_passes_once_the_port_listens() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(Probe::Tcp(addr).check().await.is_ok());
        // A freed port may be reused at once by anything on the machine; port 1 never listens.
        let closed: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(
            Probe::Tcp(closed)
                .check()
                .await
                .unwrap_err()
                .contains("connect")
        );
    }

    fn spec(test: &[&str]) -> HealthSpec {
        HealthSpec {
            test: test.iter().map(|s| s.to_string()).collect(),
            http: None,
            tcp: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            retries: 3,
            start_period: Duration::ZERO,
            start_interval: Duration::from_millis(100),
        }
    }

    const LO: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn command_probes_use_cmd_and_cmd_shell_with_the_instance_env() {
        let env = BTreeMap::from([("PORT".to_string(), "1234".to_string())]);
        let probe = |t: &[&str]| Probe::for_instance(Some(&spec(t)), LO, &[], &env, None);
        assert!(
            probe(&["CMD-SHELL", "test $PORT = 1234"])
                .check()
                .await
                .is_ok()
        );
        assert!(probe(&["CMD", "false"]).check().await.is_err());
        let mut slow = probe(&["CMD-SHELL", "sleep 5"]);
        if let Probe::Command { timeout, .. } = &mut slow {
            *timeout = Duration::from_millis(100);
        }
        assert!(slow.check().await.unwrap_err().contains("timed out"));
    }

    /// A one-connection-at-a-time HTTP server answering `status` to every request.
    fn http_server(status: u16) -> SocketAddr {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let _ = write!(
                    c,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_probes_pass_on_2xx_3xx_or_the_expected_status() {
        let http = |port: &str, status: Option<u16>| HealthSpec {
            test: Vec::new(),
            http: Some(skiff_model::HttpProbe {
                port: port.into(),
                path: "/healthz".into(),
                status,
            }),
            ..spec(&[])
        };
        let ok = http_server(204).port();
        let down = http_server(503).port();
        let ports = [("web".to_string(), ok), ("admin".to_string(), down)];
        let env = BTreeMap::new();
        let check = |h: HealthSpec| Probe::for_instance(Some(&h), LO, &ports, &env, None);
        let check = |h| {
            let p = check(h);
            async move { p.check().await }
        };
        assert!(check(http("web", None)).await.is_ok());
        let err = check(http("admin", None)).await.unwrap_err();
        assert!(err.contains("status 503"), "{err}");
        assert!(check(http("admin", Some(503))).await.is_ok());
        assert!(check(http("web", Some(200))).await.is_err());
        let err = check(http("grpc", None)).await.unwrap_err();
        assert!(err.contains("no port \"grpc\""), "{err}");
    }

    #[tokio::test]
    async fn readiness_fails_only_after_retries_in_a_row_once_it_passed() {
        let flag = std::env::temp_dir().join(format!("skiff-ready-{}", std::process::id()));
        let _ = std::fs::remove_file(&flag);
        let test = format!("test -f {}", flag.display());
        let h = HealthSpec {
            retries: 2,
            interval: Duration::from_millis(300),
            ..spec(&["CMD-SHELL", &test])
        };
        let env = BTreeMap::new();
        let mut c = Checker::new(Probe::for_instance(Some(&h), LO, &[], &env, None), Some(&h));
        let started = std::time::Instant::now();
        let sleep = |ms| tokio::time::sleep(Duration::from_millis(ms));
        // Before the first pass: failing, never failed (readiness), probed again fast.
        assert!(matches!(c.due(started).await, Some(Verdict::Failing(_))));
        let after_first = std::time::Instant::now();
        let again = c.due(started).await;
        // (On a loaded machine the 10 ms may pass before the second call: nothing to see.)
        if after_first.elapsed() < Duration::from_millis(5) {
            assert!(again.is_none(), "not due again at once");
        }
        sleep(15).await;
        assert!(matches!(c.due(started).await, Some(Verdict::Failing(_))));
        std::fs::write(&flag, "").unwrap();
        sleep(25).await;
        assert_eq!(c.due(started).await, Some(Verdict::Pass));
        // Then at the interval; two failures in a row make it fail.
        std::fs::remove_file(&flag).unwrap();
        assert!(c.due(started).await.is_none());
        sleep(310).await;
        assert!(matches!(c.due(started).await, Some(Verdict::Failing(_))));
        sleep(310).await;
        assert!(matches!(c.due(started).await, Some(Verdict::Failed(_))));
    }

    #[tokio::test]
    async fn liveness_fails_an_instance_that_never_passed() {
        let h = HealthSpec {
            retries: 2,
            interval: Duration::from_millis(300),
            ..spec(&["CMD", "false"])
        };
        let env = BTreeMap::new();
        let mut c = Checker::liveness(Probe::for_instance(Some(&h), LO, &[], &env, None), &h);
        let started = std::time::Instant::now();
        assert!(matches!(c.due(started).await, Some(Verdict::Failing(_))));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            c.due(started).await.is_none(),
            "liveness waits the interval"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(matches!(c.due(started).await, Some(Verdict::Failed(_))));
    }

    #[tokio::test]
    async fn readiness_that_never_passes_is_given_up_once_after_start_period_and_retries() {
        let h = HealthSpec {
            retries: 2,
            interval: Duration::from_millis(100),
            start_period: Duration::from_millis(100),
            ..spec(&[
                "CMD-SHELL",
                "echo starting up; echo 'no database' >&2; exit 3",
            ])
        };
        let env = BTreeMap::new();
        let mut c = Checker::new(Probe::for_instance(Some(&h), LO, &[], &env, None), Some(&h));
        let started = std::time::Instant::now();
        let mut verdicts = Vec::new();
        while started.elapsed() < Duration::from_millis(600) {
            if let Some(v) = c.due(started).await {
                verdicts.push((started.elapsed(), v));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let given_up: Vec<_> = verdicts
            .iter()
            .filter(|(_, v)| matches!(v, Verdict::NeverReady(_)))
            .collect();
        assert_eq!(given_up.len(), 1, "said once: {verdicts:?}");
        let (at, Verdict::NeverReady(fail)) = given_up[0] else {
            unreachable!()
        };
        // start_period 100 ms + 2 retries x 100 ms.
        assert!(*at >= Duration::from_millis(300), "given up at {at:?}");
        assert!(fail.why.contains("exit status: 3"), "{fail:?}");
        assert_eq!(fail.output, "starting up\nno database");
        assert_eq!(c.last_failure(), Some(fail));
        assert!(!c.passed_once());
    }

    #[tokio::test]
    async fn the_readiness_default_never_gives_up() {
        let closed: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut c = Checker::new(Probe::Tcp(closed), None);
        let started = std::time::Instant::now() - Duration::from_secs(3600);
        for _ in 0..3 {
            let v = c.due(started).await;
            assert!(matches!(v, Some(Verdict::Failing(_))), "{v:?}");
            c.next = None;
        }
    }

    #[test]
    fn output_tails_keep_the_last_lines_and_bytes() {
        let many: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        assert_eq!(tail(&many).lines().count(), OUTPUT_LINES);
        assert!(tail(&many).ends_with("line 30"));
        let long = "é".repeat(3000);
        let t = tail(&long);
        assert!(t.len() <= OUTPUT_BYTES && t.chars().all(|c| c == 'é'));
    }

    #[test]
    fn first_probes_start_at_ten_milliseconds_and_back_off() {
        let d: Vec<u64> = first_probe_delays(Duration::from_millis(100))
            .take(6)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(d, vec![10, 20, 40, 80, 100, 100]);
    }
}
