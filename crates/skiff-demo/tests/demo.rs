//! The demo service as its users (skiff's tests and benchmarks) drive it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_skiff-demo");

struct Demo {
    child: Child,
    addr: String,
    out: BufReader<std::process::ChildStdout>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Demo {
    let mut child = Command::new(BIN)
        .args(["--port", "0", "--name", "web"])
        .args(args)
        .env("SKIFF_INSTANCE", "web-1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(line.contains("listening on"), "{line}");
    Demo { child, addr, out }
}

fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let code = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn serves_its_identity_and_a_health_endpoint_that_can_be_flipped() {
    let d = start(&["--app-version", "1.2.3"]);
    assert_eq!(
        http(&d.addr, "GET", "/"),
        (200, "web 1.2.3 instance=web-1\n".into())
    );
    assert!(
        http(&d.addr, "GET", "/version")
            .1
            .contains("\"version\":\"1.2.3\"")
    );
    assert_eq!(http(&d.addr, "GET", "/health").0, 200);
    http(&d.addr, "POST", "/health/fail");
    assert_eq!(http(&d.addr, "GET", "/health").0, 503);
    http(&d.addr, "POST", "/health/ok");
    assert_eq!(http(&d.addr, "GET", "/health").0, 200);
    assert!(
        http(&d.addr, "GET", "/env")
            .1
            .contains("\"SKIFF_INSTANCE\":\"web-1\"")
    );
}

#[test]
fn latency_is_added_per_request() {
    let d = start(&["--latency", "1s"]);
    let t = Instant::now();
    http(&d.addr, "GET", "/");
    assert!(t.elapsed() >= Duration::from_secs(1));
    // The per-request override wins over the default (generous bound for loaded machines).
    let t = Instant::now();
    http(&d.addr, "GET", "/?latency=0ms");
    assert!(t.elapsed() < Duration::from_millis(900));
}

#[test]
fn slow_start_delays_the_listening_line() {
    let t = Instant::now();
    let _d = start(&["--start-delay", "300ms"]);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let mut d = start(&[]);
    let addr = d.addr.clone();
    let slow = std::thread::spawn(move || http(&addr, "GET", "/?latency=400ms"));
    std::thread::sleep(Duration::from_millis(100));
    kill(Pid::from_raw(d.child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(slow.join().unwrap().0, 200);
    assert!(d.child.wait().unwrap().success());
}

#[test]
fn ignore_sigterm_keeps_serving_and_sighup_reloads() {
    let mut d = start(&["--ignore-sigterm"]);
    kill(Pid::from_raw(d.child.id() as i32), Signal::SIGTERM).unwrap();
    kill(Pid::from_raw(d.child.id() as i32), Signal::SIGHUP).unwrap();
    let mut seen = String::new();
    while !(seen.contains("reloaded") && seen.contains("ignoring SIGTERM")) {
        let mut l = String::new();
        assert_ne!(
            d.out.read_line(&mut l).unwrap(),
            0,
            "exited early; output: {seen}"
        );
        seen.push_str(&l);
    }
    assert!(seen.contains("ignoring SIGTERM"), "{seen}");
    assert_eq!(http(&d.addr, "GET", "/health").0, 200);
}

#[test]
fn crash_exits_with_code_3() {
    let mut d = start(&[]);
    // Keep the connection open: a request whose client went away may be cancelled.
    let mut s = TcpStream::connect(&d.addr).unwrap();
    s.write_all(b"GET /crash HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(d.child.wait().unwrap().code(), Some(3));
}

#[test]
fn probe_exits_zero_only_for_a_healthy_answer() {
    let d = start(&[]);
    let port = d.addr.rsplit(':').next().unwrap();
    let probe = |path: &str| {
        Command::new(BIN)
            .args(["probe", path])
            .env("PORT", port)
            .status()
            .unwrap()
            .success()
    };
    assert!(probe("/health"));
    http(&d.addr, "POST", "/health/fail");
    assert!(!probe("/health"));
    assert!(
        !Command::new(BIN)
            .args(["probe", "http://127.0.0.1:1/health"])
            .status()
            .unwrap()
            .success()
    );
}
