//! The DNS listeners: UDP on a thread of its own (the fast path of [`crate::wire`]), TCP
//! through hickory-server with a handler that answers from the same catalog.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Metadata, ResponseCode};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use skiff_catalog::Catalog;

use crate::lookup::{Zone, lookup};
use crate::wire::{Prepared, respond};

/// A running DNS server; dropping it stops it.
pub struct DnsServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    udp: Option<std::thread::JoinHandle<()>>,
    tcp: Option<tokio::task::JoinHandle<()>>,
}

impl DnsServer {
    /// Listens on `addr` (UDP and TCP, one port; port 0 picks a free one). Must be called
    /// inside a tokio runtime (TCP runs on it).
    pub async fn start(
        addr: SocketAddr,
        zone: Zone,
        catalog: Arc<Catalog>,
    ) -> std::io::Result<DnsServer> {
        // Port 0: the UDP port must also be free for TCP; try a few.
        let mut last_err = None;
        for _ in 0..20 {
            let udp = UdpSocket::bind(addr)?;
            let bound = udp.local_addr()?;
            match tokio::net::TcpListener::bind(bound).await {
                Ok(tcp) => return Ok(Self::run(bound, udp, tcp, zone, catalog)),
                Err(e) if addr.port() == 0 => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("no free DNS port")))
    }

    fn run(
        addr: SocketAddr,
        udp: UdpSocket,
        tcp: tokio::net::TcpListener,
        zone: Zone,
        catalog: Arc<Catalog>,
    ) -> DnsServer {
        let stop = Arc::new(AtomicBool::new(false));
        let udp_thread = {
            let (stop, zone, catalog) = (stop.clone(), zone.clone(), catalog.clone());
            std::thread::Builder::new()
                .name("skiff-dns-udp".into())
                .spawn(move || serve_udp(udp, zone, catalog, stop))
                .expect("spawning the DNS thread")
        };
        let mut server = hickory_server::Server::new(TcpHandler { zone, catalog });
        server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
        let tcp_task = tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        DnsServer {
            addr,
            stop,
            udp: Some(udp_thread),
            tcp: Some(tcp_task),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.tcp.take() {
            t.abort();
        }
        if let Some(t) = self.udp.take() {
            let _ = t.join();
        }
    }
}

/// The UDP loop: blocking receive, answer, send. The prepared table is rebuilt when the
/// catalog's index moved (one atomic check per query).
fn serve_udp(sock: UdpSocket, zone: Zone, catalog: Arc<Catalog>, stop: Arc<AtomicBool>) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let mut changes = catalog.subscribe();
    let mut rng = fastrand::Rng::new();
    let mut snap = catalog.snapshot();
    let mut prepared = Prepared::build(&snap, &zone, &mut rng);
    let mut buf = [0u8; 4096];
    let mut out = Vec::with_capacity(1500);
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!("dns: receive: {e}");
                continue;
            }
        };
        if changes.has_changed().unwrap_or(false) {
            changes.mark_unchanged();
            snap = catalog.snapshot();
            prepared = Prepared::build(&snap, &zone, &mut rng);
        }
        if respond(&buf[..n], &prepared, &snap, &zone, rng.usize(..), &mut out)
            && let Err(e) = sock.send_to(&out, from)
        {
            tracing::debug!("dns: send to {from}: {e}");
        }
    }
}

/// Answers TCP queries from the live catalog.
struct TcpHandler {
    zone: Zone,
    catalog: Arc<Catalog>,
}

#[async_trait::async_trait]
impl RequestHandler for TcpHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let edns = request.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            e
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let snap = self.catalog.snapshot();
        let answer = match request.request_info() {
            Ok(info) => {
                let mut a = lookup(
                    &snap,
                    &self.zone,
                    &info.query.name().into(),
                    info.query.query_type(),
                );
                fastrand::shuffle(&mut a.answers);
                a
            }
            Err(_) => crate::lookup::Answer::new(ResponseCode::FormErr),
        };
        metadata.authoritative = answer.rcode != ResponseCode::Refused;
        metadata.response_code = answer.rcode;
        let response = builder.build(
            metadata,
            answer.answers.iter(),
            std::iter::empty(),
            answer.authorities.iter(),
            answer.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!("dns: tcp send: {e}");
                failed(&request.metadata)
            }
        }
    }
}

fn failed(request: &Metadata) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(request);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: Default::default(),
    })
}
