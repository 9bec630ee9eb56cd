//! The ingress: an HTTP/1.1 and HTTP/2 reverse proxy (hyper 1 + hyper-util) in front of every
//! ready instance of a service with a port.
//!
//! ```text
//!   Catalog ──watch──▶ table task ──RouteTable (Arc, swapped whole)──▶ connections
//!                        │ rebuilt on every catalog change                 │ per request:
//!                        └ passive health kept per backend                 ▼ route, pick, forward
//! ```
//!
//! **Invariants:**
//! - The table is replaced, never edited: a request sees one consistent table; no reload, no
//!   connection is dropped when instances come and go.
//! - Every request is counted on its backend's [`skiff_catalog::Traffic`] from before it is
//!   sent until its response body ends; a backend withdrawn from the catalog refuses new
//!   requests at once (even through an older table), so the agent can drain, then signal.

pub mod balance;
pub mod coarse;
mod h1;
pub mod proxy;
pub mod routes;
mod tcp;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use skiff_catalog::{Catalog, ReleaseStats, ServiceKey, Traffic};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use proxy::Limits;
use proxy::Proxy;
use routes::{Counters, RouteTable};
pub use skiff_catalog::{BackendInfo, RouteInfo};

use crate::balance::Health;

/// How the ingress is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// Domain of the default hosts `<service>.<stack>.<env>.<domain>`.
    pub domain: String,
    pub limits: Limits,
    /// Worker threads, each with its own single-threaded runtime, listener (SO_REUSEPORT:
    /// the kernel spreads connections) and backend connection pool, as nginx's workers: a
    /// request and its backend exchange never cross threads.
    pub workers: usize,
    /// Where service ports (compose `ports: "8080:80"`) listen: the node address; `None`
    /// opens none.
    pub service_ports: Option<std::net::IpAddr>,
}

/// A running ingress; dropping it stops accepting connections.
pub struct Ingress {
    pub addr: SocketAddr,
    table: watch::Receiver<Arc<RouteTable>>,
    refresh: tokio::task::JoinHandle<()>,
    service_ports: Option<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        self.refresh.abort();
        if let Some(t) = &self.service_ports {
            t.abort();
        }
        self.stop.send_replace(true);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A listening socket on `addr` that more sockets may share (SO_REUSEPORT).
fn shared_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    listener.into_std()
}

impl Ingress {
    /// Listens on `addr` (port 0 picks a free one). Must be called inside a tokio runtime.
    pub async fn start(
        addr: SocketAddr,
        cfg: Config,
        catalog: Arc<Catalog>,
    ) -> std::io::Result<Ingress> {
        // The first socket fixes the port (port 0 picks one); the others share it.
        let first_listener = shared_listener(addr)?;
        let addr = first_listener.local_addr()?;
        let mut listeners = vec![first_listener];
        for _ in 1..cfg.workers.max(1) {
            listeners.push(shared_listener(addr)?);
        }
        let counters = Arc::new(Registry {
            catalog: catalog.clone(),
            health: Mutex::new(HashMap::new()),
        });
        let first = RouteTable::build(&catalog.snapshot(), &cfg.domain, counters.as_ref());
        let (tx, table) = watch::channel(Arc::new(first));
        let service_ports = cfg.service_ports.map(|ip| {
            tokio::spawn(tcp::run(
                tcp::Listen::ServicePorts(ip),
                catalog.clone(),
                counters.clone(),
                cfg.limits.connect_timeout,
            ))
        });
        let refresh = tokio::spawn(refresh(catalog, cfg.domain.clone(), counters, tx));
        let (stop, stopped) = watch::channel(false);
        let mut workers = Vec::new();
        for (n, listener) in listeners.into_iter().enumerate() {
            let (table, limits, mut stopped) = (table.clone(), cfg.limits.clone(), stopped.clone());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.push(
                std::thread::Builder::new()
                    .name(format!("skiff-ingress-{n}"))
                    .spawn(move || {
                        rt.block_on(async move {
                            listener
                                .set_nonblocking(true)
                                .expect("nonblocking listener");
                            let listener =
                                TcpListener::from_std(listener).expect("a tokio listener");
                            let coarse = coarse::Coarse::start();
                            let proxy = Arc::new(Proxy::new(table, limits, coarse.clone()));
                            tokio::select! {
                                () = accept(listener, proxy, coarse) => {}
                                _ = stopped.wait_for(|s| *s) => {}
                            }
                        });
                    })?,
            );
        }
        Ok(Ingress {
            addr,
            table,
            refresh,
            service_ports,
            stop,
            workers,
        })
    }
}

impl Ingress {
    /// A handle on the live route table, for showing it.
    pub fn routes(&self) -> Routes {
        Routes(self.table.clone())
    }
}

/// The ingress's live route table, read-only: what `skiff routes` shows.
#[derive(Clone)]
pub struct Routes(watch::Receiver<Arc<RouteTable>>);

impl Routes {
    /// Every route with its backends as they are now.
    pub fn list(&self) -> Vec<RouteInfo> {
        self.0.borrow().list()
    }

    /// The route a request for `host` and `path` takes, as the proxy picks it.
    pub fn find(&self, host: &str, path: &str) -> Option<RouteInfo> {
        self.0.borrow().explain(host, path)
    }
}

/// Rebuilds the table on every catalog change.
async fn refresh(
    catalog: Arc<Catalog>,
    domain: String,
    counters: Arc<Registry>,
    tx: watch::Sender<Arc<RouteTable>>,
) {
    let mut changes = catalog.subscribe();
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        let snap = catalog.snapshot();
        let table = RouteTable::build(&snap, &domain, counters.as_ref());
        tx.send_replace(Arc::new(table));
        counters.forget_unused();
    }
}

async fn accept(listener: TcpListener, proxy: Arc<Proxy>, timer: coarse::Coarse) {
    let mut server = auto::Builder::new(TokioExecutor::new());
    server
        .http1()
        .timer(timer)
        .header_read_timeout(h1::HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    server.http2().max_header_list_size(64 * 1024);
    let server = Arc::new(server);
    loop {
        let (stream, client) = accept_backing_off(&listener, "ingress").await;
        let _ = stream.set_nodelay(true);
        tokio::spawn(h1::serve(stream, client, proxy.clone(), server.clone()));
    }
}

/// The next connection; on an error (out of file descriptors and the like) it says so and
/// backs off instead of spinning.
pub(crate) async fn accept_backing_off(
    listener: &TcpListener,
    what: &str,
) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!("{what}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Listens on every service's stable address (127.77.0.0/16) at its TCP target ports and
/// balances connections over its ready instances, until the returned task is aborted.
/// Every node runs one, fed by its copy of the catalog.
pub fn serve_stable_addresses(
    catalog: Arc<Catalog>,
    connect_timeout: Duration,
) -> tokio::task::JoinHandle<()> {
    let counters = Arc::new(Registry {
        catalog: catalog.clone(),
        health: Mutex::new(HashMap::new()),
    });
    tokio::spawn(tcp::run(
        tcp::Listen::StableAddresses,
        catalog,
        counters,
        connect_timeout,
    ))
}

/// Counters for table builds: traffic from the catalog, passive health kept here.
struct Registry {
    catalog: Arc<Catalog>,
    health: Mutex<HashMap<(ServiceKey, u32, String), Arc<Health>>>,
}

impl Counters for Registry {
    fn traffic(&self, service: &ServiceKey, index: u32) -> Option<Arc<Traffic>> {
        self.catalog.traffic(service, index)
    }

    fn health(&self, service: &ServiceKey, index: u32, port: &str) -> Arc<Health> {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((service.clone(), index, port.to_string()))
            .or_default()
            .clone()
    }

    fn stats(&self, service: &ServiceKey, release: u64) -> Arc<ReleaseStats> {
        self.catalog.release_stats(service, release)
    }

    fn seen(&self, env: &str) -> Arc<skiff_catalog::Seen> {
        self.catalog.seen(env)
    }
}

impl Registry {
    /// Drops the health of backends no table has any more.
    fn forget_unused(&self) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.retain(|_, h| Arc::strong_count(h) > 1);
    }
}
