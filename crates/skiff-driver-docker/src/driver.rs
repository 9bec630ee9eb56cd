//! [`skiff_driver::Driver`] for containers: a start builds the service's image (once per
//! release, shared by the replicas starting together), ensures the stack's network
//! `skiff_<stack>_<env>` with the service name as alias, and runs the container with its
//! labels, mounts and limits.
//!
//! A container is watched by a waiter task blocked on the engine's `wait` (no polling: 1,000
//! containers cost 1,000 idle HTTP requests, not 100,000 inspects a second) and a log pump
//! that copies its log into the instance directory in the shared record format.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use skiff_driver::log::{self, LogWriter};
use skiff_driver::{
    AdoptRequest, BoxFuture, ConfigPlace, Driver, Ended, Error, Events, ExecOutput, ExitStatus,
    Kind, Listed, Result, Signal, StartRequest, State as WorkloadState, Stats, Workload, configs,
};
use skiff_model::{ConfigFile, InstanceId, ServiceSpec};
use tokio::time::Instant;

use crate::{ContainerSpec, Engine, MountSpec, State, labels};

/// Containers on one engine, scoped to the engine's cluster label.
#[derive(Debug, Clone)]
pub struct DockerDriver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Engine,
    /// The node address ports are published on.
    host_ip: IpAddr,
    /// One image build per tag and release at a time; replicas starting together share it.
    builds: tokio::sync::Mutex<HashMap<String, BuildOnce>>,
}

type BuildOnce = Arc<tokio::sync::OnceCell<Result<(), Arc<crate::Error>>>>;

impl DockerDriver {
    pub fn new(engine: Engine, host_ip: IpAddr) -> DockerDriver {
        DockerDriver {
            inner: Arc::new(Inner {
                engine,
                host_ip,
                builds: Default::default(),
            }),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }
}

fn engine_error(op: &'static str) -> impl FnOnce(crate::Error) -> Error {
    move |e| Error::runtime(op, e)
}

/// `HUP` or `sighup` as the engine takes it: `SIGHUP`.
fn signal_name(s: &str) -> String {
    let up = s.to_ascii_uppercase();
    if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    }
}

impl Inner {
    /// The image a container of `spec` runs: built from `build` (once per release, shared by
    /// the replicas starting together), or `image` as it is on this machine.
    async fn ensure_image(
        &self,
        id: &InstanceId,
        release: u64,
        spec: &ServiceSpec,
        events: &Events,
    ) -> Result<String> {
        match (&spec.build, &spec.image) {
            (Some(build), image) => {
                // As compose does: with both, the built image gets the `image` name.
                let tag = image.clone().unwrap_or_else(|| {
                    format!(
                        "skiff-{}-{}-{}:r{release}",
                        id.stack.env, id.stack.stack, id.service
                    )
                    .to_lowercase()
                });
                let cell = self
                    .builds
                    .lock()
                    .await
                    .entry(format!("{tag}#{release}"))
                    .or_default()
                    .clone();
                cell.get_or_init(|| async {
                    events(id, "building", format!("image {tag}"));
                    let started = Instant::now();
                    let built = self
                        .engine
                        .build(
                            Path::new(&build.context),
                            build.dockerfile.as_deref(),
                            &tag,
                            |line| tracing::debug!(image = %tag, "{line}"),
                        )
                        .await
                        .map_err(Arc::new);
                    if built.is_ok() {
                        events(
                            id,
                            "built",
                            format!("image {tag} in {:.1}s", started.elapsed().as_secs_f64()),
                        );
                    }
                    built
                })
                .await
                .clone()
                .map_err(|e| Error::runtime("building the image", e))?;
                Ok(tag)
            }
            (None, Some(image)) => {
                if self.engine.has_image(image).await {
                    Ok(image.clone())
                } else {
                    Err(Error::Invalid(format!(
                        "image {image} is not on this machine (skiff does not pull from \
                         registries yet): build it, or give the service a build: section"
                    )))
                }
            }
            (None, None) => Err(Error::Invalid(format!(
                "service {} has neither an image nor a build context",
                id.service
            ))),
        }
    }
}

impl Driver for DockerDriver {
    fn kind(&self) -> Kind {
        Kind::Docker
    }

    fn own_network(&self) -> bool {
        true
    }

    fn listen_ports(&self, spec: &ServiceSpec) -> Result<Vec<(String, u16)>> {
        Ok(spec
            .ports
            .iter()
            .map(|p| (p.name.clone(), p.target))
            .collect())
    }

    /// Container ports are the container's; the engine picks and frees the host ports.
    fn return_ports(&self, _ports: &[(String, u16)]) {}

    /// A container reads a config at its target, a read-only bind mount of the file the
    /// agent writes under the instance directory. A single-file mount pins the inode (a
    /// rename on the host stays invisible inside), so a change is rewritten in place.
    fn config_place(&self, dir: &Path, c: &ConfigFile) -> Option<ConfigPlace> {
        Some(ConfigPlace {
            host: configs::host_path(dir, c)?,
            seen: c.target.clone(),
            in_place: true,
        })
    }

    fn start(&self, req: StartRequest) -> BoxFuture<'_, Result<Arc<dyn Workload>>> {
        Box::pin(async move {
            let inner = &self.inner;
            let engine = &inner.engine;
            let StartRequest {
                instance: id,
                release,
                spec,
                dir,
                env,
                events,
                before_start,
                ..
            } = req;
            let image = inner.ensure_image(&id, release, &spec, &events).await?;
            let stack_labels = BTreeMap::from([
                (labels::STACK.to_string(), id.stack.stack.clone()),
                (labels::ENV.to_string(), id.stack.env.clone()),
            ]);
            let network = format!("skiff_{}_{}", id.stack.stack, id.stack.env);
            engine
                .ensure_network(&network, &stack_labels)
                .await
                .map_err(engine_error("creating the stack network"))?;
            let mut container_labels = stack_labels;
            container_labels.insert(labels::SERVICE.into(), id.service.clone());
            container_labels.insert(labels::INSTANCE.into(), id.to_string());
            container_labels.insert(labels::RELEASE.into(), release.to_string());
            let name = format!(
                "skiff-{}-{}-{}-{}",
                engine.cluster(),
                id.stack.env,
                id.stack.stack,
                id.short()
            );
            // A container of this name left by a crash before it was recorded.
            let _ = engine.remove(&name).await;
            if let Some(record) = before_start {
                let logs = dir.join(log::LOG_DIR);
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&logs)?;
                    record()
                })
                .await
                .map_err(|e| Error::runtime("recording the instance", e))?
                .map_err(|e| Error::runtime("recording the instance", e))?;
            }
            let run = ContainerSpec {
                name,
                image,
                entrypoint: spec.entrypoint.clone(),
                command: spec.command.clone(),
                env,
                working_dir: spec.working_dir.clone(),
                labels: container_labels,
                ports: spec
                    .ports
                    .iter()
                    .map(|p| (p.name.clone(), p.target, p.protocol.clone()))
                    .collect(),
                host_ip: inner.host_ip.to_string(),
                network: Some((network, vec![id.service.clone()])),
                mounts: spec
                    .mounts
                    .iter()
                    .map(|m| docker_mount(m, &id.stack.env))
                    .chain(spec.configs.iter().filter_map(|c| {
                        Some(MountSpec::Bind {
                            source: configs::host_path(&dir, c)?.display().to_string(),
                            target: c.target.clone(),
                            read_only: true,
                        })
                    }))
                    .collect(),
                memory_bytes: spec.limits.memory_bytes,
                cpus: spec.limits.cpus,
                pids: spec.limits.pids,
                stop_signal: signal_name(&spec.stop_signal),
                stop_grace: spec.stop_grace,
            };
            let container = engine
                .run(&run)
                .await
                .map_err(engine_error("starting the container"))?;
            Ok(Arc::new(DockerWorkload::watch(
                engine.clone(),
                container.id,
                container.pid,
                container.ports,
                &dir,
            )) as Arc<dyn Workload>)
        })
    }

    fn adopt(&self, req: AdoptRequest) -> BoxFuture<'_, Result<Arc<dyn Workload>>> {
        Box::pin(async move {
            let engine = &self.inner.engine;
            let not_found = || Error::NotFound(req.dir.display().to_string());
            let cid = req.id.clone().ok_or_else(not_found)?;
            // A container that is gone was removed behind our back: nothing to adopt.
            match engine.state(&cid).await {
                Ok(State::Missing) | Err(_) => return Err(not_found()),
                Ok(_) => {}
            }
            let pid = engine.inspect(&cid).await.ok().and_then(|c| c.pid);
            Ok(Arc::new(DockerWorkload::watch(
                engine.clone(),
                cid,
                pid,
                req.ports,
                &req.dir,
            )) as Arc<dyn Workload>)
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Listed>>> {
        Box::pin(async move {
            let all = self
                .inner
                .engine
                .list()
                .await
                .map_err(engine_error("listing containers"))?;
            Ok(all
                .into_iter()
                .map(|c| Listed {
                    id: c.id,
                    dir: None,
                })
                .collect())
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.inner
                .engine
                .remove(id)
                .await
                .map_err(engine_error("removing a container"))
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.inner.engine.remove_unused_networks().await;
        })
    }
}

/// A mount as the engine takes it. Volumes are per environment (an environment is an isolated
/// copy of the stack, databases included), except in `default` and for external ones, which
/// keep the name compose gives them.
fn docker_mount(m: &skiff_model::MountSpec, env: &str) -> MountSpec {
    use skiff_model::MountSpec as M;
    match m {
        M::Bind {
            source,
            target,
            read_only,
        } => MountSpec::Bind {
            source: source.clone(),
            target: target.clone(),
            read_only: *read_only,
        },
        M::Volume {
            name,
            external,
            target,
            read_only,
            ..
        } => MountSpec::Volume {
            name: if name.is_empty() || *external || env == "default" {
                name.clone()
            } else {
                format!("{name}_{env}")
            },
            target: target.clone(),
            read_only: *read_only,
        },
        M::Tmpfs { target, size_bytes } => MountSpec::Tmpfs {
            target: target.clone(),
            size_bytes: *size_bytes,
        },
    }
}

/// A started or adopted container.
#[derive(Debug)]
pub struct DockerWorkload {
    engine: Engine,
    id: String,
    pid: Option<u32>,
    ports: Vec<(String, u16)>,
    dir: PathBuf,
    /// Set by the waiter task when the container ends (or by a stop).
    ended: Arc<tokio::sync::watch::Sender<Option<Ended>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ended_from(state: &State) -> Ended {
    let (code, oom_killed, error) = match state {
        State::Exited {
            code,
            oom_killed,
            error,
        } => (Some(*code as i32), *oom_killed, error.clone()),
        State::Missing => (None, false, Some("container removed".to_string())),
        State::Other(s) => (None, false, Some(format!("container {s}"))),
        State::Running => (None, false, None),
    };
    Ended {
        exit: ExitStatus {
            code,
            signal: None,
            error,
            time_ms: now_ms(),
        },
        oom_killed,
    }
}

impl DockerWorkload {
    /// Watches a started (or adopted) container: a waiter records its end, a pump copies its
    /// log into `dir/logs`.
    fn watch(
        engine: Engine,
        id: String,
        pid: Option<u32>,
        ports: Vec<(String, u16)>,
        dir: &Path,
    ) -> DockerWorkload {
        let ended = Arc::new(tokio::sync::watch::Sender::new(None));
        let (waiter_engine, waiter_id, cell) = (engine.clone(), id.clone(), ended.clone());
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            let end = loop {
                match waiter_engine.wait_exit(&waiter_id).await {
                    Ok(State::Running) | Err(_) => {
                        // The engine restarted or the connection broke: ask again.
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                    Ok(other) => break other,
                }
            };
            record_end(&cell, ended_from(&end));
        });
        tokio::spawn(pump_logs(
            engine.clone(),
            id.clone(),
            dir.join(log::LOG_DIR),
        ));
        DockerWorkload {
            engine,
            id,
            pid,
            ports,
            dir: dir.to_path_buf(),
            ended,
        }
    }

    fn ended(&self) -> Option<Ended> {
        self.ended.borrow().clone()
    }
}

/// Records the first end seen (the waiter's or a stop's); later ones change nothing.
fn record_end(cell: &tokio::sync::watch::Sender<Option<Ended>>, end: Ended) {
    cell.send_if_modified(|v| {
        if v.is_none() {
            *v = Some(end);
            true
        } else {
            false
        }
    });
}

impl Workload for DockerWorkload {
    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn ports(&self) -> &[(String, u16)] {
        &self.ports
    }

    fn describe(&self) -> String {
        format!("container {}", &self.id[..12.min(self.id.len())])
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.join(log::LOG_DIR)
    }

    fn status(&self) -> BoxFuture<'_, WorkloadState> {
        let state = match self.ended() {
            Some(e) => WorkloadState::Ended(e),
            None => WorkloadState::Running,
        };
        Box::pin(std::future::ready(state))
    }

    fn wait(&self) -> BoxFuture<'static, Ended> {
        let mut rx = self.ended.subscribe();
        Box::pin(async move {
            match rx.wait_for(Option::is_some).await {
                Ok(e) => e.clone().expect("waited for an end"),
                Err(_) => Ended {
                    exit: ExitStatus::lost(),
                    oom_killed: false,
                },
            }
        })
    }

    fn signal(&self, signal: Signal) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.engine
                .signal(&self.id, signal.as_str())
                .await
                .map_err(engine_error("signalling the container"))
        })
    }

    /// Stop signal, SIGKILL after `grace`, then the container is removed.
    fn stop(&self, signal: Signal, grace: Duration) -> BoxFuture<'_, Result<Ended>> {
        Box::pin(async move {
            let end = self
                .engine
                .stop(&self.id, signal.as_str(), grace)
                .await
                .map_err(engine_error("stopping the container"))?;
            if end != State::Missing {
                record_end(&self.ended, ended_from(&end));
            }
            Ok(self.ended().unwrap_or_else(|| ended_from(&end)))
        })
    }

    fn exec<'a>(&'a self, cmd: &'a [String]) -> BoxFuture<'a, Result<ExecOutput>> {
        Box::pin(async move {
            // The container has its environment already.
            let (exit_code, output) = self
                .engine
                .exec(&self.id, cmd, &BTreeMap::new())
                .await
                .map_err(engine_error("exec in the container"))?;
            Ok(ExecOutput { exit_code, output })
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<Stats>> {
        Box::pin(async move {
            let st = self
                .engine
                .stats(&self.id)
                .await
                .map_err(engine_error("reading stats"))?;
            Ok(Stats {
                memory_bytes: st.memory_bytes,
                memory_limit_bytes: st.memory_limit_bytes,
                pids: st.pids,
                oom_kills: u64::from(self.ended().is_some_and(|e| e.oom_killed)),
                cpu_ns: st.cpu_ns,
            })
        })
    }

    /// The stack's network goes with its last container (the engine refuses to remove one
    /// in use).
    fn release(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.engine
                .remove_unused_networks()
                .await
                .map_err(engine_error("removing unused networks"))
        })
    }
}

/// Copies a container's log into `logs_dir/output.log` until the container ends, resuming
/// after the last record already there (an adopted container does not repeat its history).
async fn pump_logs(engine: Engine, id: String, logs_dir: PathBuf) {
    let dir = logs_dir.clone();
    let Ok(Ok(mut writer)) =
        tokio::task::spawn_blocking(move || LogWriter::open(&dir, 10 << 20, 3)).await
    else {
        tracing::warn!(container = %id, "cannot open {}", logs_dir.display());
        return;
    };
    let last_ms = log::last_record_ms(&logs_dir.join(log::LOG));
    let mut lines = Box::pin(engine.logs(&id, last_ms / 1000, true));
    while let Some(line) = lines.next().await {
        let Ok(line) = line else { break };
        if line.time_ms <= last_ms {
            continue;
        }
        writer.write_line(line.time_ms, line.stream as u8, line.text.as_bytes());
        writer.flush();
    }
}
