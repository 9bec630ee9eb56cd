//! Connections to backends, one set per worker thread, and the HTTP/1.1 client that uses them.
//!
//! The client is small on purpose: it writes the request head from the proxied request's
//! header map, parses the response head with `httparse`, and hands back a body that reads the
//! backend's socket directly. Everything runs in the task of the client's request — there is
//! no connection task, no channel and no extra wake-up between the two sides, which is where
//! `hyper::client::conn` spent most of the proxy's user-space time.
//!
//! Connections are kept idle per backend address and reused last-in first-out. One goes back
//! to the idle set only when its response was read exactly to its end (HTTP/1.1 has one
//! exchange at a time) and the backend did not ask to close; a body dropped early closes it.
//! A request that could not be written (connect failed) comes back to the caller whole, so it
//! can go to another backend even with a streamed body.
//!
//! A backend may close an idle connection at any time, and the close can cross a request
//! sent on it. Idle connections are therefore reused only for [`IDLE_TIMEOUT`], shorter than
//! the keep-alive timeouts servers commonly use, and a reused connection that fails before
//! any byte of a response is reported as [`SendError::Stale`], so the caller can send again
//! on a fresh connection to the same backend when that is safe.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::response;
use hyper::{Method, Response, StatusCode, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Idle connections kept per backend at most.
const MAX_IDLE: usize = 256;
/// Largest response head (status line and headers), and largest chunked-body trailer.
const MAX_HEAD: usize = 64 << 10;
/// Most response header fields (as hyper).
const MAX_HEADERS: usize = 100;
/// How long a connection stays idle before it is closed rather than reused: under the
/// keep-alive timeouts of common servers (gunicorn 2 s, Node.js, uvicorn and Apache 5 s), so
/// that the ingress rarely reuses a connection its backend is closing.
const IDLE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Bytes read from a backend at a time at most.
const READ_CHUNK: usize = 16 << 10;
/// Request bodies up to this size are written together with the head.
const COALESCE: usize = 16 << 10;

#[derive(Default)]
pub struct Upstreams {
    idle: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
}

/// One backend connection with its read buffer (bytes read past the current position) and a
/// reused buffer for request heads.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
    /// When it last went idle.
    idle_since: Instant,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: BytesMut::new(),
            out: Vec::new(),
            idle_since: Instant::now(),
        }
    }

    /// An idle connection is usable when it has not been idle too long and nothing is waiting
    /// on it: no end of stream, no error, no stray bytes. Costs no system call while the
    /// socket has had no event.
    fn idle_usable(&self, now: Instant) -> bool {
        if now.duration_since(self.idle_since) >= IDLE_TIMEOUT {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&self.stream, &mut self.buf, cx)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// The socket and the bytes the backend sent past the 101 response (a switched
    /// connection's first bytes).
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.buf)
    }
}

/// Reads what `stream` has into `buf`; `Ok(0)` is the end of the stream.
pub(crate) fn poll_fill(
    stream: &TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    let room = buf.capacity() - buf.len();
    loop {
        match stream.try_read_buf(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready!(stream.poll_read_ready(cx))?;
            }
            Ok(n) if n > 0 && n < room => {
                // A short read emptied the socket: the next read would only say so, one
                // system call per exchange. Marking it not ready waits for the next event
                // instead (the end of the stream stays marked: tokio keeps closed states).
                let _ = stream.try_io(tokio::io::Interest::READABLE, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
                return Poll::Ready(Ok(n));
            }
            r => return Poll::Ready(r),
        }
    }
}

/// The request line and headers to send, plus the framing of the body.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    /// Origin-form target: path and query.
    pub target: &'a str,
    pub headers: Headers<'a>,
    /// A 101 answer is expected (and allowed).
    pub upgrade: bool,
}

/// A request's headers on their way to a backend.
pub enum Headers<'a> {
    /// Ready to send as they are: hop-by-hop ones removed, X-Forwarded-* set.
    Map(&'a HeaderMap),
    /// As an HTTP/1.1 client sent them, with no `Connection` naming other headers, no
    /// `Transfer-Encoding` and no `Upgrade`: the other hop-by-hop headers are left out and
    /// X-Forwarded-* written while sending.
    Raw {
        headers: &'a [httparse::Header<'a>],
        host: &'a [u8],
        client_ip: &'a str,
    },
}

impl Headers<'_> {
    fn has(&self, name: &HeaderName) -> bool {
        match self {
            Headers::Map(m) => m.contains_key(name),
            Headers::Raw { headers, .. } => headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case(name.as_str())),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        let mut line = |name: &[u8], value: &[u8]| {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        match self {
            Headers::Map(m) => {
                for (name, value) in m.iter() {
                    line(name.as_str().as_bytes(), value.as_bytes());
                }
            }
            Headers::Raw {
                headers,
                host,
                client_ip,
            } => {
                let mut prior_for = false;
                for h in headers.iter() {
                    let n = h.name;
                    if n.eq_ignore_ascii_case("x-forwarded-for") {
                        prior_for = true;
                    } else if !(n.eq_ignore_ascii_case("connection")
                        || n.eq_ignore_ascii_case("keep-alive")
                        || n.eq_ignore_ascii_case("proxy-connection")
                        || n.eq_ignore_ascii_case("te")
                        || n.eq_ignore_ascii_case("trailer")
                        || n.eq_ignore_ascii_case("x-forwarded-host")
                        || n.eq_ignore_ascii_case("x-forwarded-proto"))
                    {
                        line(n.as_bytes(), h.value);
                    }
                }
                let mut xff = Vec::new();
                if prior_for {
                    for h in headers.iter() {
                        if h.name.eq_ignore_ascii_case("x-forwarded-for") {
                            xff.extend_from_slice(h.value);
                            xff.extend_from_slice(b", ");
                        }
                    }
                }
                xff.extend_from_slice(client_ip.as_bytes());
                line(b"x-forwarded-for", &xff);
                line(b"x-forwarded-host", host);
                line(b"x-forwarded-proto", b"http");
            }
        }
    }
}

/// A request body: whole (replayable), or streamed from the client (sent once).
pub enum OutBody {
    Full(Bytes),
    Stream(Limited<Incoming>),
}

/// Why a request got no response.
pub enum SendError {
    /// Nothing reached the application: the body comes back for another backend.
    NotSent(String, OutBody),
    /// Sent (in part or whole), then the exchange failed before a response head.
    Failed(String),
    /// A reused connection failed before any byte of a response: most likely the backend
    /// had closed it while idle. The body comes back when none of it was written.
    Stale(String, Option<OutBody>),
}

impl Upstreams {
    fn take_idle(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(c) = list.pop() {
            if c.idle_usable(now) {
                return Some(c);
            }
        }
        None
    }

    fn release(&self, addr: SocketAddr, mut conn: Conn) {
        conn.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE {
            list.push(conn);
        }
    }

    /// Drops idle connections their backend closed (an instance that stopped, a keep-alive
    /// timeout) or that were idle too long, and the entries of backends left without any.
    pub fn prune_closed(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        idle.retain(|_, list| {
            list.retain(|c| c.idle_usable(now));
            !list.is_empty()
        });
    }

    /// Sends the request to `addr` on an idle connection (unless `fresh`), else a new one,
    /// and reads the response head. The caller bounds the whole exchange in time.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: &Outgoing<'_>,
        body: OutBody,
        connect_timeout: Duration,
        fresh: bool,
    ) -> Result<(response::Parts, UpBody), SendError> {
        let idle = if fresh { None } else { self.take_idle(addr) };
        let reused = idle.is_some();
        let mut conn = match idle {
            Some(c) => c,
            None => match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Conn::new(s)
                }
                Ok(Err(e)) => return Err(SendError::NotSent(format!("connect: {e}"), body)),
                Err(_) => {
                    return Err(SendError::NotSent(
                        format!("connect: no answer within {connect_timeout:?}"),
                        body,
                    ));
                }
            },
        };
        let stale = |e: SendError, conn: &Conn| match e {
            SendError::NotSent(why, body) if reused => SendError::Stale(why, Some(body)),
            SendError::Failed(why) if reused && conn.buf.is_empty() => SendError::Stale(why, None),
            e => e,
        };
        if let Err(e) = write_request(&mut conn, req, body).await {
            return Err(stale(e, &conn));
        }
        let (parts, framing, reusable) = match read_head(&mut conn, req).await {
            Ok(head) => head,
            Err(e) => return Err(stale(e, &conn)),
        };
        let mut up = UpBody {
            conn: Some(conn),
            state: framing,
            reusable,
            home: Some((self.clone(), addr)),
        };
        if up.is_complete() {
            up.finish(); // no body: the connection serves the next request right away
        }
        Ok((parts, up))
    }
}

/// Writes the head, then the body. A failure before the body was taken from the client gives
/// the body back as not sent: a backend does not act on a request it did not fully get.
async fn write_request(
    conn: &mut Conn,
    req: &Outgoing<'_>,
    body: OutBody,
) -> Result<(), SendError> {
    let out = &mut conn.out;
    out.clear();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    req.headers.write(out);
    let has_length = req.headers.has(&header::CONTENT_LENGTH);
    match body {
        OutBody::Full(bytes) => {
            if !has_length && !bytes.is_empty() {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(bytes.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            let written = if bytes.len() <= COALESCE {
                out.extend_from_slice(&bytes);
                conn.stream.write_all(&conn.out).await
            } else {
                match conn.stream.write_all(&conn.out).await {
                    Ok(()) => conn.stream.write_all(&bytes).await,
                    Err(e) => Err(e),
                }
            };
            written.map_err(|e| SendError::NotSent(format!("sending: {e}"), OutBody::Full(bytes)))
        }
        OutBody::Stream(mut stream) => {
            let chunked = !has_length;
            if chunked {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
            out.extend_from_slice(b"\r\n");
            if let Err(e) = conn.stream.write_all(&conn.out).await {
                return Err(SendError::NotSent(
                    format!("sending: {e}"),
                    OutBody::Stream(stream),
                ));
            }
            let failed = |what: &str, e: &dyn std::fmt::Display| {
                SendError::Failed(format!("{what} the request body: {e}"))
            };
            while let Some(frame) = stream.frame().await {
                let frame = frame.map_err(|e| failed("reading", &e))?;
                let Ok(data) = frame.into_data() else {
                    continue; // trailers are not forwarded
                };
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    let size = format!("{:x}\r\n", data.len());
                    conn.stream
                        .write_all(size.as_bytes())
                        .await
                        .map_err(|e| failed("sending", &e))?;
                }
                conn.stream
                    .write_all(&data)
                    .await
                    .map_err(|e| failed("sending", &e))?;
                if chunked {
                    conn.stream
                        .write_all(b"\r\n")
                        .await
                        .map_err(|e| failed("sending", &e))?;
                }
            }
            if chunked {
                conn.stream
                    .write_all(b"0\r\n\r\n")
                    .await
                    .map_err(|e| failed("sending", &e))?;
            }
            Ok(())
        }
    }
}

/// Reads the response head (skipping 1xx interim answers other than 101) and works out how
/// its body is framed and whether the connection can serve another request after it.
async fn read_head(
    conn: &mut Conn,
    req: &Outgoing<'_>,
) -> Result<(response::Parts, State, bool), SendError> {
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf).map_err(SendError::Failed)? {
                Some((parts, _))
                    if parts.status.is_informational()
                        && parts.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    continue;
                }
                Some((mut parts, minor)) => {
                    let (state, reusable) = framing(&mut parts, minor, req)?;
                    return Ok((parts, state, reusable));
                }
                None if conn.buf.len() >= MAX_HEAD => {
                    return Err(SendError::Failed(format!(
                        "response header over {} KiB",
                        MAX_HEAD >> 10
                    )));
                }
                None => {}
            }
        }
        match conn.fill().await {
            Ok(0) if conn.buf.is_empty() => {
                return Err(SendError::Failed(
                    "closed the connection without answering".into(),
                ));
            }
            Ok(0) => {
                return Err(SendError::Failed(
                    "closed the connection in the response header".into(),
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(SendError::Failed(format!("reading the response: {e}"))),
        }
    }
}

/// Parses a complete response head off the front of `buf` (`None`: not complete yet). The
/// header values share the head's bytes; nothing is copied.
fn parse_head(buf: &mut BytesMut) -> Result<Option<(response::Parts, u8)>, String> {
    // The head ends at the first empty line; split it off first, so that the parsed names and
    // values can be sliced from it.
    let Some(end) = crate::h1::HEAD_END.find(buf) else {
        return Ok(None);
    };
    let head = buf.split_to(end + 4).freeze();
    let mut raw = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        &head,
        &mut raw,
    ) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("invalid response header".into()),
        Err(e) => return Err(format!("invalid response header: {e}")),
    }
    let code = parsed.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| format!("invalid response status {code}"))?;
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.version = Version::HTTP_11;
    parts.headers.reserve(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| "invalid response header name".to_string())?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value))
            .map_err(|_| format!("invalid value of response header {name}"))?;
        parts.headers.append(name, value);
    }
    Ok(Some((parts, parsed.version.unwrap_or(1))))
}

/// The body's framing (RFC 9112 §6.3) and whether the connection is reusable after it.
fn framing(
    parts: &mut response::Parts,
    minor: u8,
    req: &Outgoing<'_>,
) -> Result<(State, bool), SendError> {
    let mut reusable = minor == 1
        && !tokens(&parts.headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case("close"));
    let code = parts.status.as_u16();
    if code == 101 {
        if !req.upgrade {
            return Err(SendError::Failed("switched protocols unasked".into()));
        }
        return Ok((State::Upgrade, false));
    }
    if *req.method == Method::HEAD || code == 204 || code == 304 {
        return Ok((State::Done, reusable));
    }
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        parts.headers.remove(header::CONTENT_LENGTH);
        let last = tokens(&parts.headers, &header::TRANSFER_ENCODING).last();
        if last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            return Ok((State::Chunked(Chunk::Size), reusable));
        }
        return Ok((State::Close, false));
    }
    let mut length = None;
    for v in parts.headers.get_all(header::CONTENT_LENGTH) {
        let n = v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
        match (n, length) {
            (Some(n), None) => length = Some(n),
            (Some(n), Some(m)) if n == m => {}
            _ => {
                return Err(SendError::Failed(
                    "invalid Content-Length in the response".into(),
                ));
            }
        }
    }
    match length {
        Some(n) => Ok((State::Length(n), reusable)),
        None => {
            reusable = false;
            Ok((State::Close, reusable))
        }
    }
}

/// The comma-separated tokens of every value of a header.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Where a response body is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum State {
    /// This many bytes are left (Content-Length).
    Length(u64),
    Chunked(Chunk),
    /// Ends when the backend closes the connection.
    Close,
    Done,
    /// The connection switched protocols: it is the caller's.
    Upgrade,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk: bytes left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// In the trailer section: bytes of it seen.
    Trailer(usize),
}

/// A backend's response body, read from its connection as the client takes it.
pub struct UpBody {
    conn: Option<Conn>,
    state: State,
    reusable: bool,
    home: Option<(Arc<Upstreams>, SocketAddr)>,
}

impl UpBody {
    fn is_complete(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    /// Gives a finished connection back to its idle set (or closes it).
    fn finish(&mut self) {
        let complete = self.is_complete();
        self.state = State::Done;
        if let (Some(conn), Some((upstreams, addr))) = (self.conn.take(), self.home.take())
            && complete
            && self.reusable
            && conn.buf.is_empty()
        {
            upstreams.release(addr, conn);
        }
    }

    /// The connection of a 101 answer.
    pub fn into_upgraded(mut self) -> Option<Conn> {
        if self.state != State::Upgrade {
            return None;
        }
        self.home = None;
        self.conn.take()
    }

    fn fail(&mut self, why: &str) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.conn = None;
        self.state = State::Done;
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("backend response body: {why}"),
        ))))
    }
}

impl Drop for UpBody {
    /// A body the server never polls to its end (HEAD, 204, 304) may still be complete.
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if this.is_complete() || this.state == State::Upgrade {
                this.finish();
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let starved = match this.state {
                State::Chunked(c @ (Chunk::Size | Chunk::DataEnd | Chunk::Trailer(_))) => {
                    needs_more(&conn.buf, c)
                }
                _ => conn.buf.is_empty(),
            };
            if starved {
                if conn.buf.len() > MAX_HEAD {
                    return this.fail("chunked framing line too long");
                }
                match ready!(conn.poll_fill(cx)) {
                    Ok(0) if this.state == State::Close => {
                        this.state = State::Done;
                        this.reusable = false;
                        continue;
                    }
                    Ok(0) => return this.fail("the backend closed the connection mid-body"),
                    Ok(_) => continue,
                    Err(e) => return this.fail(&e.to_string()),
                }
            }
            match this.state {
                State::Length(left) => {
                    let take = left.min(conn.buf.len() as u64);
                    let data = conn.buf.split_to(take as usize).freeze();
                    this.state = State::Length(left - take);
                    if left == take {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Close => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(Chunk::Data(left)) => {
                    let take = left.min(conn.buf.len() as u64);
                    let data = conn.buf.split_to(take as usize).freeze();
                    this.state = State::Chunked(if left == take {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - take)
                    });
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(chunk) => match step_chunk(&mut conn.buf, chunk) {
                    Ok(next) => this.state = next,
                    Err(why) => return this.fail(why),
                },
                State::Done | State::Upgrade => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.is_complete() || self.state == State::Upgrade
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done | State::Upgrade => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Whether the chunked framing state `c` cannot move on with the bytes in `buf`.
fn needs_more(buf: &[u8], c: Chunk) -> bool {
    match c {
        Chunk::Size => matches!(
            httparse::parse_chunk_size(buf),
            Ok(httparse::Status::Partial)
        ),
        Chunk::DataEnd => buf.len() < 2,
        Chunk::Trailer(_) => !buf.windows(2).any(|w| w == b"\r\n"),
        Chunk::Data(_) => buf.is_empty(),
    }
}

/// Moves the chunked framing past a size line, a chunk's CRLF or a trailer line, given the
/// buffer holds enough for it (see [`needs_more`]).
fn step_chunk(buf: &mut BytesMut, c: Chunk) -> Result<State, &'static str> {
    match c {
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete((used, 0))) => {
                buf.advance(used);
                Ok(State::Chunked(Chunk::Trailer(0)))
            }
            Ok(httparse::Status::Complete((used, size))) => {
                buf.advance(used);
                Ok(State::Chunked(Chunk::Data(size)))
            }
            Ok(httparse::Status::Partial) => Err("chunk size line incomplete"),
            Err(_) => Err("invalid chunk size line"),
        },
        Chunk::DataEnd => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                Ok(State::Chunked(Chunk::Size))
            } else {
                Err("chunk data longer than its size")
            }
        }
        Chunk::Trailer(seen) => {
            let at = buf
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("trailer line incomplete")?;
            buf.advance(at + 2);
            if at == 0 {
                Ok(State::Done)
            } else if seen + at + 2 > MAX_HEAD {
                Err("trailer section too large")
            } else {
                Ok(State::Chunked(Chunk::Trailer(seen + at + 2)))
            }
        }
        Chunk::Data(n) => Ok(State::Chunked(Chunk::Data(n))),
    }
}
