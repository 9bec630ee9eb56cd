//! Client connections, and the HTTP/1.1 fast path that serves the common request without
//! hyper's server machinery.
//!
//! Most requests through an ingress are plain HTTP/1.1 ones: a Host header, no body or a
//! small one with a Content-Length, keep-alive. For those this module parses the head with
//! `httparse`, forwards it with the header bytes as the client sent them (no header map, no
//! per-request allocation of names and values), and writes the backend's answer back with
//! the head and a small body in one write. Everything runs in the connection's task.
//!
//! Anything else — HTTP/2 (the preface is not an HTTP/1.1 head), HTTP/1.0, upgrades, chunked
//! or large request bodies, `Expect`, `Connection` naming other headers, absolute-form
//! targets, malformed or oversized heads — is handed to hyper's server with the bytes read so
//! far, for the rest of that connection. So hyper keeps answering every edge case (400, 431,
//! 100-continue, h2 flow control) exactly as before; the fast path only takes what it fully
//! understands, and decides before it has consumed anything of the request.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::header;
use hyper::http::response;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::proxy::{
    Client, Guard, Proxy, error_text, is_hop_by_hop, is_idempotent, strip_hop_by_hop,
};
use crate::routes::strip;
use crate::upstream::{Headers, Outgoing, UpBody, poll_fill};

/// How long a client may take to send a request head (and a small body), idle keep-alive
/// time included, as hyper's `header_read_timeout` on the other path.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head the fast path reads; a larger one goes to hyper, which answers 431.
const MAX_HEAD: usize = 64 << 10;
/// Most request header fields (as hyper).
const MAX_HEADERS: usize = 100;
/// Response bytes gathered into one write at most.
const COALESCE: usize = 16 << 10;

/// Finds the end of a head.
pub(crate) static HEAD_END: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));

pub(crate) type Server = auto::Builder<TokioExecutor>;

/// Serves one client connection: the fast path while requests qualify, then hyper.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    server: Arc<Server>,
) {
    let mut c = Downstream {
        stream,
        buf: BytesMut::with_capacity(4096),
        out: Vec::with_capacity(1024),
        ip: peer.ip().to_string(),
    };
    let rest = loop {
        match c.next(&proxy).await {
            Next::Again => {}
            Next::Close => return,
            Next::Hyper(rest) => break rest,
        }
    };
    let client = Arc::new(Client::new(peer));
    let service = service_fn(move |req| proxy.clone().handle(req, client.clone()));
    let io = TokioIo::new(Prefixed {
        prefix: rest,
        io: c.stream,
    });
    if let Err(e) = server.serve_connection_with_upgrades(io, service).await {
        tracing::debug!("ingress: connection: {e}");
    }
}

/// What a connection does after a request.
enum Next {
    Again,
    Close,
    /// Hyper takes the connection; these bytes were read from it and not consumed.
    Hyper(Bytes),
}

/// Why an answer was not written whole.
enum Cut {
    /// Part of it reached the client (which sees a short answer and the connection close).
    Sent,
    /// None of it did: the backend failed before the answer was complete.
    Unsent(io::Error),
}

impl From<io::Error> for Cut {
    /// A write to the client failed.
    fn from(_: io::Error) -> Self {
        Cut::Sent
    }
}

/// Where reading a head ended.
enum HeadEnd {
    /// A CRLF-terminated head of this many bytes is at the front of the buffer.
    Found(usize),
    /// The client closed the connection between requests.
    Closed,
    /// Not for the fast path (bare-LF lines, malformed, too large, closed midway).
    Other,
}

struct Downstream {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// The response being written.
    out: Vec<u8>,
    ip: String,
}

impl Downstream {
    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| poll_fill(&self.stream, &mut self.buf, cx)).await
    }

    async fn read_head(&mut self) -> HeadEnd {
        let mut searched = 0;
        loop {
            if let Some(at) = HEAD_END.find(&self.buf[searched..]) {
                return HeadEnd::Found(searched + at + 4);
            }
            searched = self.buf.len().saturating_sub(3);
            if !self.buf.is_empty() {
                // No CRLF CRLF yet: a head httparse calls complete (bare LFs) or invalid is
                // hyper's; so is one that grew too large.
                let mut raw = [const { MaybeUninit::uninit() }; MAX_HEADERS];
                let partial = matches!(
                    httparse::Request::new(&mut []).parse_with_uninit_headers(&self.buf, &mut raw),
                    Ok(httparse::Status::Partial)
                );
                if !partial || self.buf.len() >= MAX_HEAD {
                    return HeadEnd::Other;
                }
            }
            match self.fill().await {
                Ok(0) if self.buf.is_empty() => return HeadEnd::Closed,
                Ok(0) => return HeadEnd::Other,
                Ok(_) => {}
                Err(_) => return HeadEnd::Closed,
            }
        }
    }

    /// Reads and answers one request, or says who takes the connection.
    async fn next(&mut self, proxy: &Proxy) -> Next {
        let end = match proxy
            .coarse
            .within(HEADER_READ_TIMEOUT, self.read_head())
            .await
        {
            Some(HeadEnd::Found(end)) => end,
            Some(HeadEnd::Other) => return Next::Hyper(self.buf.split().freeze()),
            Some(HeadEnd::Closed) | None => return Next::Close,
        };
        let head = self.buf.split_to(end).freeze();
        let mut raw = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let Some(plain) = plain_request(&mut raw, &head) else {
            return self.hand_to_hyper(&head);
        };
        let close = plain.close;
        let table = proxy.table.borrow().clone();
        let path = plain.target.split('?').next().unwrap_or("/");
        let Some(route) = table.find(plain.host, path) else {
            let why = format!("no route for host {:?} and path {path:?}", plain.host);
            return self.error(StatusCode::NOT_FOUND, &why, close).await;
        };
        let limits = &proxy.limits;
        if plain.length > limits.max_body {
            let why = format!(
                "request body of {} bytes is over the limit of {}",
                plain.length, limits.max_body
            );
            // The body stays unread, so the connection cannot carry another request.
            return self.error(StatusCode::PAYLOAD_TOO_LARGE, &why, true).await;
        }
        if plain.length > limits.replay_body {
            // Streamed to the backend as it arrives: hyper's body machinery does that.
            return self.hand_to_hyper(&head);
        }
        let body = if plain.length == 0 {
            Bytes::new()
        } else {
            match proxy
                .coarse
                .within(HEADER_READ_TIMEOUT, self.read_body(plain.length as usize))
                .await
            {
                Some(Ok(body)) => body,
                _ => return Next::Close,
            }
        };
        let stripped;
        let target = if route.strip_prefix {
            stripped = strip(&route.path, plain.target);
            stripped.as_str()
        } else {
            plain.target
        };
        let outgoing = Outgoing {
            method: &plain.method,
            target,
            headers: Headers::Raw {
                headers: plain.headers,
                host: plain.host.as_bytes(),
                client_ip: &self.ip,
            },
            upgrade: false,
        };
        let bodiless = plain.length == 0;
        let idempotent = is_idempotent(&plain.method);
        match proxy
            .forward(route, &outgoing, Some(body), None, idempotent, bodiless)
            .await
        {
            Ok((parts, body, guard)) => match self.respond(parts, body, guard, close).await {
                Ok(()) if !close => Next::Again,
                Ok(()) | Err(Cut::Sent) => Next::Close,
                // Nothing of the answer went out yet: the client gets a whole 502 instead.
                Err(Cut::Unsent(e)) => {
                    let why = format!("{e}");
                    self.error(StatusCode::BAD_GATEWAY, &why, true).await
                }
            },
            Err((status, why)) => self.error(status, &why, close).await,
        }
    }

    /// Hands the connection to hyper with the whole request: its head, then what followed it.
    fn hand_to_hyper(&mut self, head: &[u8]) -> Next {
        let mut all = BytesMut::with_capacity(head.len() + self.buf.len());
        all.extend_from_slice(head);
        all.extend_from_slice(&self.buf);
        self.buf.clear();
        Next::Hyper(all.freeze())
    }

    async fn read_body(&mut self, length: usize) -> io::Result<Bytes> {
        while self.buf.len() < length {
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.split_to(length).freeze())
    }

    /// Writes the backend's answer: its head without hop-by-hop headers, then its body as it
    /// comes (chunked unless the backend gave a length). What is at hand goes out in one write.
    async fn respond(
        &mut self,
        mut parts: response::Parts,
        mut body: UpBody,
        guard: Guard,
        close: bool,
    ) -> Result<(), Cut> {
        if parts.headers.contains_key(header::CONNECTION) {
            strip_hop_by_hop(&mut parts.headers, false);
        }
        let out = &mut self.out;
        out.clear();
        status_line(out, parts.status);
        for (name, value) in parts.headers.iter() {
            if is_hop_by_hop(name.as_str()) {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // A Length body keeps the backend's Content-Length; HEAD, 204 and 304 answers keep
        // their headers and have no body.
        let chunked = !body.is_end_stream() && body.size_hint().exact().is_none();
        if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let mut sent = false;
        loop {
            // A frame at hand joins what is gathered; otherwise that goes out first.
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            let frame = match polled {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if !self.out.is_empty() {
                        sent = true;
                        self.stream.write_all(&self.out).await?;
                        self.out.clear();
                    }
                    body.frame().await
                }
            };
            let data = match frame {
                None => break,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
                // The answer cannot be completed: the client must not take it as whole.
                Some(Err(_)) if sent => return Err(Cut::Sent),
                Some(Err(e)) => return Err(Cut::Unsent(e)),
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                self.out
                    .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            }
            if self.out.len() + data.len() <= COALESCE {
                self.out.extend_from_slice(&data);
            } else {
                sent = true;
                self.stream.write_all(&self.out).await?;
                self.out.clear();
                self.stream.write_all(&data).await?;
            }
            if chunked {
                self.out.extend_from_slice(b"\r\n");
            }
        }
        if chunked {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
        }
        drop(guard);
        Ok(())
    }

    /// The ingress's own answer.
    async fn error(&mut self, status: StatusCode, why: &str, close: bool) -> Next {
        let text = error_text(status, why);
        let out = &mut self.out;
        out.clear();
        status_line(out, status);
        out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\n");
        out.extend_from_slice(format!("content-length: {}\r\n", text.len()).as_bytes());
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(text.as_bytes());
        match self.stream.write_all(&self.out).await {
            Ok(()) if !close => Next::Again,
            _ => Next::Close,
        }
    }
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A request the fast path serves, read off its head.
struct Plain<'h, 'b> {
    method: Method,
    /// Origin-form: path and query.
    target: &'b str,
    host: &'b str,
    headers: &'h [httparse::Header<'b>],
    /// Content-Length (0 when absent).
    length: u64,
    /// The client asked to close after this answer.
    close: bool,
}

/// Parses `head` and says whether the fast path takes it: HTTP/1.1, origin-form target, one
/// Host, at most one Content-Length, no Transfer-Encoding, Upgrade or Expect, and a
/// Connection header that says at most keep-alive or close.
fn plain_request<'h, 'b>(
    raw: &'h mut [MaybeUninit<httparse::Header<'b>>],
    head: &'b [u8],
) -> Option<Plain<'h, 'b>> {
    let mut req = httparse::Request::new(&mut []);
    if !matches!(
        req.parse_with_uninit_headers(head, raw),
        Ok(httparse::Status::Complete(_))
    ) || req.version != Some(1)
    {
        return None;
    }
    let target = req.path?;
    if !target.starts_with('/') {
        return None;
    }
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let mut host = None;
    let mut length = None;
    let mut close = false;
    for h in req.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return None;
            }
            host = Some(std::str::from_utf8(h.value).ok()?);
        } else if n.eq_ignore_ascii_case("content-length") {
            // 1*DIGIT (RFC 9110 §8.6): no sign, no list; anything else is hyper's to refuse.
            let v = std::str::from_utf8(h.value).ok()?.trim_matches([' ', '\t']);
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let v: u64 = v.parse().ok()?;
            if length.is_some_and(|l| l != v) {
                return None;
            }
            length = Some(v);
        } else if n.eq_ignore_ascii_case("transfer-encoding")
            || n.eq_ignore_ascii_case("upgrade")
            || n.eq_ignore_ascii_case("expect")
        {
            return None;
        } else if n.eq_ignore_ascii_case("connection") {
            for token in std::str::from_utf8(h.value).ok()?.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case("keep-alive") && !token.is_empty() {
                    return None;
                }
            }
        }
    }
    Some(Plain {
        headers: req.headers,
        method,
        target,
        host: host.filter(|h| !h.is_empty())?,
        length: length.unwrap_or(0),
        close,
    })
}

/// A connection handed to hyper: the bytes already read come first.
struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(head: &str) -> Option<(String, String, u64, bool)> {
        let mut raw = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        plain_request(&mut raw, head.as_bytes())
            .map(|p| (p.target.to_string(), p.host.to_string(), p.length, p.close))
    }

    #[test]
    fn plain_http11_requests_take_the_fast_path() {
        assert_eq!(
            plain("GET /a?b=1 HTTP/1.1\r\nHost: web.localhost\r\n\r\n"),
            Some(("/a?b=1".into(), "web.localhost".into(), 0, false))
        );
        assert_eq!(
            plain("POST / HTTP/1.1\r\nhost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"),
            Some(("/".into(), "h".into(), 5, true))
        );
        assert_eq!(
            plain("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"),
            Some(("/".into(), "h".into(), 0, false))
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_taken_or_left_never_a_panic(
            head in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
            start in proptest::sample::select(vec!["", "GET / HTTP/1.1\r\nHost: h\r\n", "POST /x HTTP/1.1\r\n"]),
        ) {
            let mut bytes = start.as_bytes().to_vec();
            bytes.extend_from_slice(&head);
            bytes.extend_from_slice(b"\r\n\r\n");
            let mut raw = [const { MaybeUninit::uninit() }; MAX_HEADERS];
            if let Some(p) = plain_request(&mut raw, &bytes) {
                // Whatever it takes has an origin-form target and a Host to route by.
                proptest::prop_assert!(p.target.starts_with('/') && !p.host.is_empty());
            }
        }
    }

    #[test]
    fn everything_else_is_left_to_hyper() {
        for head in [
            "GET / HTTP/1.0\r\nHost: h\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\n",
            "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: x-secret\r\nx-secret: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHo st: h\r\n\r\n",
        ] {
            assert_eq!(plain(head), None, "{head:?}");
        }
    }
}
