//! TCP listeners fed by the catalog, of two kinds:
//! - service ports: a compose `ports: "8080:80"` makes skiff listen on 8080 (the node
//!   address) and balance TCP connections over the ready instances' port 80, as Swarm's
//!   routing mesh does, so replicas > 1 just work;
//! - stable addresses: every service with a TCP port has an address of its own in
//!   127.77.0.0/16, the same on every node; each node listens on it at the declared target
//!   ports (`db` at 127.77.0.3:5432) and balances over the ready instances wherever they run,
//!   as kube-proxy's cluster IPs do. A dependent keeps one address however often its
//!   dependency restarts or moves.
//!
//! Listeners follow the catalog: opened when a service has the port, closed when none does
//! any more.
//!
//! A connection picks a backend as HTTP requests do (power of two choices, passive
//! ejection), tries another one when the connect fails, and is counted on the backend's
//! `Traffic` for its whole life, so stopping an instance waits for its connections (up to
//! the drain bound).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use skiff_catalog::{Catalog, Snapshot};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::accept_backing_off;
use crate::balance::pick;
use crate::proxy::Guard;
use crate::routes::{Counters, Target, service_ports, stable_addresses};

type Ports = Arc<BTreeMap<SocketAddr, Arc<Target>>>;

/// Which listeners to keep.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Listen {
    /// Published service ports, on this address.
    ServicePorts(IpAddr),
    /// Services' stable addresses.
    StableAddresses,
}

impl Listen {
    fn table(self, snap: &Snapshot, counters: &impl Counters) -> BTreeMap<SocketAddr, Arc<Target>> {
        match self {
            Listen::ServicePorts(ip) => service_ports(snap, counters)
                .into_iter()
                .map(|(port, t)| (SocketAddr::new(ip, port), t))
                .collect(),
            Listen::StableAddresses => stable_addresses(snap, counters),
        }
    }
}

/// Listener tasks by address, aborted when dropped.
#[derive(Default)]
struct Listeners(HashMap<SocketAddr, tokio::task::JoinHandle<()>>);

impl Drop for Listeners {
    fn drop(&mut self) {
        for (_, t) in self.0.drain() {
            t.abort();
        }
    }
}

/// Keeps the listeners `listen` asks for until the task is aborted.
pub(crate) async fn run(
    listen: Listen,
    catalog: Arc<Catalog>,
    counters: Arc<impl Counters + Send + Sync + 'static>,
    connect_timeout: Duration,
) {
    let mut changes = catalog.subscribe();
    let (tx, rx) = watch::channel::<Ports>(Arc::default());
    let mut listeners = Listeners::default();
    let mut refused: HashSet<SocketAddr> = HashSet::new();
    loop {
        let ports = listen.table(&catalog.snapshot(), counters.as_ref());
        let wanted: HashSet<SocketAddr> = ports.keys().copied().collect();
        tx.send_replace(Arc::new(ports));
        listeners.0.retain(|port, task| {
            let keep = wanted.contains(port);
            if !keep {
                task.abort();
            }
            keep
        });
        refused.retain(|p| wanted.contains(p));
        for addr in wanted {
            if listeners.0.contains_key(&addr) {
                continue;
            }
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    refused.remove(&addr);
                    tracing::debug!("{addr} listening");
                    let rx = rx.clone();
                    listeners
                        .0
                        .insert(addr, tokio::spawn(serve(l, addr, rx, connect_timeout)));
                }
                // Taken by something else: said once, tried again on the next change.
                Err(e) => {
                    if refused.insert(addr) {
                        tracing::warn!("listening on {addr}: {e}");
                    }
                }
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn serve(l: TcpListener, addr: SocketAddr, ports: watch::Receiver<Ports>, timeout: Duration) {
    let what = addr.to_string();
    loop {
        let (client, _) = accept_backing_off(&l, &what).await;
        let target = ports.borrow().get(&addr).cloned();
        if let Some(target) = target {
            tokio::spawn(forward(client, target, timeout));
        }
    }
}

/// Connects to a backend (another one when the connect fails) and copies both ways.
async fn forward(mut client: TcpStream, target: Arc<Target>, timeout: Duration) {
    let _ = client.set_nodelay(true);
    target.seen.touch();
    let mut rng = fastrand::Rng::new();
    let mut tried = Vec::new();
    while tried.len() < 8 {
        let Some(at) = pick(&target, &tried, &mut rng) else {
            return;
        };
        tried.push(at);
        let backend = &target.pools[at.0].backends[at.1];
        if !backend.traffic.begin() {
            continue;
        }
        let _in_flight = Guard(backend.traffic.clone());
        match tokio::time::timeout(timeout, TcpStream::connect(backend.addr)).await {
            Ok(Ok(mut b)) => {
                backend.health.success();
                let _ = b.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut b).await;
                return;
            }
            _ => {
                backend.health.failure();
            }
        }
    }
}
