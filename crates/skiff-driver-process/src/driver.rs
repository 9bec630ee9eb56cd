//! [`skiff_driver::Driver`] for host processes: each start creates the instance's cgroup
//! (limits joined before exec), takes its host ports, and runs the workload under its shim.
//!
//! What is fast stays fast: a start is one blocking task (cgroup, record, shim) under a
//! semaphore of [`PROCESS_STARTS`]; a running workload costs a pidfd registered with tokio's
//! reactor while someone awaits [`Workload::wait`] — no thread, timer or poll.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use skiff_cgroup::Cgroups;
use skiff_driver::{
    AdoptRequest, BoxFuture, Driver, Ended, Error, ExecOutput, ExitStatus, Kind, Listed, Result,
    Signal, StartRequest, State, Stats, Workload,
};
use skiff_model::{InstanceId, ServiceSpec};

use crate::ports::PortAllocator;
use crate::{DriverError, Instance, LaunchSpec, ShimCommand, Status, files};

/// How many process starts run at once: more only oversubscribe the cores (a bring-up of
/// 1,000 instances ran 512 blocking threads, each polling for its shim).
pub const PROCESS_STARTS: usize = 16;

/// What the process driver needs.
#[derive(Debug)]
pub struct Config {
    /// How to start a shim (`[<skiff>, "__shim"]`).
    pub shim: ShimCommand,
    /// Where instances' cgroups go, or why there are none (then a service with limits does
    /// not start: limits are never silently dropped).
    pub cgroups: std::result::Result<Cgroups, skiff_cgroup::Error>,
    /// Environment every workload gets under its own (e.g. `PATH` in `skiff dev`).
    pub base_env: BTreeMap<String, String>,
    /// The address host ports are taken on.
    pub node_addr: IpAddr,
    /// Instance directories, as `<root>/<env>/<stack>/<instance>` ([`Driver::list`]).
    pub root: PathBuf,
}

/// Host processes under their shims.
#[derive(Debug, Clone)]
pub struct ProcessDriver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: Config,
    ports: PortAllocator,
    starts: tokio::sync::Semaphore,
}

impl ProcessDriver {
    pub fn new(cfg: Config) -> ProcessDriver {
        ProcessDriver {
            inner: Arc::new(Inner {
                ports: PortAllocator::new(cfg.node_addr),
                cfg,
                starts: tokio::sync::Semaphore::new(PROCESS_STARTS),
            }),
        }
    }

    /// The cgroups instances get, if there are any.
    pub fn cgroups(&self) -> Option<&Cgroups> {
        self.inner.cfg.cgroups.as_ref().ok()
    }
}

/// `<env>/<stack>/<service>-<index>` below the driver's cgroup base.
pub fn cgroup_name(id: &InstanceId) -> String {
    format!("{}/{}/{}", id.stack.env, id.stack.stack, id.short())
}

fn limits(spec: &ServiceSpec) -> skiff_cgroup::Limits {
    skiff_cgroup::Limits {
        memory_bytes: spec.limits.memory_bytes,
        cpus: spec.limits.cpus,
        pids: spec.limits.pids,
    }
}

fn start_error(e: DriverError) -> Error {
    match e {
        DriverError::Start(why) => Error::Start(why),
        other => Error::runtime("starting the shim", other),
    }
}

impl Inner {
    fn return_ports(&self, ports: &[(String, u16)]) {
        self.ports.release(ports.iter().map(|(_, p)| *p));
    }

    /// Creates the instance's cgroup (a stale one first removed), or says why it cannot have
    /// the limits it asks for. Blocking.
    fn cgroup(&self, group: &str, limits: &skiff_cgroup::Limits) -> Result<Vec<PathBuf>> {
        match &self.cfg.cgroups {
            Ok(cg) => {
                // A group left by a crashed run would carry its OOM count and processes.
                if let Ok(stale) = cg.open(group) {
                    stale
                        .remove()
                        .map_err(|e| Error::runtime("removing a stale cgroup", e))?;
                }
                let created = cg
                    .create(group, limits)
                    .map_err(|e| Error::runtime("creating the cgroup", e))?;
                Ok(created.procs_files())
            }
            Err(why) if *limits != skiff_cgroup::Limits::default() => Err(Error::Invalid(format!(
                "resource limits need cgroups: {why}"
            ))),
            Err(_) => Ok(Vec::new()),
        }
    }

    fn oom_kills(&self, group: &str) -> u64 {
        match &self.cfg.cgroups {
            Ok(cg) => cg.open(group).map_or(0, |g| g.oom_kills()),
            Err(_) => 0,
        }
    }

    fn workload(
        self: &Arc<Self>,
        instance: Instance,
        id: &InstanceId,
        spec: &ServiceSpec,
        ports: Vec<(String, u16)>,
        env: BTreeMap<String, String>,
    ) -> ProcessWorkload {
        let cwd = spec
            .working_dir
            .as_ref()
            .map_or_else(|| instance.dir.join("work"), PathBuf::from);
        ProcessWorkload {
            shared: Arc::new(Shared {
                instance,
                driver: self.clone(),
                group: cgroup_name(id),
            }),
            ports,
            env,
            cwd,
        }
    }
}

impl Driver for ProcessDriver {
    fn kind(&self) -> Kind {
        Kind::Process
    }

    fn own_network(&self) -> bool {
        false
    }

    fn host_volumes(&self) -> bool {
        true
    }

    fn listen_ports(&self, spec: &ServiceSpec) -> Result<Vec<(String, u16)>> {
        let mut ports = Vec::with_capacity(spec.ports.len());
        for p in &spec.ports {
            match self.inner.ports.allocate() {
                Ok(port) => ports.push((p.name.clone(), port)),
                Err(e) => {
                    self.inner.return_ports(&ports);
                    return Err(Error::Ports(e));
                }
            }
        }
        Ok(ports)
    }

    fn return_ports(&self, ports: &[(String, u16)]) {
        self.inner.return_ports(ports);
    }

    fn start(&self, req: StartRequest) -> BoxFuture<'_, Result<Arc<dyn Workload>>> {
        Box::pin(async move {
            let inner = &self.inner;
            let StartRequest {
                instance,
                spec,
                dir,
                env,
                listen_ports,
                before_start,
                ..
            } = req;
            let argv = spec.process_argv();
            if argv.is_empty() {
                inner.return_ports(&listen_ports);
                return Err(Error::Invalid(
                    "no program to run (set command or x-skiff.executable)".into(),
                ));
            }
            let mut full_env = inner.cfg.base_env.clone();
            full_env.extend(env);
            let mut launch = LaunchSpec {
                argv,
                env: full_env,
                cwd: spec
                    .working_dir
                    .as_ref()
                    .map_or_else(|| dir.join("work"), PathBuf::from),
                max_log_bytes: 10 << 20,
                keep_logs: 3,
                cgroup_procs: Vec::new(),
            };
            let group = cgroup_name(&instance);
            let limits = limits(&spec);
            let blocking = inner.clone();
            let _permit = inner.starts.acquire().await;
            let started = tokio::task::spawn_blocking(move || {
                launch.cgroup_procs = blocking.cgroup(&group, &limits)?;
                std::fs::create_dir_all(&dir).map_err(|e| {
                    Error::runtime("creating the instance directory", io_at(&dir, e))
                })?;
                if let Some(record) = before_start {
                    record().map_err(|e| Error::runtime("recording the instance", e))?;
                }
                let started = Instance::start(&blocking.cfg.shim, &dir, &launch)
                    .map_err(start_error)
                    .map(|i| (i, launch.env));
                if started.is_err()
                    && let Ok(cg) = &blocking.cfg.cgroups
                    && let Ok(g) = cg.open(&group)
                {
                    let _ = g.remove();
                }
                started
            })
            .await
            .unwrap_or_else(|e| Err(Error::runtime("starting the shim", e)));
            match started {
                Ok((started, env)) => {
                    Ok(
                        Arc::new(inner.workload(started, &instance, &spec, listen_ports, env))
                            as Arc<dyn Workload>,
                    )
                }
                Err(e) => {
                    inner.return_ports(&listen_ports);
                    Err(e)
                }
            }
        })
    }

    fn adopt(&self, req: AdoptRequest) -> BoxFuture<'_, Result<Arc<dyn Workload>>> {
        Box::pin(async move {
            let dir = req.dir.clone();
            let found = tokio::task::spawn_blocking(move || Instance::adopt(&dir))
                .await
                .map_err(|e| Error::runtime("adopting", e))?
                .map_err(|_| Error::NotFound(req.dir.display().to_string()))?;
            self.inner.ports.reserve(req.ports.iter().map(|(_, p)| *p));
            let mut env = self.inner.cfg.base_env.clone();
            env.extend(req.env);
            Ok(Arc::new(
                self.inner
                    .workload(found, &req.instance, &req.spec, req.ports, env),
            ) as Arc<dyn Workload>)
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Listed>>> {
        let root = self.inner.cfg.root.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || instance_dirs(&root))
                .await
                .map_err(|e| Error::runtime("listing instance directories", e))
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        let inner = self.inner.clone();
        let dir = PathBuf::from(id);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                if let Ok(found) = Instance::adopt(&dir) {
                    found
                        .stop(Signal::SIGKILL, Duration::ZERO)
                        .map_err(|e| Error::runtime("killing", e))?;
                }
                if let Ok(rel) = dir.strip_prefix(&inner.cfg.root)
                    && let Ok(cg) = &inner.cfg.cgroups
                    && let Ok(g) = cg.open(&rel.display().to_string())
                {
                    g.remove()
                        .map_err(|e| Error::runtime("removing the cgroup", e))?;
                }
                Ok(())
            })
            .await
            .map_err(|e| Error::runtime("removing", e))?
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Ok(cg) = &self.inner.cfg.cgroups {
                cg.remove_base_if_empty();
            }
        })
    }
}

fn io_at(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// `<root>/<env>/<stack>/<instance>` directories a shim recorded a workload in.
fn instance_dirs(root: &Path) -> Vec<Listed> {
    skiff_driver::instance_dirs(root)
        .into_iter()
        .filter(|dir| dir.join(files::CHILD_PID).exists())
        .map(|dir| Listed {
            id: dir.display().to_string(),
            dir: Some(dir),
        })
        .collect()
}

/// A process under its shim.
#[derive(Debug)]
pub struct ProcessWorkload {
    shared: Arc<Shared>,
    ports: Vec<(String, u16)>,
    /// What `exec` runs commands with.
    env: BTreeMap<String, String>,
    cwd: PathBuf,
}

/// What [`Workload::wait`]'s future keeps (it outlives a borrow of the workload).
#[derive(Debug)]
struct Shared {
    instance: Instance,
    driver: Arc<Inner>,
    group: String,
}

impl Shared {
    /// Blocking: reads the instance directory (and the cgroup's OOM count once it ended).
    fn state(&self) -> State {
        match self.instance.status() {
            Status::Running => State::Running,
            Status::Exited(exit) => State::Ended(self.ended(exit)),
            Status::Lost => State::Ended(self.ended(ExitStatus::lost())),
        }
    }

    fn ended(&self, exit: ExitStatus) -> Ended {
        Ended {
            exit,
            oom_killed: self.driver.oom_kills(&self.group) > 0,
        }
    }

    async fn state_async(self: &Arc<Self>) -> State {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.state())
            .await
            .unwrap_or_else(|_| State::Ended(self.ended(ExitStatus::lost())))
    }
}

impl Workload for ProcessWorkload {
    fn id(&self) -> Option<&str> {
        None
    }

    fn pid(&self) -> Option<u32> {
        Some(self.shared.instance.pid as u32)
    }

    fn ports(&self) -> &[(String, u16)] {
        &self.ports
    }

    fn describe(&self) -> String {
        format!("pid {}", self.shared.instance.pid)
    }

    fn log_dir(&self) -> PathBuf {
        self.shared.instance.dir.join(files::LOG_DIR)
    }

    fn status(&self) -> BoxFuture<'_, State> {
        Box::pin(self.shared.state_async())
    }

    /// The shim's pidfd, then the workload's (should the shim have died first): 1,000
    /// instances cost 1,000 idle descriptors; a kernel without pidfds is checked every 10 ms.
    fn wait(&self) -> BoxFuture<'static, Ended> {
        let shared = self.shared.clone();
        Box::pin(async move {
            for pid in shared.instance.watched_pids() {
                if let Some(fd) = crate::exit_fd(pid) {
                    ended(fd).await;
                }
                if let State::Ended(e) = shared.state_async().await {
                    return e;
                }
            }
            loop {
                if let State::Ended(e) = shared.state_async().await {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    }

    fn signal(&self, signal: Signal) -> BoxFuture<'_, Result<()>> {
        let sent = self
            .shared
            .instance
            .signal(signal)
            .map_err(|e| Error::runtime("signalling the process group", e));
        Box::pin(std::future::ready(sent))
    }

    fn stop(&self, signal: Signal, grace: Duration) -> BoxFuture<'_, Result<Ended>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let status = shared
                    .instance
                    .stop(signal, grace)
                    .map_err(|e| Error::runtime("stopping", e))?;
                Ok(match status {
                    Status::Exited(exit) => shared.ended(exit),
                    _ => shared.ended(ExitStatus::lost()),
                })
            })
            .await
            .map_err(|e| Error::runtime("stopping", e))?
        })
    }

    fn exec<'a>(&'a self, cmd: &'a [String]) -> BoxFuture<'a, Result<ExecOutput>> {
        Box::pin(async move {
            let (program, args) = cmd
                .split_first()
                .ok_or_else(|| Error::Invalid("empty command".into()))?;
            let mut c = tokio::process::Command::new(program);
            c.args(args)
                .env_clear()
                .envs(&self.env)
                .current_dir(&self.cwd)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let out = c.output().await.map_err(|source| Error::Exec {
                program: program.clone(),
                source,
            })?;
            let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
            output.push_str(&String::from_utf8_lossy(&out.stderr));
            let exit_code = out.status.code().map_or_else(
                || {
                    128 + i64::from(
                        std::os::unix::process::ExitStatusExt::signal(&out.status).unwrap_or(0),
                    )
                },
                i64::from,
            );
            Ok(ExecOutput { exit_code, output })
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<Stats>> {
        let read = match &self.shared.driver.cfg.cgroups {
            Ok(cg) => cg
                .open(&self.shared.group)
                .map(|g| {
                    let st = g.stats();
                    Stats {
                        memory_bytes: st.memory_bytes,
                        memory_limit_bytes: st.memory_limit_bytes,
                        pids: st.pids,
                        oom_kills: st.oom_kills,
                        cpu_ns: st.cpu_ns,
                    }
                })
                .map_err(|e| Error::runtime("reading the cgroup", e)),
            Err(_) => Err(Error::Unsupported {
                what: "usage without cgroups",
            }),
        };
        Box::pin(std::future::ready(read))
    }

    /// The cgroup freezer (v1 `freezer.state`, v2 `cgroup.freeze`), waiting until the kernel
    /// says it took effect.
    fn freeze(&self, frozen: bool) -> BoxFuture<'_, Result<()>> {
        let driver = self.shared.driver.clone();
        let group = self.shared.group.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let cg = driver
                    .cfg
                    .cgroups
                    .as_ref()
                    .map_err(|_| Error::Unsupported {
                        what: "freezing without cgroups",
                    })?;
                let g = cg
                    .open(&group)
                    .map_err(|e| Error::runtime("opening the cgroup", e))?;
                let timeout = Duration::from_secs(10);
                if frozen {
                    g.freeze(timeout)
                        .map_err(|e| Error::runtime("freezing the cgroup", e))
                } else {
                    g.thaw(timeout)
                        .map_err(|e| Error::runtime("thawing the cgroup", e))
                }
            })
            .await
            .map_err(|e| Error::runtime("freezing the cgroup", e))?
        })
    }

    /// Removes the cgroup (whatever escaped the process group, a daemon that called setsid,
    /// dies with it) and gives back the host ports.
    fn release(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let driver = self.shared.driver.clone();
            let group = self.shared.group.clone();
            let removed = tokio::task::spawn_blocking(move || match &driver.cfg.cgroups {
                Ok(cg) => match cg.open(&group) {
                    Ok(g) => g.remove(),
                    Err(_) => Ok(()),
                },
                Err(_) => Ok(()),
            })
            .await;
            self.shared.driver.return_ports(&self.ports);
            match removed {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Error::runtime("removing the cgroup", e)),
                Err(e) => Err(Error::runtime("removing the cgroup", e)),
            }
        })
    }
}

/// Resolves when the process behind `pidfd` has ended (at once if it cannot be watched).
#[allow(unsafe_code)]
async fn ended(pidfd: std::os::fd::OwnedFd) {
    use tokio::io::Interest;
    // SAFETY: tokio requires that the descriptor stay open and the same for the lifetime of
    // the `AsyncFd`; an `OwnedFd` moved into it is closed only when the `AsyncFd` drops it.
    if let Ok(fd) =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
    {
        let _ = fd.readable().await;
    }
}
