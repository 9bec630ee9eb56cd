//! Helpers shared by the end-to-end tests: a `skiff dev` server, the CLI against it, a raw
//! HTTP client and process checks.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// The example stack runs `skiff-demo`, which `skiff dev` finds next to its own binary.
pub fn ensure_demo_built() {
    let demo = Path::new(SKIFF).with_file_name("skiff-demo");
    if !demo.exists() {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "skiff-demo"])
            .status()
            .unwrap()
            .success();
        assert!(
            ok && demo.exists(),
            "could not build skiff-demo next to skiff"
        );
    }
}

pub struct Dev {
    pub child: Child,
    pub addr: String,
    /// The data dir's cluster id (labels every container of this server).
    pub cluster: String,
    /// Where its DNS server listens (UDP and TCP).
    pub dns: String,
    /// Where its ingress listens (host:port).
    pub ingress: String,
}

impl Dev {
    /// A handle for the CLI only (another thread's server): dropping it kills nothing.
    pub fn detached(addr: String) -> Dev {
        Dev {
            child: Command::new("true").spawn().unwrap(),
            addr,
            cluster: String::new(),
            dns: String::new(),
            ingress: String::new(),
        }
    }
}

impl Drop for Dev {
    /// SIGTERM, as Ctrl-C: `skiff dev` stops every instance it started, so no test leaves
    /// workloads behind. (Tests that mean a crash kill -9 the child themselves first.)
    fn drop(&mut self) {
        // Already reaped (killed by the test): its pid may belong to someone else now.
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A block of stable service addresses of its own for each server a test starts (servers
/// of parallel tests on one machine would otherwise share 127.77.0.0/16's first addresses).
pub fn service_addresses() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("127.{}.{}.0/24", 78 + std::process::id() % 100, n % 256)
}

pub fn start_dev(data: &Path) -> Dev {
    start_dev_with(data, &[])
}

/// `skiff dev` with extra environment (e.g. `SKIFF_CRASH_AT`).
pub fn start_dev_with(data: &Path, env: &[(&str, &str)]) -> Dev {
    let mut child = Command::new(SKIFF)
        .args([
            "dev",
            "--api",
            "127.0.0.1:0",
            "--dns",
            "127.0.0.1:0",
            "--ingress",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .env("SKIFF_LOG", "warn")
        .env("SKIFF_SERVICE_ADDRESSES", service_addresses())
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut addr = None;
    let mut cluster = String::new();
    let mut dns = String::new();
    let mut ingress = String::new();
    for _ in 0..10 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if let Some(c) = line.trim().strip_prefix("skiff dev: cluster ") {
            cluster = c.to_string();
        }
        if let Some(d) = line.trim().strip_prefix("skiff dev: dns listening on ") {
            dns = d.split_whitespace().next().unwrap_or_default().to_string();
        }
        if let Some(i) = line
            .trim()
            .strip_prefix("skiff dev: ingress listening on http://")
        {
            ingress = i.to_string();
        }
        if let Some(a) = line.trim().strip_prefix("skiff dev: api listening on ") {
            addr = Some(a.to_string());
            break;
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    Dev {
        child,
        addr: addr.expect("listening line"),
        cluster,
        dns,
        ingress,
    }
}

pub fn skiff(dev: &Dev, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(SKIFF)
        .args(args)
        .env("SKIFF_ADDR", &dev.addr)
        .env("NO_COLOR", "1")
        .current_dir(examples())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The CLI run in `dir` with extra environment.
pub fn skiff_in(
    dev: &Dev,
    dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (bool, String, String) {
    let out = Command::new(SKIFF)
        .args(args)
        .env("SKIFF_ADDR", &dev.addr)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

pub fn pids(dev: &Dev) -> Vec<u64> {
    let (ok, out, err) = skiff(dev, &["ps", "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut p: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_u64().unwrap())
        .collect();
    p.sort();
    p
}

pub fn instance_pid(dev: &Dev, service: &str, index: u64) -> u64 {
    let (_, out, _) = skiff(dev, &["ps", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"]["service"] == service && i["id"]["index"] == index)
        .unwrap()["pid"]
        .as_u64()
        .unwrap()
}

pub fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let host = addr.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let code = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        code,
        buf.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

#[allow(unused_imports)]
pub use skiff_driver_docker::testkit::demo_build_context;

/// `docker ps -q` with a label filter (all states).
pub fn containers_labelled(label: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A project directory holding `compose.yaml` with `compose`.
pub fn project(compose: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), compose).unwrap();
    dir
}

/// A keep-alive HTTP/1.1 client connection (responses need a Content-Length).
#[allow(dead_code)]
pub struct HttpConn {
    reader: BufReader<TcpStream>,
}

#[allow(dead_code)]
impl HttpConn {
    pub fn connect(addr: &str) -> std::io::Result<HttpConn> {
        let s = TcpStream::connect(addr.trim_start_matches("http://"))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(HttpConn {
            reader: BufReader::new(s),
        })
    }

    /// `GET path` with `Host: host`: the status and the body.
    pub fn get(&mut self, host: &str, path: &str) -> std::io::Result<(u16, String)> {
        write!(
            self.reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"
        )?;
        self.response()
    }

    /// `POST path` with `Host: host` and `body`: the status and the body.
    pub fn post(&mut self, host: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
        write!(
            self.reader.get_mut(),
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        self.response()
    }

    fn response(&mut self) -> std::io::Result<(u16, String)> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut status = String::new();
        if self.reader.read_line(&mut status)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let code: u16 = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad(&format!("status line {status:?}")))?;
        let mut length = None;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let n = length.ok_or_else(|| bad("no content-length"))?;
        let mut body = vec![0; n];
        self.reader.read_exact(&mut body)?;
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// `skiff dev` with `compose` up (the project and data dirs live as long as the guards).
#[allow(dead_code)]
pub fn up_stack(compose: &str) -> (Dev, tempfile::TempDir, tempfile::TempDir) {
    ensure_demo_built();
    let project = project(compose);
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["up"]);
    assert!(ok, "{out}{err}");
    (dev, project, data)
}

/// Polls `cond` every 20 ms for up to 20 s.
#[allow(dead_code)]
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
