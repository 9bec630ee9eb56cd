//! `skiff dev`: the whole platform in one foreground process — the server (API, store,
//! planner, catalog, DNS, ingress) and one agent, which talks to the server over loopback
//! HTTP as an agent on another machine would. Ctrl-C or SIGTERM stops every instance it
//! started and exits; `kill -9` leaves them running for the next `skiff dev` to adopt.

use std::collections::BTreeMap;

use anyhow::Context;
use skiff_agent::Agent;

use crate::cmd::server::{self, ServerArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    server::init_tracing();
    let args = args.server;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(server::default_data_dir);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let store = server::open_store(&data_dir).await?;
        let cluster = store.cluster_id().to_string();
        let api_listener = tokio::net::TcpListener::bind(args.api)
            .await
            .with_context(|| format!("listening for the API on {}", args.api))?;
        let addr = api_listener.local_addr()?;
        // The agent's own listener (logs, exec, signals, stats), proxied by the server.
        let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("listening for the agent")?;
        // The agent is a client of the server, over loopback HTTP as on any other node.
        let mut cfg = crate::cmd::agent::config(
            &data_dir,
            &format!("http://{addr}"),
            crate::cmd::agent::NodeIdentity {
                address: "127.0.0.1".parse().expect("loopback"),
                name: crate::cmd::agent::host_name(),
                labels: BTreeMap::new(),
                agent_port: agent_listener.local_addr()?.port(),
            },
            &cluster,
            "dev",
        )
        .await?;
        let docker_unavailable = cfg.docker.as_ref().err().map(ToString::to_string);
        let server = server::Server::start(
            "dev",
            &args,
            &data_dir,
            store,
            docker_unavailable,
            Some(api_listener),
        )
        .await?;
        // One node in one process: the agent's proxies count traffic on the server's own
        // catalog, so a drain sees every request in flight.
        cfg.catalog = Some(server.catalog.clone());
        let agent = Agent::new(cfg).context("reading the node id")?;
        let agent_api = crate::cmd::agent::serve(agent.clone(), agent_listener);
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
        let refused = agent_task.await.ok().and_then(Result::err);
        agent_api.abort();
        server.stop().await;
        if let Some(e) = refused {
            anyhow::bail!("the server refused this node: {e}");
        }
        println!("skiff dev: stopped");
        Ok(std::process::ExitCode::SUCCESS)
    })
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
