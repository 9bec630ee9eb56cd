//! Connections to backends, one set per worker thread: HTTP/1.1 connections made with
//! `hyper::client::conn`, kept idle per backend address and reused last-in first-out.
//!
//! A connection goes back to the idle set only when its response body was read to the end
//! (HTTP/1.1 has one exchange at a time); a body dropped early closes it. A request that
//! could not be written (connect failed, or an idle connection the backend had closed) comes
//! back to the caller whole, so it can go to another backend even with a streamed body.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::proxy::UpstreamBody;

/// Idle connections kept per backend at most.
const MAX_IDLE: usize = 256;

#[derive(Default)]
pub struct Upstreams {
    idle: Mutex<HashMap<SocketAddr, Vec<SendRequest<UpstreamBody>>>>,
}

/// Why a request got no response.
pub enum SendError {
    /// Nothing was sent: the request comes back.
    NotSent(String, Box<Request<UpstreamBody>>),
    /// Sent (in part or whole), then the connection failed before a response.
    Failed(hyper::Error),
}

/// A connection lent for one exchange; given back by [`Lease::release`].
pub struct Lease {
    upstreams: Arc<Upstreams>,
    addr: SocketAddr,
    sender: SendRequest<UpstreamBody>,
}

impl Lease {
    /// The exchange completed: the connection may serve the next request.
    pub fn release(self) {
        let mut idle = self
            .upstreams
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(self.addr).or_default();
        if list.len() < MAX_IDLE {
            list.push(self.sender);
        }
    }
}

impl Upstreams {
    fn take_idle(&self, addr: SocketAddr) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    /// Sends `req` to `addr` on an idle connection, else a new one.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<UpstreamBody>,
        connect_timeout: Duration,
    ) -> Result<(hyper::Response<Incoming>, Lease), SendError> {
        while let Some(mut sender) = self.take_idle(addr) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(addr, sender))),
                Err(mut e) => match e.take_message() {
                    // Closed by the backend while idle: try the next one.
                    Some(back) => req = back,
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
        let stream =
            match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return Err(SendError::NotSent(format!("connect: {e}"), Box::new(req)));
                }
                Err(_) => {
                    return Err(SendError::NotSent(
                        format!("connect: no answer within {connect_timeout:?}"),
                        Box::new(req),
                    ));
                }
            };
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = match http1::Builder::new().handshake(TokioIo::new(stream)).await {
            Ok(x) => x,
            Err(e) => return Err(SendError::NotSent(format!("handshake: {e}"), Box::new(req))),
        };
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, self.lease(addr, sender))),
            Err(mut e) => match e.take_message() {
                Some(back) => Err(SendError::NotSent(
                    format!("new connection closed: {}", e.error()),
                    Box::new(back),
                )),
                None => Err(SendError::Failed(e.into_error())),
            },
        }
    }

    fn lease(self: &Arc<Self>, addr: SocketAddr, sender: SendRequest<UpstreamBody>) -> Lease {
        Lease {
            upstreams: self.clone(),
            addr,
            sender,
        }
    }

    /// Drops idle connections their backend closed (an instance that stopped, a keep-alive
    /// timeout), and the entries of backends left without any.
    pub fn prune_closed(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain(|s| !s.is_closed());
            !list.is_empty()
        });
    }
}
