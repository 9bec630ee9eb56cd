//! `skiff node ls | status NODE | drain NODE | undrain NODE | label NODE k=v… k-…`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use skiff_client::LabelChange;
use skiff_client::blocking::Client;
use skiff_model::{Allocation, Node};

use crate::cmd::ps::format_time_ms as format_time;
use crate::output::{self, OutputArg};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(clap::Subcommand)]
enum NodeCommand {
    /// List the nodes: status, address, resources, labels, instances.
    Ls {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Show one node (by name or id) and the instances placed on it.
    Status {
        node: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Take no new work on a node and move its instances elsewhere.
    Drain { node: String },
    /// Let a drained node take work again.
    Undrain { node: String },
    /// Set labels (`zone=b`) or remove them (`zone-`), for placement constraints.
    Label {
        node: String,
        #[arg(required = true)]
        labels: Vec<String>,
    },
}

pub fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    match args.command {
        NodeCommand::Ls { output } => {
            let nodes = client.nodes()?;
            let allocs = client.all_allocations()?;
            output::print(output.format, &nodes, || {
                let rows = nodes
                    .iter()
                    .map(|n| {
                        let count = allocs.iter().filter(|a| a.node == n.id).count();
                        vec![
                            n.name.clone(),
                            n.id.clone(),
                            n.status.to_string(),
                            n.address.clone(),
                            format!("{:.1}", n.resources.cpu_millis as f64 / 1000.0),
                            format!("{} MiB", n.resources.memory_bytes >> 20),
                            count.to_string(),
                            labels(n),
                        ]
                    })
                    .collect();
                output::print_table(
                    &[
                        "NAME",
                        "ID",
                        "STATUS",
                        "ADDRESS",
                        "CPUS",
                        "MEMORY",
                        "INSTANCES",
                        "LABELS",
                    ],
                    rows,
                );
            })?;
        }
        NodeCommand::Status { node, output } => {
            let n = client.node(&node)?;
            let mut allocs: Vec<Allocation> = client
                .all_allocations()?
                .into_iter()
                .filter(|a| a.node == n.id)
                .collect();
            allocs.sort_by(|a, b| a.instance.cmp(&b.instance));
            #[derive(serde::Serialize)]
            struct View<'a> {
                #[serde(flatten)]
                node: &'a Node,
                allocations: &'a [Allocation],
            }
            let view = View {
                node: &n,
                allocations: &allocs,
            };
            output::print(output.format, &view, || {
                println!("name:       {}", n.name);
                println!("id:         {}", n.id);
                println!("status:     {}", n.status);
                println!("address:    {}", n.address);
                println!(
                    "resources:  {:.1} CPUs, {} MiB, ports {}-{}",
                    n.resources.cpu_millis as f64 / 1000.0,
                    n.resources.memory_bytes >> 20,
                    n.resources.ports.0,
                    n.resources.ports.1
                );
                println!(
                    "drivers:    {}",
                    n.drivers
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                println!("labels:     {}", labels(&n));
                println!("heartbeat:  {}", format_time(n.last_heartbeat_ms));
                println!();
                let rows = allocs
                    .iter()
                    .map(|a| {
                        vec![
                            a.instance.short(),
                            a.instance.stack.stack.clone(),
                            a.instance.stack.env.clone(),
                            a.release.to_string(),
                            a.id.clone(),
                        ]
                    })
                    .collect();
                output::print_table(&["INSTANCE", "STACK", "ENV", "RELEASE", "ALLOCATION"], rows);
            })?;
        }
        NodeCommand::Drain { node } => {
            let n = client.drain_node(&node)?;
            println!("node {}: {}", n.name, n.status);
        }
        NodeCommand::Undrain { node } => {
            let n = client.undrain_node(&node)?;
            println!("node {}: {}", n.name, n.status);
        }
        NodeCommand::Label { node, labels } => {
            let mut change = LabelChange {
                set: BTreeMap::new(),
                remove: Vec::new(),
            };
            for l in &labels {
                if let Some((k, v)) = l.split_once('=') {
                    change.set.insert(k.to_string(), v.to_string());
                } else if let Some(k) = l.strip_suffix('-') {
                    change.remove.push(k.to_string());
                } else {
                    anyhow::bail!("label {l:?}: use key=value to set it or key- to remove it");
                }
            }
            let n = client
                .label_node(&node, &change)
                .with_context(|| format!("labelling node {node}"))?;
            println!("node {}: {}", n.name, self::labels(&n));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn labels(n: &Node) -> String {
    if n.labels.is_empty() {
        return "-".into();
    }
    n.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
