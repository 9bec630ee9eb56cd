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
                    } else if !(crate::proxy::is_hop_by_hop(n)
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
            match decode(this.state, &mut conn.buf) {
                Ok(Step::Data(data, next)) => {
                    this.state = next;
                    if this.is_complete() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Next(next)) => this.state = next,
                Ok(Step::NeedMore) => {
                    if conn.buf.len() > MAX_HEAD {
                        return this.fail("chunked framing line too long");
                    }
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) if this.state == State::Close => {
                            this.state = State::Done;
                            this.reusable = false;
                        }
                        Ok(0) => return this.fail("the backend closed the connection mid-body"),
                        Ok(_) => {}
                        Err(e) => return this.fail(&e.to_string()),
                    }
                }
                Err(why) => return this.fail(why),
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

/// What the bytes at hand give, read in body state `state`.
#[derive(Debug, PartialEq)]
enum Step {
    /// Body data for the client, and the state after it.
    Data(Bytes, State),
    /// Framing consumed (a size line, a chunk's CRLF, a trailer line): the new state.
    Next(State),
    /// Nothing can move on until more bytes arrive.
    NeedMore,
}

/// One step of reading a body out of `buf` (pure: the caller reads the socket when told
/// [`Step::NeedMore`], and owns what a `Done` state means for the connection).
fn decode(state: State, buf: &mut BytesMut) -> Result<Step, &'static str> {
    match state {
        State::Done | State::Upgrade | State::Length(0) => Ok(Step::Next(state)),
        _ if buf.is_empty() => Ok(Step::NeedMore),
        State::Length(left) => {
            let take = left.min(buf.len() as u64);
            let data = buf.split_to(take as usize).freeze();
            Ok(Step::Data(data, State::Length(left - take)))
        }
        State::Close => Ok(Step::Data(buf.split().freeze(), State::Close)),
        State::Chunked(Chunk::Data(left)) => {
            let take = left.min(buf.len() as u64);
            let data = buf.split_to(take as usize).freeze();
            let next = if left == take {
                Chunk::DataEnd
            } else {
                Chunk::Data(left - take)
            };
            Ok(Step::Data(data, State::Chunked(next)))
        }
        State::Chunked(chunk) if needs_more(buf, chunk) => Ok(Step::NeedMore),
        State::Chunked(chunk) => step_chunk(buf, chunk).map(Step::Next),
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Feeds `wire` to the decoder in pieces cut at `cuts`, as a socket might deliver it, from
    /// body state `state` until the body ends or the bytes run out. Gives the body, the last
    /// state, and the bytes after the body (left in the buffer or never fed).
    fn run(
        mut state: State,
        wire: &[u8],
        cuts: &[usize],
    ) -> Result<(Vec<u8>, State, Vec<u8>), &'static str> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut pieces = cuts
            .iter()
            .scan(0, |from, &to| {
                let piece = &wire[*from..to];
                *from = to;
                Some(piece)
            })
            .filter(|p| !p.is_empty());
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        loop {
            if matches!(state, State::Done | State::Length(0)) {
                break;
            }
            let before = (state, buf.len());
            match decode(state, &mut buf)? {
                Step::Data(data, next) => {
                    assert!(!data.is_empty(), "data frames are never empty");
                    body.extend_from_slice(&data);
                    state = next;
                }
                Step::Next(next) => {
                    state = next;
                    assert!((state, buf.len()) != before, "every step makes progress");
                }
                Step::NeedMore => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => break,
                },
            }
        }
        let mut rest = buf.to_vec();
        pieces.for_each(|p| rest.extend_from_slice(p));
        Ok((body, state, rest))
    }

    /// `body` chunked in pieces of `sizes` (cycled), with or without chunk extensions and
    /// upper-case hex, then `trailers`.
    fn chunked(body: &[u8], sizes: &[usize], ext: bool, upper: bool, trailers: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut rest = body;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, after) = rest.split_at(size.min(rest.len()));
            let hex = if upper {
                format!("{:X}", chunk.len())
            } else {
                format!("{:x}", chunk.len())
            };
            wire.extend_from_slice(hex.as_bytes());
            if ext {
                wire.extend_from_slice(b";name=\"va;lue\"");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
            rest = after;
        }
        wire.extend_from_slice(b"0\r\n");
        for i in 0..trailers {
            wire.extend_from_slice(format!("x-trailer-{i}: {i}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        wire
    }

    proptest! {
        #[test]
        fn chunked_bodies_decode_whole_however_the_socket_splits_them(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            sizes in proptest::collection::vec(1usize..700, 1..8),
            ext in any::<bool>(),
            upper in any::<bool>(),
            trailers in 0usize..3,
            cuts in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            let mut wire = chunked(&body, &sizes, ext, upper, trailers);
            wire.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let (got, state, rest) = run(State::Chunked(Chunk::Size), &wire, &cuts).unwrap();
            prop_assert_eq!(got, body);
            prop_assert_eq!(state, State::Done);
            prop_assert_eq!(rest, b"HTTP/1.1 200 OK\r\n".to_vec(), "the next answer is left alone");
        }

        #[test]
        fn length_bodies_stop_at_their_length(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            cuts in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            let mut wire = body.clone();
            wire.extend_from_slice(b"next");
            let (got, state, rest) = run(State::Length(body.len() as u64), &wire, &cuts).unwrap();
            prop_assert_eq!(got, body);
            prop_assert_eq!(state, State::Length(0));
            prop_assert_eq!(rest, b"next".to_vec());
        }

        #[test]
        fn hostile_bodies_and_heads_end_in_an_error_or_an_end_never_a_panic(
            wire in proptest::collection::vec(any::<u8>(), 0..4000),
            prefix in proptest::sample::select(vec![&b""[..], b"5\r\n", b"0\r\n", b"ffffffffffffffffff\r\n", b"HTTP/1.1 200 OK\r\n"]),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            let wire = [prefix, &wire].concat();
            let _ = run(State::Chunked(Chunk::Size), &wire, &cuts);
            if let Ok((got, _, _)) = run(State::Length(100), &wire, &cuts) {
                prop_assert!(got.len() <= 100);
            }
            let mut buf = BytesMut::from(&wire[..]);
            let _ = parse_head(&mut buf);
        }
    }

    #[test]
    fn broken_chunk_framing_is_an_error() {
        for wire in [
            &b"ffffffffffffffffff\r\n"[..],
            b"zz\r\n",
            b"3\r\nabcX\r\n",
            b"-1\r\n",
        ] {
            assert!(
                run(State::Chunked(Chunk::Size), wire, &[]).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn a_response_head_is_split_off_and_its_values_shared() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody"[..]);
        let (parts, minor) = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!((parts.status.as_u16(), minor), (404, 1));
        let values: Vec<_> = parts.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(&buf[..], b"body");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-A: 1\r\n"[..]);
        assert!(parse_head(&mut partial).unwrap().is_none());
        let mut bad = BytesMut::from(&b"HTTP/1.1 999x OK\r\n\r\n"[..]);
        assert!(parse_head(&mut bad).is_err());
    }
}
