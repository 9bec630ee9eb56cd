//! `skiff server`: the control plane on its own — API, store, planner and applier, catalog,
//! DNS and ingress. Agents (`skiff agent --join`) register with it and run what it places.
//! `skiff dev` is this plus one agent in the same process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use skiff_api::ApiState;
use skiff_store::{AnyKv, RedbKv, Store};

/// The listeners and settings `skiff server` and `skiff dev` share.
#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// API listen address (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7700", env = "SKIFF_API_ADDR")]
    pub api: SocketAddr,
    /// State directory (default: $XDG_DATA_HOME/skiff, or ~/.local/share/skiff).
    #[arg(long, env = "SKIFF_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// DNS listen address, UDP and TCP (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7753", env = "SKIFF_DNS_ADDR")]
    pub dns: SocketAddr,
    /// Domain of the DNS names `<service>.<stack>.<env>.<domain>`.
    #[arg(long, default_value = "skiff", env = "SKIFF_DOMAIN")]
    pub domain: String,
    /// TTL of DNS answers, in seconds (0 or 1: answers follow the live catalog).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1))]
    pub dns_ttl: u32,
    /// Ingress (HTTP reverse proxy) listen address (port 0 picks a free port; printed).
    #[arg(long, default_value = "127.0.0.1:7780", env = "SKIFF_INGRESS_ADDR")]
    pub ingress: SocketAddr,
    /// Domain of the ingress hosts `<service>.<stack>.<env>.<domain>` (`*.localhost`
    /// resolves to loopback in browsers and curl).
    #[arg(long, default_value = "localhost", env = "SKIFF_INGRESS_DOMAIN")]
    pub ingress_domain: String,
    /// Ingress worker threads (each a single-threaded event loop, as nginx workers).
    #[arg(long, default_value_t = 1, env = "SKIFF_INGRESS_WORKERS",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub ingress_workers: u16,
    /// A node silent for this long is down: its instances leave DNS and the ingress and are
    /// placed elsewhere (`5s`, `500ms`, as compose writes durations).
    #[arg(long, default_value = "5s")]
    pub node_down_after: skiff_spec::units::Duration,
    /// Where services' stable addresses come from: every node listens on a service's
    /// address at its ports and balances over its ready instances (a loopback block).
    #[arg(long, default_value = "127.77.0.0/16", env = "SKIFF_SERVICE_ADDRESSES")]
    pub service_addresses: skiff_control::AddressRange,
}

pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("skiff");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/share/skiff")
}

fn random_id() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the cluster id")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn init_tracing() {
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
}

/// Creates the data dir and opens the control plane's store in it: one kv file,
/// `control.redb`, for everything. A `state.redb` of an older skiff is imported into it on the
/// first open (and renamed `state.redb.imported`).
pub async fn open_store(data_dir: &Path) -> anyhow::Result<Store> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let path = data_dir.join("control.redb");
    let kv = RedbKv::open(&path).context("opening the control plane's store")?;
    Store::open_importing(AnyKv::Redb(kv), &random_id()?, &data_dir.join("state.redb"))
        .await
        .with_context(|| format!("opening the control plane's store {}", path.display()))
}

/// A running control plane.
pub struct Server {
    /// The live catalog (`skiff dev`'s agent serves its stable addresses from it).
    pub catalog: Arc<skiff_catalog::Catalog>,
    store: Store,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dns: skiff_dns::DnsServer,
    ingress: skiff_ingress::Ingress,
}

impl Server {
    /// Starts every listener and the planner; `role` prefixes what it prints.
    pub async fn start(
        role: &str,
        args: &ServerArgs,
        data_dir: &Path,
        store: Store,
        docker_unavailable: Option<String>,
        api_listener: Option<tokio::net::TcpListener>,
    ) -> anyhow::Result<Server> {
        let zone = skiff_dns::Zone::new(&args.domain, args.dns_ttl)?;
        let catalog = skiff_catalog::Catalog::new();
        let control = skiff_control::Control::open(
            store.clone(),
            catalog.clone(),
            skiff_control::Config {
                down_after: args.node_down_after.0,
                service_addresses: args.service_addresses,
                ..skiff_control::Config::default()
            },
        )
        .await?;
        let listener = match api_listener {
            Some(l) => l,
            None => tokio::net::TcpListener::bind(args.api)
                .await
                .with_context(|| format!("listening for the API on {}", args.api))?,
        };
        let addr = listener.local_addr()?;
        let dns = skiff_dns::DnsServer::start(args.dns, zone.clone(), catalog.clone())
            .await
            .with_context(|| format!("listening for DNS on {}", args.dns))?;
        let ingress = skiff_ingress::Ingress::start(
            args.ingress,
            skiff_ingress::Config {
                domain: args.ingress_domain.to_ascii_lowercase(),
                limits: skiff_ingress::Limits::default(),
                workers: usize::from(args.ingress_workers),
                service_ports: Some(args.ingress.ip()),
            },
            catalog.clone(),
        )
        .await
        .with_context(|| format!("listening for the ingress on {}", args.ingress))?;
        let app = skiff_api::router(ApiState {
            store: store.clone(),
            control: control.clone(),
            docker_unavailable,
            instances: Arc::new(skiff_api::ViaAgents::new(control.clone())),
            catalog: catalog.clone(),
            zone,
            routes: Some(ingress.routes()),
        });
        println!("skiff {role}: cluster {}", store.cluster_id());
        println!("skiff {role}: data dir {}", data_dir.display());
        println!("skiff {role}: dns listening on {} (udp, tcp)", dns.addr);
        println!("skiff {role}: ingress listening on http://{}", ingress.addr);
        println!("skiff {role}: api listening on http://{addr}");
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut stop_api = stop_rx.clone();
        let api = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_api.changed().await;
                })
                .await;
        });
        let mut stop_control = stop_rx;
        let planner = tokio::spawn(control.run(async move {
            let _ = stop_control.changed().await;
        }));
        Ok(Server {
            catalog,
            store,
            stop,
            tasks: vec![api, planner],
            dns,
            ingress,
        })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        drop(self.dns);
        drop(self.ingress);
        // The last soft writes (instance states, events), durable before the process ends.
        if let AnyKv::Redb(kv) = self.store.kv()
            && let Err(e) = kv.flush()
        {
            tracing::warn!("store: {e}");
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    init_tracing();
    let args = args.server;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let store = open_store(&data_dir).await?;
        let server = Server::start("server", &args, &data_dir, store, None, None).await?;
        crate::cmd::dev::shutdown_signal().await;
        println!("skiff server: stopping (agents keep their instances running)");
        server.stop().await;
        println!("skiff server: stopped");
        Ok(std::process::ExitCode::SUCCESS)
    })
}
