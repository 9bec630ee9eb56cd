//! One running workload, whichever driver runs it: a process under its shim, or a container.
//!
//! The agent holds a [`Handle`] per instance and asks it three things: is it still running
//! (cheaply, every ~10 ms), stop it, and how did it end. A process answers from its instance
//! directory; a container from a waiter task that blocks on the engine's `wait` (no polling of
//! the engine), so 1,000 containers cost 1,000 idle HTTP requests, not 100,000 inspects a second.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use nix::sys::signal::Signal;
use skiff_driver_docker::{Engine, State};
use skiff_driver_process::shim::LogWriter;
use skiff_driver_process::{self as driver, ExitStatus, Status};

/// How a workload ended, with whether the kernel killed it for memory (containers report it
/// themselves; processes through their cgroup).
#[derive(Clone, Debug)]
pub struct Ended {
    pub exit: ExitStatus,
    pub oom_killed: bool,
}

#[derive(Clone, Debug)]
pub enum Handle {
    Process(driver::Instance),
    Container(Container),
}

#[derive(Clone, Debug)]
pub struct Container {
    pub engine: Engine,
    pub id: String,
    pub pid: Option<u32>,
    /// Filled by the waiter task when the container ends.
    ended: Arc<Mutex<Option<Ended>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Container {
    /// Watches a started (or adopted) container: a waiter records its end, a pump copies its
    /// log into `dir/logs` in the process driver's format.
    pub fn watch(engine: Engine, id: String, pid: Option<u32>, dir: &Path) -> Container {
        let ended = Arc::new(Mutex::new(None));
        let c = Container {
            engine,
            id,
            pid,
            ended,
        };
        let (engine, id, cell) = (c.engine.clone(), c.id.clone(), c.ended.clone());
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            let end = loop {
                match engine.wait_exit(&id).await {
                    Ok(State::Running) | Err(_) => {
                        // The engine restarted or the connection broke: ask again.
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                    Ok(other) => break other,
                }
            };
            *cell.lock().unwrap_or_else(|p| p.into_inner()) = Some(ended_from(&end));
        });
        tokio::spawn(pump_logs(c.engine.clone(), c.id.clone(), dir.join("logs")));
        c
    }

    fn ended(&self) -> Option<Ended> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
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

impl Handle {
    pub fn pid(&self) -> Option<u32> {
        match self {
            Handle::Process(i) => Some(i.pid as u32),
            Handle::Container(c) => c.pid,
        }
    }

    pub fn container_id(&self) -> Option<&str> {
        match self {
            Handle::Container(c) => Some(&c.id),
            Handle::Process(_) => None,
        }
    }

    /// Running, or how it ended.
    pub async fn status(&self) -> Status {
        match self {
            Handle::Process(i) => {
                let i = i.clone();
                tokio::task::spawn_blocking(move || i.status())
                    .await
                    .unwrap_or(Status::Lost)
            }
            Handle::Container(c) => match c.ended() {
                Some(e) => Status::Exited(e.exit),
                None => Status::Running,
            },
        }
    }

    /// Whether the engine reported an OOM kill (containers only; processes: see the cgroup).
    pub fn container_oom_killed(&self) -> bool {
        matches!(self, Handle::Container(c) if c.ended().is_some_and(|e| e.oom_killed))
    }

    /// Stop signal, SIGKILL after `grace`; a container is removed too.
    pub async fn stop(&self, signal: Signal, grace: Duration) {
        match self {
            Handle::Process(i) => {
                let i = i.clone();
                let _ = tokio::task::spawn_blocking(move || i.stop(signal, grace)).await;
            }
            Handle::Container(c) => {
                if let Err(e) = c.engine.stop(&c.id, signal.as_str(), grace).await {
                    tracing::warn!(container = %c.id, "stopping: {e}");
                }
            }
        }
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
    let last_ms = last_record_ms(&logs_dir.join(driver::files::LOG));
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

/// Time of the last record of a log file (0 when empty or missing).
fn last_record_ms(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find_map(|l| driver::parse_log_line(l).map(|r| r.time_ms))
        })
        .unwrap_or(0)
}
