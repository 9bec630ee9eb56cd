//! HTTP/1.1 through the ingress against real sockets: the framing of request and response
//! bodies, pipelining, keep-alive and close, and the headers a backend sees. Plain requests
//! take the ingress's fast path; chunked bodies and HTTP/1.0 go the general (hyper) path, and
//! both must give the same answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use skiff_ingress::{Ingress, Limits};

mod common;
use common::{HOST, raw, start};

/// A backend that answers each request with what it received: the request head as it came,
/// then `--`, then the body (de-chunked). Keep-alive.
fn echo_backend() -> u16 {
    serve_each(|head, body| {
        let mut text = head.into_bytes();
        text.extend_from_slice(b"--\n");
        text.extend_from_slice(&body);
        let mut out =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", text.len()).into_bytes();
        out.extend_from_slice(&text);
        (out, KEEP_OPEN)
    })
}

/// A backend that answers every request with `answer` as is; when `then_close`, it closes
/// the connection after writing it.
fn scripted_backend(answer: &'static str, then_close: bool) -> u16 {
    serve_each(move |_, _| (answer.as_bytes().to_vec(), !then_close))
}

/// For [`serve_each`]: the connection stays open after the answer.
const KEEP_OPEN: bool = true;

/// Runs a backend on its own threads: `answer` gets each request's head and body and gives the
/// bytes to write back, and whether the connection stays open after them.
fn serve_each(answer: impl Fn(String, Vec<u8>) -> (Vec<u8>, bool) + Send + Sync + 'static) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                while let Some((head, body)) = read_request(&mut c, &mut buf) {
                    let (out, keep) = answer(head, body);
                    if c.write_all(&out).is_err() || !keep {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Reads one request off `c` (with what is left in `buf`): its head and its body, from a
/// Content-Length or chunked framing.
fn read_request(c: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        fill(c, buf)?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if lower.contains("transfer-encoding: chunked") {
        loop {
            let line_end = loop {
                if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                fill(c, buf)?;
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[..line_end])
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                fill(c, buf)?;
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                break;
            }
        }
    } else if let Some(at) = lower.find("content-length:") {
        let length: usize = lower[at + 15..].lines().next()?.trim().parse().ok()?;
        while buf.len() < length {
            fill(c, buf)?;
        }
        body = buf.drain(..length).collect();
    }
    Some((head, body))
}

fn fill(c: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match c.read(&mut chunk) {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// The answers in `text`, one after the other, each framed by its Content-Length or chunked
/// encoding, or running to the end.
fn answers(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let head_end = at + text[at..].find("\r\n\r\n").expect("a whole head") + 4;
        let head = text[at..head_end].to_ascii_lowercase();
        let end = if head.contains("transfer-encoding: chunked") {
            head_end + read_chunked(&text[head_end..]).1
        } else if let Some(i) = head.find("content-length:") {
            let length: usize = head[i + 15..]
                .lines()
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            (head_end + length).min(text.len())
        } else {
            text.len()
        };
        out.push(&text[at..end]);
        at = end;
    }
    out
}

/// A `method` request, then a GET that closes the connection, both for `/` on one connection.
async fn then_get(addr: SocketAddr, method: &str) -> String {
    let first = format!("{method} / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let second = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    raw(addr, first + &second).await
}

/// An ingress routing [`HOST`] to the backend on `port`; it serves until dropped.
async fn ingress_to(port: u16) -> (Ingress, SocketAddr) {
    let (ingress, _catalog) = start(&[port], Limits::default()).await;
    let addr = ingress.addr;
    (ingress, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_with_bodies_are_answered_in_order_on_one_connection() {
    let (_ingress, addr) = ingress_to(echo_backend()).await;
    let text = raw(
        addr,
        format!(
            "GET /one HTTP/1.1\r\nHost: {HOST}\r\n\r\n\
             POST /two HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 11\r\n\r\nhello there\
             GET /three?x=1 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    let got = answers(&text);
    assert_eq!(got.len(), 3, "{text}");
    assert!(got[0].contains("GET /one HTTP/1.1\r\n"), "{}", got[0]);
    assert!(got[1].contains("POST /two HTTP/1.1\r\n"), "{}", got[1]);
    assert!(got[1].ends_with("--\nhello there"), "{}", got[1]);
    assert!(got[2].contains("GET /three?x=1 HTTP/1.1\r\n"), "{}", got[2]);
    assert!(
        got[2]
            .to_ascii_lowercase()
            .contains("connection: close\r\n"),
        "the last answer says the connection closes: {}",
        got[2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_see_forwarded_headers_and_no_hop_by_hop_ones() {
    let (_ingress, addr) = ingress_to(echo_backend()).await;
    let text = raw(
        addr,
        format!(
            "GET / HTTP/1.1\r\nHost: {HOST}\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 10.1.2.3\r\n\
             X-Forwarded-Proto: https\r\nX-Custom: kept\r\nConnection: keep-alive, close\r\n\r\n"
        ),
    )
    .await;
    let seen = text.to_ascii_lowercase();
    assert!(seen.contains(&format!("\r\nhost: {HOST}\r\n")), "{text}");
    assert!(seen.contains("\r\nx-custom: kept\r\n"), "{text}");
    assert!(
        seen.contains("\r\nx-forwarded-for: 10.1.2.3, 127.0.0.1\r\n"),
        "{text}"
    );
    assert!(
        seen.contains(&format!("\r\nx-forwarded-host: {HOST}\r\n")),
        "{text}"
    );
    assert!(
        seen.contains("\r\nx-forwarded-proto: http\r\n") && !seen.contains("proto: https"),
        "a client does not choose the scheme the backend is told: {text}"
    );
    assert!(!seen.contains("keep-alive: timeout"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_close_delimited_answers_reach_the_client_chunked_and_whole() {
    let chunked = scripted_backend(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
        false,
    );
    let (_ingress, addr) = ingress_to(chunked).await;
    let text = then_get(addr, "GET").await;
    let got = answers(&text);
    assert_eq!(got.len(), 2, "{text}");
    for answer in got {
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{answer}"
        );
        assert_eq!(dechunk(body), "hello, world", "{answer}");
    }

    let until_close = scripted_backend("HTTP/1.1 200 OK\r\n\r\nall of it, then EOF", true);
    let (_ingress, addr) = ingress_to(until_close).await;
    let text = then_get(addr, "GET").await;
    let got = answers(&text);
    assert_eq!(
        got.len(),
        2,
        "the client connection outlives the backend's: {text}"
    );
    for answer in got {
        let (_, body) = answer.split_once("\r\n\r\n").unwrap();
        assert_eq!(dechunk(body), "all of it, then EOF", "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_closing_connections_unannounced_fails_no_idempotent_request() {
    // Each answer is whole, then the backend closes without a `Connection: close`: the next
    // request may cross that close on the reused connection.
    let port = scripted_backend("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone", true);
    let (_ingress, addr) = ingress_to(port).await;
    let mut pipelined = String::new();
    for i in 0..50 {
        let method = if i % 2 == 0 { "GET" } else { "DELETE" };
        pipelined.push_str(&format!("{method} /{i} HTTP/1.1\r\nHost: {HOST}\r\n\r\n"));
    }
    pipelined.push_str(&format!(
        "GET /last HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    ));
    let text = raw(addr, pipelined).await;
    let got = answers(&text);
    assert_eq!(got.len(), 51, "{text}");
    for answer in got {
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("\r\n\r\ndone"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_keep_their_length_and_carry_no_body() {
    let port = serve_each(|head, _| {
        let body = if head.starts_with("HEAD") {
            ""
        } else {
            "12345"
        };
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{body}");
        (answer.into_bytes(), KEEP_OPEN)
    });
    let (_ingress, addr) = ingress_to(port).await;
    let text = then_get(addr, "HEAD").await;
    // A HEAD answer has a Content-Length and no body: the next answer follows its head.
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 5"),
        "{text}"
    );
    assert!(
        rest.starts_with("HTTP/1.1 200"),
        "no body after a HEAD answer: {text}"
    );
    assert!(rest.ends_with("\r\n\r\n12345"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_short_by_its_backend_never_reaches_the_client_as_whole() {
    let port = scripted_backend(
        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..",
        true,
    );
    let (_ingress, addr) = ingress_to(port).await;
    let text = raw(addr, format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n")).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    if head.starts_with("HTTP/1.1 502") {
        // The backend failed before any of the answer went out: a whole 502 says so.
        assert!(body.contains("closed the connection mid-body"), "{text}");
    } else {
        // Part of it went out: the client sees a short body and the connection close.
        assert!(head.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            head.to_ascii_lowercase().contains("content-length: 100"),
            "{text}"
        );
        assert!(body.len() < 100, "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_and_http_1_0_clients_are_served_too() {
    let (_ingress, addr) = ingress_to(echo_backend()).await;
    let text = raw(
        addr,
        format!(
            "POST /up HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n\
             4\r\nsome\r\n6\r\n parts\r\n0\r\n\r\n\
             GET /after HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    let got = answers(&text);
    assert_eq!(got.len(), 2, "{text}");
    assert!(got[0].contains("POST /up HTTP/1.1\r\n"), "{}", got[0]);
    assert!(got[0].ends_with("--\nsome parts"), "{}", got[0]);
    assert!(got[1].contains("GET /after HTTP/1.1\r\n"), "{}", got[1]);

    let text = raw(addr, format!("GET /old HTTP/1.0\r\nHost: {HOST}\r\n\r\n")).await;
    assert!(
        text.starts_with("HTTP/1.") && text.contains(" 200 "),
        "{text}"
    );
    assert!(text.contains("GET /old HTTP/1.1\r\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_slowly_in_pieces_arrives_whole() {
    let (_ingress, addr) = ingress_to(echo_backend()).await;
    let text = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        let head = format!(
            "PUT /slow HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 9\r\nConnection: close\r\n\r\n"
        );
        for piece in [&head[..10], &head[10..], "abc", "def", "ghi"] {
            s.write_all(piece.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("--\nabcdefghi"), "{text}");
}

/// Decodes a chunked body (extensions and trailers ignored).
fn dechunk(body: &str) -> String {
    read_chunked(body).0
}

/// Reads the chunked body at the start of `text`: its data, and how many bytes of `text` it
/// takes, trailer section included.
fn read_chunked(text: &str) -> (String, usize) {
    let mut data = String::new();
    let mut pos = 0;
    loop {
        let line_end = pos + text[pos..].find("\r\n").expect("a chunk size line");
        let size = text[pos..line_end].split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size, 16).unwrap();
        pos = line_end + 2;
        if size == 0 {
            // Trailer lines, then the empty line.
            while !text[pos..].starts_with("\r\n") {
                pos += text[pos..].find("\r\n").unwrap() + 2;
            }
            return (data, pos + 2);
        }
        data.push_str(&text[pos..pos + size]);
        pos += size + 2;
    }
}
