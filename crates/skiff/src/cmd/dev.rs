//! `skiff dev`: the whole platform in one foreground process — API, store, agent — on
//! loopback. Ctrl-C or SIGTERM stops every instance it started and exits; `kill -9` leaves
//! them running for the next `skiff dev` to adopt.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use skiff_agent::{Agent, Config};
use skiff_api::ApiState;
use skiff_driver_process::ShimCommand;
use skiff_store::{RedbStore, Store};

#[derive(clap::Args)]
pub struct Args {
    /// API listen address (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7700", env = "SKIFF_API_ADDR")]
    api: SocketAddr,
    /// State directory (default: $XDG_DATA_HOME/skiff, or ~/.local/share/skiff).
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// DNS listen address, UDP and TCP (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7753", env = "SKIFF_DNS_ADDR")]
    dns: SocketAddr,
    /// Domain of the DNS names `<service>.<stack>.<env>.<domain>`.
    #[arg(long, default_value = "skiff", env = "SKIFF_DOMAIN")]
    domain: String,
    /// TTL of DNS answers, in seconds (0 or 1: answers follow the live catalog).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1))]
    dns_ttl: u32,
    /// Ingress (HTTP reverse proxy) listen address (port 0 picks a free port; printed).
    #[arg(long, default_value = "127.0.0.1:7780", env = "SKIFF_INGRESS_ADDR")]
    ingress: SocketAddr,
    /// Domain of the ingress hosts `<service>.<stack>.<env>.<domain>` (`*.localhost`
    /// resolves to loopback in browsers and curl).
    #[arg(long, default_value = "localhost", env = "SKIFF_INGRESS_DOMAIN")]
    ingress_domain: String,
    /// Ingress worker threads (each a single-threaded event loop, as nginx workers).
    #[arg(long, default_value_t = 1, env = "SKIFF_INGRESS_WORKERS",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    ingress_workers: u16,
}

pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("skiff");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/share/skiff")
}

fn random_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the cluster id")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(
        &data_dir.join("state.redb"),
        &random_id()?,
    )?);
    let exe = std::env::current_exe().context("locating the skiff binary")?;
    // Workloads find programs built next to skiff (skiff-demo) first.
    let mut base_env = BTreeMap::new();
    if let Some(dir) = exe.parent() {
        let path = std::env::var("PATH").unwrap_or_default();
        base_env.insert("PATH".to_string(), format!("{}:{path}", dir.display()));
    }
    // One subtree per cluster: two `skiff dev` with different data dirs never share groups.
    let cgroups = skiff_cgroup::Cgroups::detect(&format!("skiff/{}", store.cluster_id()?))
        .map_err(|e| e.to_string());
    match &cgroups {
        Ok(cg) => println!(
            "skiff dev: cgroup {} under {}",
            cg.version(),
            cg.bases()
                .next()
                .map_or_else(String::new, |(_, p)| p.display().to_string())
        ),
        Err(why) => println!("skiff dev: no resource limits ({why})"),
    }
    let rt = tokio::runtime::Runtime::new()?;
    let cluster = store.cluster_id()?;
    let docker = rt
        .block_on(skiff_driver_docker::Engine::connect(&cluster))
        .map_err(|e| e.to_string());
    match &docker {
        Ok(engine) => println!("skiff dev: docker engine (API {})", engine.api_version),
        Err(why) => println!("skiff dev: no docker driver ({why})"),
    }
    let docker_unavailable = docker.as_ref().err().cloned();
    let zone = skiff_dns::Zone::new(&args.domain, args.dns_ttl).map_err(anyhow::Error::msg)?;
    let catalog = skiff_catalog::Catalog::new();
    let node_addr: std::net::IpAddr = "127.0.0.1".parse().expect("loopback");
    let kv = skiff_store::AnyKv::Redb(
        skiff_store::RedbKv::open(&data_dir.join("control.redb"))
            .context("opening the control plane's store")?,
    );
    rt.block_on(async move {
        let control = skiff_control::Control::open(
            store.clone(),
            kv,
            catalog.clone(),
            skiff_control::Config::default(),
        )
        .await?;
        let api_listener = tokio::net::TcpListener::bind(args.api)
            .await
            .with_context(|| format!("listening for the API on {}", args.api))?;
        let addr = api_listener.local_addr()?;
        // The agent is a client of the server, over loopback HTTP as on any other node.
        let cfg = Config {
            data_dir: data_dir.clone(),
            node_addr,
            shim: ShimCommand(vec![exe.display().to_string(), "__shim".into()]),
            resync: Duration::from_secs(1),
            base_env,
            cgroups,
            docker,
            server: skiff_client::Client::new(&format!("http://{addr}"))?,
            node_name: node_name(),
            labels: BTreeMap::new(),
        };
        let agent = Agent::new(cfg).context("reading the node id")?;
        let instances = Arc::new(AgentInstances(agent.clone()));
        let dns = skiff_dns::DnsServer::start(args.dns, zone.clone(), catalog.clone())
            .await
            .with_context(|| format!("listening for DNS on {}", args.dns))?;
        let ingress = skiff_ingress::Ingress::start(
            args.ingress,
            skiff_ingress::Config {
                domain: args.ingress_domain.to_ascii_lowercase(),
                limits: skiff_ingress::Limits::default(),
                workers: usize::from(args.ingress_workers),
                service_ports: Some(node_addr),
            },
            catalog.clone(),
        )
        .await
        .with_context(|| format!("listening for the ingress on {}", args.ingress))?;
        let app = skiff_api::router(ApiState {
            store: store.clone(),
            control: control.clone(),
            data_dir: data_dir.clone(),
            docker_unavailable: docker_unavailable.clone(),
            instances,
            catalog,
            zone,
            routes: Some(ingress.routes()),
        });
        let listener = api_listener;
        println!("skiff dev: cluster {}", store.cluster_id()?);
        println!("skiff dev: data dir {}", data_dir.display());
        println!("skiff dev: dns listening on {} (udp, tcp)", dns.addr);
        println!("skiff dev: ingress listening on http://{}", ingress.addr);
        println!("skiff dev: api listening on http://{addr}");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut stop_api = stop_rx.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_api.changed().await;
                })
                .await
        });
        let mut stop_control = stop_rx.clone();
        let control_task = tokio::spawn(control.clone().run(async move {
            let _ = stop_control.changed().await;
        }));
        // The agent stops first: its instances drain through the server.
        let (stop_agent_tx, stop_agent) = tokio::sync::oneshot::channel::<()>();
        let agent_task = tokio::spawn(agent.clone().run(
            async move {
                let _ = stop_agent.await;
            },
            true,
        ));
        shutdown_signal().await;
        println!("skiff dev: stopping every instance");
        let _ = stop_agent_tx.send(());
        let _ = agent_task.await;
        let _ = stop_tx.send(true);
        let _ = control_task.await;
        let _ = server.await;
        drop(dns);
        drop(ingress);
        println!("skiff dev: stopped");
        Ok(std::process::ExitCode::SUCCESS)
    })
}

/// This machine's host name (the node's default name).
pub fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The API's view of the agent's instances.
struct AgentInstances(Arc<Agent>);

impl skiff_api::Instances for AgentInstances {
    fn stats(
        &self,
        id: skiff_model::InstanceId,
    ) -> skiff_api::BoxFuture<'static, Option<skiff_model::InstanceStats>> {
        let agent = self.0.clone();
        Box::pin(async move { agent.stats(&id).await })
    }

    fn exec(
        &self,
        id: skiff_model::InstanceId,
        cmd: Vec<String>,
    ) -> skiff_api::BoxFuture<'static, Result<skiff_api::Exec, String>> {
        let agent = self.0.clone();
        Box::pin(async move {
            let (exit_code, output) = agent.exec(&id, &cmd).await?;
            Ok(skiff_api::Exec { exit_code, output })
        })
    }

    fn signal(
        &self,
        id: skiff_model::InstanceId,
        signal: String,
    ) -> skiff_api::BoxFuture<'static, Result<(), String>> {
        let agent = self.0.clone();
        Box::pin(async move { agent.signal(&id, &signal).await })
    }
}
