//! The Docker driver: instances as containers on the Docker Engine API, through bollard.
//!
//! ```text
//!  agent ──Engine::run(ContainerSpec)──▶ dockerd: create (labels, limits, ports) + start
//!    │ ◀── Container { id, host ports } ─┘
//!    ├── state(id) / wait_exit ──▶ inspect: running, exit code, OOMKilled
//!    ├── logs(id, since) ───────▶ records `<unix-ms> <o|e> <text>` (the process driver's format)
//!    └── list() ────────────────▶ every container of this cluster, by label (adoption, cleanup)
//! ```
//!
//! Works against Debian's docker.io 20.10 (API 1.41): bollard 0.21 sends unversioned paths and
//! the daemon answers with its own newest API, so only fields of API ≤ 1.41 are used.
//!
//! **Invariants:**
//! - Every container skiff creates carries the labels of [`labels`] (`io.skiff.cluster`,
//!   `.stack`, `.env`, `.service`, `.instance`, `.release`) and a name derived from them;
//!   [`Engine::list`] and cleanup touch only containers of their own cluster.
//! - Ports are published on the node address with a host port the engine picks, read back by
//!   inspecting the started container.
//! - Memory limits disable swap (`MemorySwap` = `Memory`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, Mount, MountType, NetworkCreateRequest,
    NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, InspectContainerOptions,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StatsOptionsBuilder,
};
use futures_util::{Stream, StreamExt};

pub mod driver;
#[cfg(feature = "testkit")]
pub mod testkit;

pub mod labels {
    pub const CLUSTER: &str = "io.skiff.cluster";
    pub const STACK: &str = "io.skiff.stack";
    pub const ENV: &str = "io.skiff.env";
    pub const SERVICE: &str = "io.skiff.service";
    pub const INSTANCE: &str = "io.skiff.instance";
    pub const RELEASE: &str = "io.skiff.release";
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "the Docker engine is not reachable ({0}); start dockerd, or set x-skiff.driver: process"
    )]
    Unreachable(String),
    #[error("docker {op}: {message}")]
    Api { op: &'static str, message: String },
    #[error("building {tag}: {message}")]
    Build { tag: String, message: String },
    #[error("reading build context {path}: {source}")]
    Context {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn api(op: &'static str) -> impl FnOnce(bollard::errors::Error) -> Error {
    move |e| Error::Api {
        op,
        message: e.to_string(),
    }
}

/// A mount of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountSpec {
    /// A host path.
    Bind {
        source: String,
        target: String,
        read_only: bool,
    },
    /// A named volume (created by the engine on first use).
    Volume {
        name: String,
        target: String,
        read_only: bool,
    },
    /// An in-memory file system.
    Tmpfs {
        target: String,
        size_bytes: Option<u64>,
    },
}

/// Everything needed to create one container.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// (name, container port, protocol): each is published on `host_ip` with a host port the
    /// engine picks.
    pub ports: Vec<(String, u16, String)>,
    pub host_ip: String,
    /// A user-defined network and this container's aliases on it.
    pub network: Option<(String, Vec<String>)>,
    pub mounts: Vec<MountSpec>,
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub stop_signal: String,
    pub stop_grace: Duration,
}

/// A created container and its published ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// (port name, host port), in the order of [`ContainerSpec::ports`].
    pub ports: Vec<(String, u16)>,
    /// The main process's pid on the host, while running.
    pub pid: Option<u32>,
}

/// What a container is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Running,
    Exited {
        code: i64,
        oom_killed: bool,
        error: Option<String>,
    },
    /// Created but never started, or being removed.
    Other(String),
    /// No such container.
    Missing,
}

/// One log line of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub time_ms: u64,
    /// `o` for stdout, `e` for stderr.
    pub stream: char,
    pub text: String,
}

/// A container's resource usage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// Total CPU time used, in nanoseconds.
    pub cpu_ns: Option<u64>,
}

/// A connection to the engine, scoped to one cluster id.
#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
    cluster: String,
    /// The engine's API version (e.g. "1.41").
    pub api_version: String,
    /// Network creation is check-then-create, and the engine (API 1.41) accepts two networks
    /// of one name: replicas starting together must not race it.
    /// Also remembers the networks known to exist.
    network_lock: std::sync::Arc<tokio::sync::Mutex<std::collections::HashSet<String>>>,
    /// Creates and starts in flight at once: dockerd serializes much of a start internally,
    /// and 100 concurrent requests queue behind each other slower than a few at a time.
    starts: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Default for [`Engine`]'s concurrent container starts (`SKIFF_DOCKER_PARALLEL` overrides).
pub const PARALLEL_STARTS: usize = 4;

impl Engine {
    /// Connects to the local engine (`DOCKER_HOST` or `/var/run/docker.sock`) and checks that
    /// it answers.
    pub async fn connect(cluster: &str) -> Result<Engine> {
        let docker =
            Docker::connect_with_local_defaults().map_err(|e| Error::Unreachable(e.to_string()))?;
        let version = tokio::time::timeout(Duration::from_secs(5), docker.version())
            .await
            .map_err(|_| Error::Unreachable("no answer within 5 s".into()))?
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        Ok(Engine {
            docker,
            cluster: cluster.to_string(),
            api_version: version.api_version.unwrap_or_default(),
            network_lock: Default::default(),
            starts: std::sync::Arc::new(tokio::sync::Semaphore::new(
                std::env::var("SKIFF_DOCKER_PARALLEL")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or(PARALLEL_STARTS),
            )),
        })
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Builds `context` (a directory) into an image tagged `tag`; `progress` gets the build's
    /// output lines. The error carries the engine's message (e.g. the failing step).
    pub async fn build(
        &self,
        context: &Path,
        dockerfile: Option<&str>,
        tag: &str,
        mut progress: impl FnMut(&str),
    ) -> Result<()> {
        let tar = tar_context(context)?;
        let mut options = BuildImageOptionsBuilder::default().t(tag).rm(true);
        if let Some(f) = dockerfile {
            options = options.dockerfile(f);
        }
        let mut stream =
            self.docker
                .build_image(options.build(), None, Some(bollard::body_full(tar.into())));
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| Error::Build {
                tag: tag.to_string(),
                message: e.to_string(),
            })?;
            if let Some(detail) = info.error_detail {
                return Err(Error::Build {
                    tag: tag.to_string(),
                    message: detail.message.unwrap_or_default(),
                });
            }
            if let Some(line) = info.stream {
                let line = line.trim_end();
                if !line.is_empty() {
                    progress(line);
                }
            }
        }
        Ok(())
    }

    /// Whether an image is present locally.
    pub async fn has_image(&self, image: &str) -> bool {
        self.docker.inspect_image(image).await.is_ok()
    }

    /// Creates the user-defined bridge network `name` unless it exists.
    pub async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        let mut known = self.network_lock.lock().await;
        if known.contains(name) {
            return Ok(());
        }
        if self.networks("name", name).await?.iter().any(|n| n == name) {
            known.insert(name.to_string());
            return Ok(());
        }
        let mut labels: HashMap<String, String> = labels.clone().into_iter().collect();
        labels.insert(labels::CLUSTER.into(), self.cluster.clone());
        match self
            .docker
            .create_network(NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
        {
            Ok(_) => {
                known.insert(name.to_string());
                Ok(())
            }
            Err(e) => Err(api("creating network")(e)),
        }
    }

    /// Removes networks of this cluster that no container uses.
    pub async fn remove_unused_networks(&self) -> Result<()> {
        let label = format!("{}={}", labels::CLUSTER, self.cluster);
        let mut known = self.network_lock.lock().await;
        known.clear();
        for name in self.networks("label", &label).await? {
            // In use: the engine refuses, which is what we want.
            let _ = self.docker.remove_network(&name).await;
        }
        Ok(())
    }

    /// Names of the networks matching one filter (`name`, `label`).
    async fn networks(&self, filter: &str, value: &str) -> Result<Vec<String>> {
        let filters = HashMap::from([(filter, vec![value])]);
        let found = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(api("listing networks"))?;
        Ok(found.into_iter().filter_map(|n| n.name).collect())
    }

    /// Creates and starts a container; returns it with its published host ports.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<Container> {
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(labels::CLUSTER.into(), self.cluster.clone());
        let port_key = |port: u16, proto: &str| {
            format!("{port}/{}", if proto.is_empty() { "tcp" } else { proto })
        };
        let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = spec
            .ports
            .iter()
            .map(|(_, port, proto)| {
                (
                    port_key(*port, proto),
                    Some(vec![PortBinding {
                        host_ip: Some(spec.host_ip.clone()),
                        host_port: Some(String::new()),
                    }]),
                )
            })
            .collect();
        let memory = spec.memory_bytes.map(|m| m as i64);
        let host_config = HostConfig {
            memory,
            // Swap disabled: memory+swap equals memory.
            memory_swap: memory,
            nano_cpus: spec.cpus.map(|c| (c * 1e9).round() as i64),
            pids_limit: spec.pids.map(|p| p as i64),
            port_bindings: Some(port_bindings),
            mounts: Some(spec.mounts.iter().map(mount).collect()),
            network_mode: spec.network.as_ref().map(|(n, _)| n.clone()),
            init: Some(false),
            ..Default::default()
        };
        let networking_config = spec
            .network
            .as_ref()
            .map(|(net, aliases)| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    net.clone(),
                    EndpointSettings {
                        aliases: Some(aliases.clone()),
                        ..Default::default()
                    },
                )])),
            });
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.command.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: spec.working_dir.clone(),
            labels: Some(labels),
            exposed_ports: Some(
                spec.ports
                    .iter()
                    .map(|(_, p, proto)| port_key(*p, proto))
                    .collect(),
            ),
            stop_signal: Some(spec.stop_signal.clone()).filter(|s| !s.is_empty()),
            stop_timeout: Some(spec.stop_grace.as_secs() as i64),
            host_config: Some(host_config),
            networking_config,
            ..Default::default()
        };
        let _slot = self.starts.acquire().await;
        let created = self
            .docker
            .create_container(
                Some(
                    CreateContainerOptionsBuilder::default()
                        .name(&spec.name)
                        .build(),
                ),
                body,
            )
            .await
            .map_err(api("creating container"))?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            return Err(api("starting container")(e));
        }
        let mut container = self.inspect(&created.id).await?;
        // Keep the spec's order and names for the ports.
        let published: HashMap<String, u16> = container.ports.drain(..).collect();
        container.ports = spec
            .ports
            .iter()
            .filter_map(|(name, port, proto)| {
                published
                    .get(&port_key(*port, proto))
                    .map(|host| (name.clone(), *host))
            })
            .collect();
        Ok(container)
    }

    /// The container with its labels and published ports (keyed `<port>/<proto>`).
    pub async fn inspect(&self, id: &str) -> Result<Container> {
        let info = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(api("inspecting container"))?;
        let mut ports = Vec::new();
        for (key, bindings) in info
            .network_settings
            .and_then(|n| n.ports)
            .unwrap_or_default()
        {
            if let Some(host) = bindings
                .unwrap_or_default()
                .iter()
                .find_map(|b| b.host_port.as_ref()?.parse::<u16>().ok())
            {
                ports.push((key, host));
            }
        }
        let state = info.state.unwrap_or_default();
        Ok(Container {
            id: info.id.unwrap_or_else(|| id.to_string()),
            name: info
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            labels: info
                .config
                .and_then(|c| c.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            ports,
            pid: state
                .pid
                .filter(|p| *p > 0 && state.running == Some(true))
                .map(|p| p as u32),
        })
    }

    /// What the container is doing now.
    pub async fn state(&self, id: &str) -> Result<State> {
        let info = match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(i) => i,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(State::Missing),
            Err(e) => return Err(api("inspecting container")(e)),
        };
        let s = info.state.unwrap_or_default();
        if s.running == Some(true) {
            return Ok(State::Running);
        }
        let status = s.status.map(|st| st.to_string()).unwrap_or_default();
        if status == "exited" || status == "dead" {
            return Ok(State::Exited {
                code: s.exit_code.unwrap_or(-1),
                oom_killed: s.oom_killed.unwrap_or(false),
                error: s.error.filter(|e| !e.is_empty()),
            });
        }
        Ok(State::Other(status))
    }

    /// Sends `signal` (e.g. `SIGHUP`) to the container's main process.
    pub async fn signal(&self, id: &str, signal: &str) -> Result<()> {
        self.docker
            .kill_container(
                id,
                Some(
                    KillContainerOptionsBuilder::default()
                        .signal(signal)
                        .build(),
                ),
            )
            .await
            .map_err(api("signalling container"))
    }

    /// Stops a container: `signal`, SIGKILL after `grace`, then removes it (and its anonymous
    /// volumes). Returns how it ended.
    pub async fn stop(&self, id: &str, signal: &str, grace: Duration) -> Result<State> {
        if self.state(id).await? == State::Running {
            let _ = self.signal(id, signal).await;
            let deadline = tokio::time::Instant::now() + grace;
            while tokio::time::Instant::now() < deadline && self.state(id).await? == State::Running
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if self.state(id).await? == State::Running {
                let _ = self.signal(id, "SIGKILL").await;
            }
        }
        let mut end = self.state(id).await?;
        for _ in 0..250 {
            if !matches!(end, State::Running) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            end = self.state(id).await?;
        }
        self.remove(id).await?;
        Ok(end)
    }

    /// Removes a container (forcefully: a running one is killed). Missing is fine.
    pub async fn remove(&self, id: &str) -> Result<()> {
        match self
            .docker
            .remove_container(
                id,
                Some(
                    RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await
        {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(api("removing container")(e)),
        }
    }

    /// Every container of this cluster, running or not.
    pub async fn list(&self) -> Result<Vec<Container>> {
        let label = format!("{}={}", labels::CLUSTER, self.cluster);
        let filters = HashMap::from([("label", vec![label.as_str()])]);
        let found = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(api("listing containers"))?;
        let mut out = Vec::new();
        for c in found {
            let Some(id) = c.id else { continue };
            match self.inspect(&id).await {
                Ok(container) => out.push(container),
                // Removed between the list and the inspect.
                Err(_) => continue,
            }
        }
        Ok(out)
    }

    /// The container's log lines from `since_s` (Unix seconds; 0 = all), following new ones
    /// while `follow`; the stream ends when the container stops.
    pub fn logs(
        &self,
        id: &str,
        since_s: u64,
        follow: bool,
    ) -> impl Stream<Item = Result<LogLine>> + use<> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .follow(follow)
            .since(since_s.min(i32::MAX as u64) as i32)
            .build();
        self.docker.logs(id, Some(options)).map(|item| {
            let out = item.map_err(api("reading logs"))?;
            let (stream, bytes) = match out {
                bollard::container::LogOutput::StdErr { message } => ('e', message),
                bollard::container::LogOutput::StdOut { message }
                | bollard::container::LogOutput::Console { message }
                | bollard::container::LogOutput::StdIn { message } => ('o', message),
            };
            Ok(parse_log(stream, &String::from_utf8_lossy(&bytes)))
        })
    }

    /// Waits until the container is not running, then says how it ended.
    pub async fn wait_exit(&self, id: &str) -> Result<State> {
        let mut waiting = self.docker.wait_container(id, None);
        // bollard reports a non-zero exit as an error item: either way, it has ended (or the
        // connection broke, which the state below tells apart).
        let code = match waiting.next().await {
            Some(Ok(r)) => Some(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Some(code),
            _ => None,
        };
        match self.state(id).await? {
            // Removed right after it ended (a stop): the wait's answer says how.
            State::Missing if code.is_some() => Ok(State::Exited {
                code: code.unwrap_or(-1),
                oom_killed: false,
                error: None,
            }),
            state => Ok(state),
        }
    }

    /// Runs `cmd` inside the container; returns its exit code and combined output.
    pub async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        env: &BTreeMap<String, String>,
    ) -> Result<(i64, String)> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let created = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(api("creating exec"))?;
        let mut output = String::new();
        if let StartExecResults::Attached {
            output: mut out, ..
        } = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(api("starting exec"))?
        {
            while let Some(chunk) = out.next().await {
                output.push_str(&chunk.map_err(api("reading exec output"))?.to_string());
            }
        }
        let code = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(api("inspecting exec"))?
            .exit_code
            .unwrap_or(-1);
        Ok((code, output))
    }

    /// One sample of the container's resource usage.
    pub async fn stats(&self, id: &str) -> Result<Stats> {
        let mut stream = self.docker.stats(
            id,
            Some(
                StatsOptionsBuilder::default()
                    .stream(false)
                    .one_shot(true)
                    .build(),
            ),
        );
        let Some(sample) = stream.next().await else {
            return Ok(Stats::default());
        };
        let s = sample.map_err(api("reading stats"))?;
        let mem = s.memory_stats.unwrap_or_default();
        Ok(Stats {
            memory_bytes: mem.usage,
            memory_limit_bytes: mem.limit.filter(|l| *l < i64::MAX as u64 / 2),
            pids: s.pids_stats.and_then(|p| p.current),
            cpu_ns: s
                .cpu_stats
                .and_then(|c| c.cpu_usage)
                .and_then(|u| u.total_usage),
        })
    }
}

fn mount(m: &MountSpec) -> Mount {
    match m {
        MountSpec::Bind {
            source,
            target,
            read_only,
        } => Mount {
            typ: Some(MountType::BIND),
            source: Some(source.clone()),
            target: Some(target.clone()),
            read_only: Some(*read_only),
            ..Default::default()
        },
        MountSpec::Volume {
            name,
            target,
            read_only,
        } => Mount {
            typ: Some(MountType::VOLUME),
            // Empty: an anonymous volume, removed with its container.
            source: Some(name.clone()).filter(|n| !n.is_empty()),
            target: Some(target.clone()),
            read_only: Some(*read_only),
            ..Default::default()
        },
        MountSpec::Tmpfs { target, size_bytes } => Mount {
            typ: Some(MountType::TMPFS),
            target: Some(target.clone()),
            tmpfs_options: size_bytes.map(|b| bollard::models::MountTmpfsOptions {
                size_bytes: Some(b as i64),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

/// `2026-11-25T06:18:23.123456789Z text` (a log line with `timestamps=true`).
pub fn parse_log(stream: char, raw: &str) -> LogLine {
    let raw = raw.trim_end_matches(['\n', '\r']);
    let (time_ms, text) = match raw.split_once(' ') {
        Some((ts, rest)) => match ts.parse::<jiff::Timestamp>() {
            Ok(t) => (t.as_millisecond().max(0) as u64, rest),
            Err(_) => (0, raw),
        },
        None => match raw.parse::<jiff::Timestamp>() {
            Ok(t) => (t.as_millisecond().max(0) as u64, ""),
            Err(_) => (0, raw),
        },
    };
    LogLine {
        time_ms,
        stream,
        text: text.to_string(),
    }
}

/// The build context as a tar archive (in memory; contexts are small source trees).
fn tar_context(dir: &Path) -> Result<Vec<u8>> {
    let context = |source| Error::Context {
        path: dir.display().to_string(),
        source,
    };
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(true);
    builder.append_dir_all(".", dir).map_err(context)?;
    builder.into_inner().map_err(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_keep_their_time_and_text() {
        let l = parse_log('o', "2026-11-25T06:18:23.123456789Z hello world\n");
        assert_eq!(l.text, "hello world");
        assert_eq!(l.time_ms, 1_795_587_503_123);
        assert_eq!(parse_log('e', "no timestamp").text, "no timestamp");
        assert_eq!(parse_log('e', "2026-11-25T06:18:23Z").text, "");
    }
}
