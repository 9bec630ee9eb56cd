//! One request through the ingress: route, pick a backend, forward, retry what is safe to
//! retry, and answer for the backend when none can (404 no route, 413 too large, 502 failed,
//! 503 no ready instance, 504 timed out), always with a body that says why.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::response;
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use skiff_catalog::Traffic;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::balance::pick;
use crate::coarse::Coarse;
use crate::routes::{Route, RouteTable, strip};
use crate::upstream::{Conn, Headers, OutBody, Outgoing, SendError, UpBody, Upstreams};

/// Backends tried per request at most (attempts plus withdrawn ones skipped).
const MAX_PICKS: usize = 8;

/// Limits and timeouts of the ingress.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body (by Content-Length up front, or while streaming).
    pub max_body: u64,
    /// Request bodies up to this size are buffered, so that a failed attempt can be retried.
    pub replay_body: u64,
    pub connect_timeout: Duration,
    /// From sending the request to the backend's response header.
    pub response_timeout: Duration,
    /// Attempts per request (each on a different backend).
    pub attempts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 64 << 20,
            replay_body: 64 << 10,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(60),
            attempts: 3,
        }
    }
}

pub type ProxyBody = Either<Tracked, Full<Bytes>>;

pub struct Proxy {
    pub(crate) table: watch::Receiver<Arc<RouteTable>>,
    upstreams: Arc<Upstreams>,
    pub(crate) limits: Limits,
    pub(crate) coarse: Coarse,
}

impl Proxy {
    /// Must be called inside the worker's runtime (it prunes idle connections there).
    pub fn new(table: watch::Receiver<Arc<RouteTable>>, limits: Limits, coarse: Coarse) -> Proxy {
        let upstreams: Arc<Upstreams> = Arc::default();
        let weak = Arc::downgrade(&upstreams);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            loop {
                every.tick().await;
                match weak.upgrade() {
                    Some(u) => u.prune_closed(),
                    None => return,
                }
            }
        });
        Proxy {
            table,
            upstreams,
            limits,
            coarse,
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        client: Arc<Client>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let table = self.table.borrow().clone();
        let Some(host) = request_host(&req) else {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "the request names no host (Host header or absolute URI)".into(),
            ));
        };
        let host_str = host.to_str().unwrap_or_default();
        let Some(route) = table.find(host_str, req.uri().path()) else {
            return Ok(error(
                StatusCode::NOT_FOUND,
                format!(
                    "no route for host {host_str:?} and path {:?}",
                    req.uri().path()
                ),
            ));
        };
        let path_and_query = match req.uri().path_and_query() {
            Some(pq) if !route.strip_prefix => pq.clone(),
            Some(pq) => match PathAndQuery::from_maybe_shared(strip(&route.path, pq.as_str())) {
                Ok(stripped) => stripped,
                Err(_) => {
                    return Ok(error(
                        StatusCode::BAD_REQUEST,
                        format!("cannot forward path {:?}", pq.as_str()),
                    ));
                }
            },
            None => PathAndQuery::from_static("/"),
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limits.max_body) {
            return Ok(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body of {} bytes is over the limit of {}",
                    declared.unwrap_or(0),
                    self.limits.max_body
                ),
            ));
        }
        let upgrade = is_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let bodiless = declared == Some(0)
            || (declared.is_none()
                && !parts.headers.contains_key(header::TRANSFER_ENCODING)
                && body.is_end_stream());
        let headers = forward_headers(std::mem::take(&mut parts.headers), host, &client, upgrade);
        let outgoing = Outgoing {
            method: &parts.method,
            target: path_and_query.as_str(),
            headers: Headers::Map(&headers),
            upgrade,
        };
        // The body, replayable when it is small enough to buffer.
        let mut streamed = None;
        let replay = if bodiless {
            Some(Bytes::new())
        } else if declared.is_some_and(|n| n <= self.limits.replay_body) {
            match Limited::new(body, self.limits.replay_body as usize)
                .collect()
                .await
            {
                Ok(c) => Some(c.to_bytes()),
                Err(e) => {
                    return Ok(error(
                        StatusCode::BAD_REQUEST,
                        format!("reading the request body: {e}"),
                    ));
                }
            }
        } else {
            streamed = Some(Limited::new(body, self.limits.max_body as usize));
            None
        };
        let idempotent = is_idempotent(&parts.method);
        match self
            .forward(route, &outgoing, replay, streamed, idempotent, bodiless)
            .await
        {
            Ok((mut p, body, guard)) => {
                if p.status == StatusCode::SWITCHING_PROTOCOLS {
                    if let (Some(client_upgrade), Some(conn)) =
                        (client_upgrade, body.into_upgraded())
                    {
                        tokio::spawn(tunnel(client_upgrade, conn, guard));
                    }
                    p.headers.remove(header::CONTENT_LENGTH);
                    return Ok(Response::from_parts(
                        p,
                        Either::Right(Full::new(Bytes::new())),
                    ));
                }
                strip_hop_by_hop(&mut p.headers, false);
                Ok(Response::from_parts(
                    p,
                    Either::Left(Tracked {
                        inner: body,
                        _guard: guard,
                    }),
                ))
            }
            Err((code, why)) => Ok(error(code, why)),
        }
    }

    /// Sends the request to the route's backends until one answers, retrying what is safe
    /// to retry: the response head with its body and in-flight guard, or the status and
    /// reason to answer the client with.
    pub(crate) async fn forward(
        &self,
        route: &Route,
        outgoing: &Outgoing<'_>,
        replay: Option<Bytes>,
        mut streamed: Option<Limited<Incoming>>,
        idempotent: bool,
        bodiless: bool,
    ) -> Result<(response::Parts, UpBody, Guard), (StatusCode, String)> {
        route.target.seen.touch();
        // A request that may have reached the application can go again only when that is
        // harmless.
        let repeatable = replay.is_some() && (idempotent || bodiless);
        // Requests are counted per release only while traffic is split between releases.
        let started = route
            .target
            .pools
            .iter()
            .any(|p| p.stats.is_some())
            .then(Instant::now);
        let count = |pool: usize, status: StatusCode| {
            if let (Some(t), Some(stats)) = (started, &route.target.pools[pool].stats) {
                stats.record(status.as_u16(), t.elapsed());
            }
        };
        let mut last_pool = None;
        let mut rng = fastrand::Rng::new();
        let mut tried = [(usize::MAX, usize::MAX); MAX_PICKS];
        let mut picks = 0;
        let mut last_error = None;
        let mut attempts = 0;
        // A body that was not sent (connect failed): it goes to the next backend as is.
        let mut unsent: Option<OutBody> = None;
        'attempts: while attempts < self.limits.attempts && picks < MAX_PICKS {
            let Some(at) = pick(&route.target, &tried[..picks], &mut rng) else {
                break;
            };
            tried[picks] = at;
            picks += 1;
            let backend = &route.target.pools[at.0].backends[at.1];
            last_pool = Some(at.0);
            if !backend.traffic.begin() {
                continue; // withdrawn since the table was built: not an attempt
            }
            attempts += 1;
            let guard = Guard(backend.traffic.clone());
            // A stale idle connection is not the backend's failure: the request goes to the
            // same backend again on a fresh connection, when it was not written or is safe
            // to repeat.
            let mut fresh = false;
            let sent = loop {
                let body = match (unsent.take(), &replay, streamed.take()) {
                    (Some(body), _, _) => body,
                    (None, Some(bytes), _) => OutBody::Full(bytes.clone()),
                    (None, None, Some(s)) => OutBody::Stream(s),
                    (None, None, None) => break 'attempts, // a streamed body cannot be sent twice
                };
                let sent = self.coarse.within(
                    self.limits.response_timeout,
                    self.upstreams.send(
                        backend.addr,
                        outgoing,
                        body,
                        self.limits.connect_timeout,
                        fresh,
                    ),
                );
                match sent.await {
                    Some(Err(SendError::Stale(why, body))) => {
                        tracing::debug!(backend = %backend.addr, "ingress: stale connection: {why}");
                        match body {
                            Some(body) => unsent = Some(body),
                            None if repeatable => {}
                            None => break Some(Err(SendError::Failed(why))),
                        }
                        fresh = true;
                    }
                    other => break other,
                }
            };
            match sent.ok_or(()) {
                Ok(Ok((p, body))) => {
                    backend.health.success();
                    count(at.0, p.status);
                    return Ok((p, body, guard));
                }
                Ok(Err(SendError::NotSent(why, body))) => {
                    // Nothing reached the application: the same request goes elsewhere.
                    drop(guard);
                    self.failed(backend, route);
                    last_error =
                        Some((StatusCode::BAD_GATEWAY, format!("{}: {why}", backend.addr)));
                    unsent = Some(body);
                }
                Ok(Err(SendError::Failed(why) | SendError::Stale(why, _))) => {
                    drop(guard);
                    self.failed(backend, route);
                    last_error =
                        Some((StatusCode::BAD_GATEWAY, format!("{}: {why}", backend.addr)));
                    if !repeatable {
                        break;
                    }
                }
                Err(_) => {
                    drop(guard);
                    self.failed(backend, route);
                    last_error = Some((
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "{} sent no response within {:?}",
                            backend.addr, self.limits.response_timeout
                        ),
                    ));
                    break;
                }
            }
        }
        let what = describe_target(route);
        if let (Some(pool), Some((code, _))) = (last_pool, &last_error) {
            count(pool, *code);
        }
        Err(match last_error {
            Some((code, why)) => (code, format!("{what}: {why}")),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{what} has no ready instance"),
            ),
        })
    }

    fn failed(&self, backend: &crate::routes::Backend, route: &Route) {
        if backend.health.failure() {
            tracing::warn!(backend = %backend.addr, service = %route.target.service.service,
                "ingress: ejected after repeated failures");
        }
    }
}

/// Methods whose repetition has the effect of one request (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn describe_target(route: &Route) -> String {
    let s = &route.target.service;
    format!(
        "service {} (stack {}, env {}) port {}",
        s.service, s.stack, s.env, route.target.port
    )
}

/// The host a request is for: an HTTP/2 `:authority` (absolute URI), else the Host header.
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    req.headers().get(header::HOST).cloned()
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

pub(crate) const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` is one of [`HOP_BY_HOP`] (case-insensitive, for header names as sent).
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str()))
}

/// Removes hop-by-hop headers (and those the Connection header names); an upgrade keeps
/// `Connection: upgrade` and `Upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in named.iter().chain(HOP_BY_HOP.iter()) {
        if upgrade && (h == header::CONNECTION || h == header::UPGRADE) {
            continue;
        }
        headers.remove(h);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// A client connection.
pub struct Client {
    pub addr: SocketAddr,
    /// Its IP as a header value, made once per connection.
    pub ip: HeaderValue,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            ip: HeaderValue::from_str(&addr.ip().to_string()).expect("an IP is a header value"),
        }
    }
}

/// The headers sent to the backend: the client's without hop-by-hop ones, Host kept (set
/// from `:authority` for HTTP/2), X-Forwarded-For appended, -Proto and -Host set.
fn forward_headers(
    mut h: HeaderMap,
    host: HeaderValue,
    client: &Client,
    upgrade: bool,
) -> HeaderMap {
    strip_hop_by_hop(&mut h, upgrade);
    h.insert(header::HOST, host.clone());
    h.insert(HeaderName::from_static("x-forwarded-host"), host);
    let xff = HeaderName::from_static("x-forwarded-for");
    let value = match h.get(&xff).and_then(|v| v.to_str().ok()) {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", client.addr.ip())).ok(),
        None => Some(client.ip.clone()),
    };
    if let Some(v) = value {
        h.insert(xff, v);
    }
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    h
}

/// Copies bytes both ways once client and backend both switched protocols: first what the
/// backend sent right after its 101, then whatever either side sends.
async fn tunnel(client: hyper::upgrade::OnUpgrade, backend: Conn, guard: Guard) {
    let Ok(c) = client.await else {
        return;
    };
    let mut c = TokioIo::new(c);
    let (mut b, early) = backend.into_parts();
    if !early.is_empty() && c.write_all(&early).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
    drop(guard);
}

/// Counts a request (or a tunnelled connection) as in flight on its backend until dropped.
pub(crate) struct Guard(pub(crate) Arc<Traffic>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A backend's response body, in flight until it ends or the client goes away.
pub struct Tracked {
    inner: UpBody,
    _guard: Guard,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body of an answer of the ingress itself.
pub(crate) fn error_text(status: StatusCode, why: &str) -> String {
    format!(
        "skiff ingress: {} {}: {why}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

/// An answer of the ingress itself.
pub fn error(status: StatusCode, why: String) -> Response<ProxyBody> {
    let body = error_text(status, &why);
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn forwarded_headers_append_the_client_and_name_the_original_host() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.9"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        let client = Client::new("127.0.0.7:5000".parse().unwrap());
        let out = forward_headers(
            h.clone(),
            HeaderValue::from_static("web.shop.default.localhost:7780"),
            &client,
            true,
        );
        assert_eq!(out["x-forwarded-for"], "10.0.0.9, 127.0.0.7");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-host"], "web.shop.default.localhost:7780");
        assert_eq!(out[header::HOST], "web.shop.default.localhost:7780");
        assert_eq!(out[header::UPGRADE], "websocket");
        assert_eq!(out[header::CONNECTION], "upgrade");
        let plain = forward_headers(h, HeaderValue::from_static("h"), &client, false);
        assert!(!plain.contains_key(header::UPGRADE));
    }
}
