//! The ingress against real sockets: backends that hang, refuse or reset, and requests over
//! the limits. Each test runs an `Ingress` on a catalog it fills itself.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use skiff_ingress::Limits;

mod common;
use common::{HOST, id, raw, start};

async fn get(addr: SocketAddr) -> String {
    raw(
        addr,
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// A backend that accepts connections and never answers.
fn silent_backend() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A backend answering every request with `body` (keep-alive), on its own thread.
fn ok_backend(body: &'static str) -> u16 {
    counting_backend(body, Arc::default())
}

/// [`ok_backend`] that counts the connections it accepted.
fn counting_backend(body: &'static str, accepted: Arc<AtomicUsize>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            accepted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if c.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_answer_in_time_is_a_504_naming_it() {
    let (_hold, port) = silent_backend();
    let limits = Limits {
        response_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (ingress, _catalog) = start(&[port], limits).await;
    let addr = ingress.addr;
    let started = Instant::now();
    let answer = get(addr).await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains(&format!("127.0.0.1:{port} sent no response within 300ms")));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connects_go_to_another_instance_and_502_only_when_all_fail() {
    let good = ok_backend("from the good one");
    let (ingress, _catalog) = start(&[closed_port(), good], Limits::default()).await;
    let addr = ingress.addr;
    for _ in 0..10 {
        let answer = get(addr).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("from the good one"), "{answer}");
    }
    drop(ingress);

    let (ingress, _catalog) = start(&[closed_port(), closed_port()], Limits::default()).await;
    let addr = ingress.addr;
    let answer = get(addr).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("Connection refused"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_body_or_header_limits_are_refused_before_any_backend() {
    let good = ok_backend("ok");
    let limits = Limits {
        max_body: 1024,
        ..Limits::default()
    };
    let (ingress, _catalog) = start(&[good], limits).await;
    let addr = ingress.addr;
    let answer = raw(
        addr,
        format!(
            "POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("4096 bytes is over the limit of 1024"),
        "{answer}"
    );

    // 100 KiB of headers: over the 64 KiB the server reads for a request head.
    let big = "x".repeat(100 * 1024);
    let answer = raw(
        addr,
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {big}\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hosts_get_404_and_a_service_without_instances_503() {
    let (ingress, catalog) = start(&[], Limits::default()).await;
    let addr = ingress.addr;
    let answer = raw(
        addr,
        "GET /x HTTP/1.1\r\nHost: nope.localhost\r\nConnection: close\r\n\r\n".to_string(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(
        answer.contains("no route for host \"nope.localhost\""),
        "{answer}"
    );
    let answer = get(addr).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");

    // An instance becomes ready: served without a restart of anything.
    let good = ok_backend("now ready");
    catalog.add(
        &id(1),
        "127.0.0.1".parse().unwrap(),
        BTreeMap::from([("http".to_string(), good)]),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = get(addr).await;
        if answer.ends_with("now ready") {
            break;
        }
        assert!(Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_are_reused_once_a_response_was_read() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let port = counting_backend("again", accepted.clone());
    let (ingress, _catalog) = start(&[port], Limits::default()).await;
    let addr = ingress.addr;
    for _ in 0..20 {
        let answer = get(addr).await;
        assert!(answer.ends_with("again"), "{answer}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one backend connection for 20 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_after_bodiless_answers_too() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let port = counting_backend("", accepted.clone());
    let (ingress, _catalog) = start(&[port], Limits::default()).await;
    let addr = ingress.addr;
    for _ in 0..10 {
        let answer = raw(
            addr,
            format!("HEAD / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_idle_past_the_idle_timeout_are_not_reused() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let port = counting_backend("hi", accepted.clone());
    let (ingress, _catalog) = start(&[port], Limits::default()).await;
    let addr = ingress.addr;
    assert!(get(addr).await.ends_with("hi"));
    assert!(get(addr).await.ends_with("hi"));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // Past the 1.5 s idle timeout the backend might be closing it: a new one is opened.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert!(get(addr).await.ends_with("hi"));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
