//! `skiff agent --join http://SERVER:7700`: runs what the server places on this node. On
//! SIGTERM it leaves its workloads running; a restarted agent (same data dir) adopts them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use skiff_agent::{Agent, Config};
use skiff_driver_process::ShimCommand;

#[derive(clap::Args)]
pub struct Args {
    /// The server to join (`http://HOST:7700`).
    #[arg(long, env = "SKIFF_JOIN")]
    join: String,
    /// The node's name (default: the host name); unique in the cluster.
    #[arg(long)]
    name: Option<String>,
    /// The address instances listen on and are reached at.
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
    /// A label for placement constraints (`node.labels.zone == b`); repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// State directory (default: $XDG_DATA_HOME/skiff, or ~/.local/share/skiff).
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Port of the agent's own listener on `--address` (logs, exec, signals and stats, which
    /// the server proxies); 0 picks a free one.
    #[arg(long, default_value_t = 7701)]
    port: u16,
    /// Also run an ingress on this node, listening here (e.g. `0.0.0.0:80`), fed by the
    /// same catalog as the server's; published service ports open on its address too.
    #[arg(long)]
    ingress: Option<std::net::SocketAddr>,
    /// Domain of the ingress hosts `<service>.<stack>.<env>.<domain>`.
    #[arg(long, default_value = "localhost", env = "SKIFF_INGRESS_DOMAIN")]
    ingress_domain: String,
}

/// Serves the agent's listener until the task is aborted.
pub fn serve(agent: Arc<Agent>, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, skiff_agent::listener::router(agent)).await {
            tracing::error!("agent listener: {e}");
        }
    })
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: use key=value"))
}

/// Who a node is: its address, name, labels and the port of its agent's listener.
pub struct NodeIdentity {
    pub address: IpAddr,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub agent_port: u16,
}

/// The agent configuration both `skiff agent` and `skiff dev` build; `scope` keeps its
/// cgroups and containers apart from other agents' on the same machine.
pub async fn config(
    data_dir: &Path,
    server: &str,
    node: NodeIdentity,
    scope: &str,
    role: &str,
) -> anyhow::Result<Config> {
    let exe = std::env::current_exe().context("locating the skiff binary")?;
    // Workloads find programs built next to skiff (skiff-demo) first.
    let mut base_env = BTreeMap::new();
    if let Some(dir) = exe.parent() {
        let path = std::env::var("PATH").unwrap_or_default();
        base_env.insert("PATH".to_string(), format!("{}:{path}", dir.display()));
    }
    // One subtree per scope: two servers or agents with different data dirs never share
    // groups.
    let cgroups = skiff_cgroup::Cgroups::detect(&format!("skiff/{scope}"));
    match &cgroups {
        Ok(cg) => println!(
            "skiff {role}: cgroup {} under {}",
            cg.version(),
            cg.bases()
                .next()
                .map_or_else(String::new, |(_, p)| p.display().to_string())
        ),
        Err(why) => println!("skiff {role}: no resource limits ({why})"),
    }
    let docker = skiff_driver_docker::Engine::connect(scope).await;
    match &docker {
        Ok(engine) => println!("skiff {role}: docker engine (API {})", engine.api_version),
        Err(why) => println!("skiff {role}: no docker driver ({why})"),
    }
    Ok(Config {
        data_dir: data_dir.to_path_buf(),
        node_addr: node.address,
        shim: ShimCommand(vec![exe.display().to_string(), "__shim".into()]),
        resync: Duration::from_secs(1),
        base_env,
        cgroups,
        docker,
        server: skiff_client::Client::new(server)?,
        node_name: node.name,
        agent_port: node.agent_port,
        labels: node.labels,
        catalog: None,
    })
}

/// This machine's host name (the node's default name).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    crate::cmd::server::init_tracing();
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(crate::cmd::server::default_data_dir);
    // A bad server address is said before anything else starts.
    skiff_client::Client::new(&args.join)?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let node_id = skiff_agent::server::node_id(&data_dir).context("reading the node id")?;
        let listener = tokio::net::TcpListener::bind((args.address, args.port))
            .await
            .with_context(|| {
                format!("listening for the agent on {}:{}", args.address, args.port)
            })?;
        let port = listener.local_addr()?.port();
        // Containers and cgroups are this node's own: cleanup on adoption never touches
        // another agent's on the same engine.
        let cfg = config(
            &data_dir,
            &args.join,
            NodeIdentity {
                address: args.address,
                name: args.name.unwrap_or_else(host_name),
                labels: args.labels.into_iter().collect(),
                agent_port: port,
            },
            &format!("node-{node_id}"),
            "agent",
        )
        .await?;
        let agent = Agent::new(cfg).context("reading the node id")?;
        let agent_api = serve(agent.clone(), listener);
        let ingress = match args.ingress {
            Some(addr) => {
                let ingress = skiff_ingress::Ingress::start(
                    addr,
                    skiff_ingress::Config {
                        domain: args.ingress_domain.to_ascii_lowercase(),
                        limits: skiff_ingress::Limits::default(),
                        workers: 1,
                        service_ports: Some(addr.ip()),
                    },
                    agent.catalog(),
                )
                .await
                .with_context(|| format!("listening for the ingress on {addr}"))?;
                println!("skiff agent: ingress listening on http://{}", ingress.addr);
                Some(ingress)
            }
            None => None,
        };
        println!(
            "skiff agent: node {} joining {} (address {})",
            agent.node_id(),
            args.join,
            args.address
        );
        agent
            .run(crate::cmd::dev::shutdown_signal(), false)
            .await
            .context("the server refused this node")?;
        agent_api.abort();
        drop(ingress);
        println!("skiff agent: stopped (instances keep running)");
        Ok(std::process::ExitCode::SUCCESS)
    })
}
