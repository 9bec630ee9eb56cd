//! The agent's side of the agent ↔ server protocol (`skiff_client`): its node's identity and
//! registration, the heartbeat, the long poll of its allocations, and the reporter that sends
//! instance states and events to the server in the order they happened.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_client::{Change, Client, ClientError, NodeRegistration, Report};
use skiff_model::{Allocation, Driver, InstanceId, NodeResources};
use tokio::sync::{mpsc, oneshot};

/// How often the agent tells the server it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long one allocations long poll waits at most.
const POLL_WAIT: Duration = Duration::from_secs(30);

/// The node's id, kept in `<data>/node-id` so a restarted agent is the same node.
pub fn node_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Ok(_) | Err(_) => {
            std::fs::create_dir_all(data_dir)?;
            let id = format!("{:016x}", fastrand::u64(..));
            let tmp = data_dir.join("node-id.tmp");
            std::fs::write(&tmp, format!("{id}\n"))?;
            std::fs::rename(&tmp, &path)?;
            Ok(id)
        }
    }
}

/// What this machine offers: its CPUs, its memory, the host ports instances get.
pub fn resources() -> NodeResources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    NodeResources {
        cpu_millis: cpus * 1000,
        memory_bytes: memory,
        ports: ephemeral_ports(),
    }
}

/// Instance ports come from the kernel's ephemeral range (bound to port 0).
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// The registration an agent sends.
pub fn registration(
    name: &str,
    address: std::net::IpAddr,
    agent_port: u16,
    labels: &BTreeMap<String, String>,
    drivers: Vec<Driver>,
    proxies: bool,
) -> NodeRegistration {
    NodeRegistration {
        name: name.to_string(),
        address: address.to_string(),
        agent_port,
        resources: resources(),
        labels: labels.clone(),
        drivers,
        proxies,
    }
}

/// Registers until the server takes it (it may still be starting); a refusal (a name taken,
/// a bad address) is final.
pub async fn register(
    client: &Client,
    id: &str,
    reg: &NodeRegistration,
) -> Result<(), ClientError> {
    let mut delay = Duration::from_millis(50);
    loop {
        match client.register(id, reg).await {
            Ok(_) => return Ok(()),
            Err(e) if e.status().is_some_and(|s| s.is_client_error()) => return Err(e),
            Err(e) => {
                tracing::warn!("registering with {}: {e}; retrying", client.base());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Beats until the task is dropped; registers again when the server forgot the node.
pub async fn heartbeat(client: Client, id: String, reg: NodeRegistration) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match client.heartbeat(&id).await {
            Ok(_) => {}
            Err(e) if e.status() == Some(hyper::StatusCode::NOT_FOUND) => {
                tracing::warn!("the server does not know this node; registering again");
                if let Err(e) = register(&client, &id, &reg).await {
                    tracing::error!("registering again: {e}");
                }
            }
            Err(e) => tracing::warn!("heartbeat: {e}"),
        }
    }
}

/// Sends what this node's proxies counted per service and release (its ingress's requests to
/// a canary) and when they last passed a request to each environment (the idle reaper's
/// clock), every heartbeat while it changes: the server judges canaries by every ingress.
pub async fn figures(client: Client, id: String, catalog: Arc<skiff_catalog::Catalog>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (Vec::new(), std::collections::BTreeMap::new());
    loop {
        tick.tick().await;
        let now = (
            catalog.all_figures(),
            catalog.last_requests(crate::now_ms()),
        );
        if now == last {
            continue;
        }
        let body: Vec<skiff_client::NodeFigures> = now
            .0
            .iter()
            .map(|(service, release, figures)| skiff_client::NodeFigures {
                service: service.clone(),
                release: *release,
                figures: figures.clone(),
            })
            .collect();
        match client.node_figures(&id, &body, &now.1).await {
            Ok(()) => last = now,
            Err(e) => tracing::warn!("sending request figures: {e}"),
        }
    }
}

/// The allocations the server gave this node, by instance.
pub type Desired = Arc<HashMap<InstanceId, Allocation>>;

/// Follows the node's allocations by long poll; calls `changed` with each new set, and
/// `reconnected` when the server answers again after failing (it may have restarted and
/// forgotten what it knew of the node's instances).
pub async fn follow(client: Client, id: String, changed: impl Fn(Desired), reconnected: impl Fn()) {
    let mut index = None;
    let mut failed = false;
    loop {
        match client.allocations(&id, index.unwrap_or(0), POLL_WAIT).await {
            Ok(a) => {
                if std::mem::take(&mut failed) {
                    reconnected();
                }
                if index != Some(a.index) {
                    index = Some(a.index);
                    let map = a
                        .allocations
                        .into_iter()
                        .map(|a| (a.instance.clone(), a))
                        .collect();
                    changed(Arc::new(map));
                }
            }
            Err(e) => {
                tracing::warn!("allocations: {e}");
                failed = true;
                // The next answer comes at once (and may be a restarted server's).
                index = None;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

enum Outgoing {
    Change(Change),
    /// Every instance the node runs: the server forgets the node's other records.
    Full(Vec<Change>),
    /// Answered once everything queued before it reached the server, with the instances
    /// the server took out of traffic that still have requests in flight.
    Flush(oneshot::Sender<HashSet<InstanceId>>),
}

/// The queue of changes to report. Cloned freely; one task sends.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::UnboundedSender<Outgoing>,
    rx: Arc<Mutex<Option<mpsc::UnboundedReceiver<Outgoing>>>>,
}

impl Reporter {
    pub fn new() -> Reporter {
        let (tx, rx) = mpsc::unbounded_channel();
        Reporter {
            tx,
            rx: Arc::new(Mutex::new(Some(rx))),
        }
    }

    pub fn send(&self, change: Change) {
        let _ = self.tx.send(Outgoing::Change(change));
    }

    /// Queues a full report: every instance the node runs (after adoption, and whenever
    /// the server may have lost what it knew: a restart, a partition).
    pub fn send_full(&self, instances: Vec<Change>) {
        let _ = self.tx.send(Outgoing::Full(instances));
    }

    /// Waits until every change queued so far reached the server (or the sender gave up);
    /// returns the instances withdrawn by the batch that still have requests in flight.
    pub async fn flush(&self) -> HashSet<InstanceId> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Outgoing::Flush(tx)).is_ok() {
            return rx.await.unwrap_or_default();
        }
        HashSet::new()
    }

    /// Sends what is queued, in batches, in order, until `closing` is set and the queue is
    /// empty. A batch that fails is sent again (the server applies a batch whole or not at
    /// all); while the server is unreachable changes keep queueing.
    pub async fn run(
        &self,
        client: Client,
        node: String,
        closing: tokio::sync::watch::Receiver<bool>,
    ) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let mut closing = closing;
        let mut carry = None;
        loop {
            let first = match carry.take() {
                Some(m) => Some(m),
                None => tokio::select! {
                    m = rx.recv() => m,
                    _ = closing.wait_for(|c| *c) => None,
                },
            };
            let first = match first {
                Some(m) => Some(m),
                None => {
                    // Whatever is queued still goes out, once.
                    rx.close();
                    rx.recv().await
                }
            };
            let Some(first) = first else { return };
            let mut full = false;
            let mut changes = Vec::new();
            let mut flushes = Vec::new();
            match first {
                Outgoing::Full(all) => {
                    full = true;
                    changes = all;
                }
                Outgoing::Change(c) => changes.push(c),
                Outgoing::Flush(f) => flushes.push(f),
            }
            // A full report goes alone; changes after it wait for the next batch.
            while !full && changes.len() < 4096 {
                match rx.try_recv() {
                    Ok(Outgoing::Change(c)) => changes.push(c),
                    Ok(Outgoing::Flush(f)) => flushes.push(f),
                    Ok(m @ Outgoing::Full(_)) => {
                        carry = Some(m);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let mut busy = HashSet::new();
            if full || !changes.is_empty() {
                let report = Report { full, changes };
                let mut delay = Duration::from_millis(20);
                loop {
                    match client.report(&node, &report).await {
                        Ok(answer) => {
                            busy.extend(answer.busy);
                            break;
                        }
                        Err(e) if *closing.borrow() => {
                            tracing::warn!("report lost at shutdown: {e}");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!("report: {e}; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(1));
                        }
                    }
                }
            }
            for f in flushes {
                let _ = f.send(busy.clone());
            }
        }
    }
}

impl Default for Reporter {
    fn default() -> Self {
        Self::new()
    }
}
