//! Service ports: a compose `ports: "8080:80"` makes skiff listen on 8080 (the node address)
//! and balance TCP connections over the ready instances' port 80, as Swarm's routing mesh
//! does, so replicas > 1 just work. Listeners follow the catalog: opened when a service
//! publishes a port, closed when none does any more.
//!
//! A connection picks a backend as HTTP requests do (power of two choices, passive
//! ejection), tries another one when the connect fails, and is counted on the backend's
//! `Traffic` for its whole life, so stopping an instance waits for its connections (up to
//! the drain bound).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use skiff_catalog::Catalog;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::accept_backing_off;
use crate::balance::pick;
use crate::proxy::Guard;
use crate::routes::{Counters, Target, service_ports};

type Ports = Arc<BTreeMap<u16, Arc<Target>>>;

/// Listener tasks by port, aborted when dropped.
#[derive(Default)]
struct Listeners(HashMap<u16, tokio::task::JoinHandle<()>>);

impl Drop for Listeners {
    fn drop(&mut self) {
        for (_, t) in self.0.drain() {
            t.abort();
        }
    }
}

/// Keeps one listener per published port on `ip` until the task is aborted.
pub(crate) async fn run(
    ip: IpAddr,
    catalog: Arc<Catalog>,
    counters: Arc<impl Counters + Send + Sync + 'static>,
    connect_timeout: Duration,
) {
    let mut changes = catalog.subscribe();
    let (tx, rx) = watch::channel::<Ports>(Arc::default());
    let mut listeners = Listeners::default();
    let mut refused: HashSet<u16> = HashSet::new();
    loop {
        let ports = service_ports(&catalog.snapshot(), counters.as_ref());
        let wanted: HashSet<u16> = ports.keys().copied().collect();
        tx.send_replace(Arc::new(ports));
        listeners.0.retain(|port, task| {
            let keep = wanted.contains(port);
            if !keep {
                task.abort();
            }
            keep
        });
        refused.retain(|p| wanted.contains(p));
        for port in wanted {
            if listeners.0.contains_key(&port) {
                continue;
            }
            match TcpListener::bind(SocketAddr::new(ip, port)).await {
                Ok(l) => {
                    refused.remove(&port);
                    tracing::info!("service port {ip}:{port} listening");
                    let rx = rx.clone();
                    listeners
                        .0
                        .insert(port, tokio::spawn(serve(l, port, rx, connect_timeout)));
                }
                // Taken by something else: said once, tried again on the next change.
                Err(e) => {
                    if refused.insert(port) {
                        tracing::warn!("service port {ip}:{port}: {e}");
                    }
                }
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn serve(l: TcpListener, port: u16, ports: watch::Receiver<Ports>, timeout: Duration) {
    let what = format!("service port {port}");
    loop {
        let (client, _) = accept_backing_off(&l, &what).await;
        let target = ports.borrow().get(&port).cloned();
        if let Some(target) = target {
            tokio::spawn(forward(client, target, timeout));
        }
    }
}

/// Connects to a backend (another one when the connect fails) and copies both ways.
async fn forward(mut client: TcpStream, target: Arc<Target>, timeout: Duration) {
    let _ = client.set_nodelay(true);
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
