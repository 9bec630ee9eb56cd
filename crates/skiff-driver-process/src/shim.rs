//! The per-instance shim (`skiff __shim <dir>`): reads its launch spec on stdin, starts the
//! workload, says so on stdout (then lets go of both), copies the workload's output into
//! rotated log files, and records how it ended.
//!
//! Log format, one record per line: `<unix-ms> <o|e> <text>` (`o` stdout, `e` stderr), so
//! `skiff logs --since` can filter by time without another index.
//!
//! It is plain blocking code on one thread (a poll over the workload's two pipes and its
//! pidfd), started once per instance; it holds no connection to the agent, so the agent can
//! restart freely.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{ExitStatus, LaunchSpec, files, now_ms, write_atomic};

/// Runs the shim for the instance in `dir`; returns the shim's own exit code.
pub fn run(dir: &Path) -> i32 {
    let record = |exit: &ExitStatus| {
        let json = serde_json::to_vec(exit).expect("exit status serializes");
        let _ = write_atomic(&dir.join(files::EXIT), &json);
    };
    let failed = |error: String| {
        record(&ExitStatus {
            code: None,
            signal: None,
            error: Some(error),
            time_ms: now_ms(),
        });
        1
    };
    let mut input = Vec::with_capacity(4096);
    let spec: LaunchSpec = match std::io::stdin()
        .lock()
        .read_to_end(&mut input)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice(&input).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => return failed(format!("reading the launch spec on stdin: {e}")),
    };
    let Some((program, args)) = spec.argv.split_first() else {
        return failed("the command is empty".into());
    };
    let mut log = match LogWriter::open(
        &dir.join(files::LOG_DIR),
        spec.max_log_bytes,
        spec.keep_logs,
    ) {
        Ok(l) => l,
        Err(e) => return failed(format!("opening logs: {e}")),
    };
    if let Err(e) = fs::create_dir_all(&spec.cwd) {
        return failed(format!(
            "creating working directory {}: {e}",
            spec.cwd.display()
        ));
    }

    // Opened here, written in the child: it is in its cgroups before its program runs, so
    // not one page or fork of the workload escapes its limits.
    let mut cgroup_files = Vec::with_capacity(spec.cgroup_procs.len());
    for path in &spec.cgroup_procs {
        match OpenOptions::new().write(true).open(path) {
            Ok(f) => cgroup_files.push(OwnedFd::from(f)),
            Err(e) => return failed(format!("joining cgroup {}: {e}", path.display())),
        }
    }

    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if !cgroup_files.is_empty() {
        join_cgroups_before_exec(&mut cmd, cgroup_files);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("{program}: {e}")),
    };
    let pids = format!("{} {}", child.id(), std::process::id());
    if let Err(e) = write_atomic(&dir.join(files::CHILD_PID), pids.as_bytes()) {
        let _ = child.kill();
        return failed(e.to_string());
    }
    report_started(child.id());
    let streams = [
        child
            .stdout
            .take()
            .map(|s| Stream::new(OwnedFd::from(s), b'o')),
        child
            .stderr
            .take()
            .map(|s| Stream::new(OwnedFd::from(s), b'e')),
    ];
    let exited = crate::exit_fd(child.id() as i32);
    copy_output(
        streams.into_iter().flatten().collect(),
        exited,
        &mut log,
        &mut child,
    );
    let status = child.wait();
    log.flush();
    let exit = match status {
        Ok(s) => ExitStatus {
            code: s.code(),
            signal: s.signal(),
            error: None,
            time_ms: now_ms(),
        },
        Err(e) => ExitStatus {
            code: None,
            signal: None,
            error: Some(format!("waiting for the workload: {e}")),
            time_ms: now_ms(),
        },
    };
    record(&exit);
    0
}

/// Tells the agent that the workload runs, then points stdin and stdout at /dev/null: the
/// agent may be gone by the time the workload ends, and the shim must not hold its pipes.
fn report_started(pid: u32) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{} {pid}", crate::STARTED).and_then(|()| out.flush());
    drop(out);
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
    }
}

/// Makes the child write `0` (itself) to each `cgroup.procs` between fork and exec.
#[allow(unsafe_code)]
fn join_cgroups_before_exec(cmd: &mut Command, files: Vec<OwnedFd>) {
    // SAFETY: the closure runs between fork and exec, where only async-signal-safe calls are
    // allowed: it calls write(2) on descriptors opened before the fork and builds its error
    // from an errno, without allocating or taking a lock.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &files {
                nix::unistd::write(fd, b"0")
                    .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            }
            Ok(())
        });
    }
}

/// Longest line kept whole; longer ones are split.
const MAX_LINE: usize = 16 * 1024;

/// How long output is still copied after the workload ended: a grandchild that keeps the
/// pipes open must not keep the shim (and the exit record) waiting.
const DRAIN: Duration = Duration::from_secs(1);

/// One output pipe of the workload and its unfinished line.
struct Stream {
    fd: OwnedFd,
    tag: u8,
    pending: Vec<u8>,
    open: bool,
}

impl Stream {
    fn new(fd: OwnedFd, tag: u8) -> Stream {
        Stream {
            fd,
            tag,
            pending: Vec::new(),
            open: true,
        }
    }

    /// Reads what is there; writes every whole line (and over-long pieces) to the log, and
    /// the rest too once the pipe is closed.
    fn pump(&mut self, log: &mut LogWriter) {
        let mut buf = [0u8; 16 * 1024];
        match rustix::io::read(&self.fd, &mut buf) {
            Ok(0) | Err(rustix::io::Errno::BADF | rustix::io::Errno::IO) => self.open = false,
            Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            Err(_) => return, // EINTR, EAGAIN: poll again
        }
        let now = now_ms();
        let mut start = 0;
        while let Some(end) = self.pending[start..]
            .iter()
            .take(MAX_LINE)
            .position(|b| *b == b'\n')
            .map(|i| start + i + 1)
            .or_else(|| (self.pending.len() - start >= MAX_LINE).then_some(start + MAX_LINE))
        {
            log.write_line(now, self.tag, &self.pending[start..end]);
            start = end;
        }
        if !self.open && start < self.pending.len() {
            let end = self.pending.len();
            log.write_line(now, self.tag, &self.pending[start..end]);
            start = end;
        }
        self.pending.drain(..start);
    }
}

/// Copies the workload's output into the log, one thread for both pipes: until both are
/// closed, or [`DRAIN`] after the workload ended (seen on `exited`, its pidfd, or by polling
/// where the kernel has none).
fn copy_output(
    mut streams: Vec<Stream>,
    exited: Option<OwnedFd>,
    log: &mut LogWriter,
    child: &mut std::process::Child,
) {
    use rustix::event::{PollFd, PollFlags};
    let mut deadline: Option<std::time::Instant> = None;
    loop {
        if streams.iter().all(|s| !s.open) {
            return;
        }
        if deadline.is_none() && exited.is_none() && matches!(child.try_wait(), Ok(Some(_))) {
            deadline = Some(std::time::Instant::now() + DRAIN);
        }
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return;
                }
                Some(left)
            }
            None if exited.is_none() => Some(Duration::from_millis(100)),
            None => None,
        };
        // Slot k of the poll set is stream `open[k]`; the pidfd, when watched, comes last.
        let open: Vec<usize> = (0..streams.len()).filter(|&i| streams[i].open).collect();
        let mut fds: Vec<PollFd<'_>> = open
            .iter()
            .map(|&i| PollFd::new(&streams[i].fd, PollFlags::IN))
            .collect();
        let watch_exit = deadline.is_none() && exited.is_some();
        if let (true, Some(pidfd)) = (watch_exit, exited.as_ref()) {
            fds.push(PollFd::new(pidfd, PollFlags::IN));
        }
        if crate::poll_for(&mut fds, timeout).is_err() {
            return;
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        if watch_exit && ready.last() == Some(&true) {
            deadline = Some(std::time::Instant::now() + DRAIN);
        }
        for (&i, _) in open.iter().zip(&ready).filter(|(_, r)| **r) {
            streams[i].pump(log);
        }
    }
}

pub use skiff_driver::log::LogWriter;
