//! The per-instance shim (`skiff __shim <dir>`): starts the workload, copies its output into
//! rotated log files, and records how it ended.
//!
//! Log format, one record per line: `<unix-ms> <o|e> <text>` (`o` stdout, `e` stderr), so
//! `skiff logs --since` can filter by time without another index.
//!
//! It is plain blocking code with two copy threads, started once per instance; it holds no
//! connection to the agent, so the agent can restart freely.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
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
    if let Err(e) = write_atomic(
        &dir.join(files::SHIM_PID),
        std::process::id().to_string().as_bytes(),
    ) {
        return failed(e.to_string());
    }
    let spec: LaunchSpec = match fs::read(dir.join(files::SPEC))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => return failed(format!("reading {}: {e}", files::SPEC)),
    };
    let Some((program, args)) = spec.argv.split_first() else {
        return failed("the command is empty".into());
    };
    let log = match LogWriter::open(
        &dir.join(files::LOG_DIR),
        spec.max_log_bytes,
        spec.keep_logs,
    ) {
        Ok(l) => Arc::new(Mutex::new(l)),
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
    if let Err(e) = write_atomic(
        &dir.join(files::CHILD_PID),
        child.id().to_string().as_bytes(),
    ) {
        let _ = child.kill();
        return failed(e.to_string());
    }
    let copiers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| (b'o', Box::new(s) as Box<dyn Read + Send>)),
        child
            .stderr
            .take()
            .map(|s| (b'e', Box::new(s) as Box<dyn Read + Send>)),
    ]
    .into_iter()
    .flatten()
    .map(|(tag, stream)| {
        let log = Arc::clone(&log);
        std::thread::spawn(move || copy_lines(stream, tag, &log))
    })
    .collect();

    let status = child.wait();
    // Give the copiers a moment to drain what the workload wrote last; a grandchild that
    // keeps the pipes open must not keep the shim (and the exit record) waiting.
    for _ in 0..100 {
        if copiers.iter().all(|c| c.is_finished()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    log.lock().unwrap_or_else(|p| p.into_inner()).flush();
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

/// Copies `stream` line by line into the log, each line stamped with the time it was read.
fn copy_lines(stream: Box<dyn Read + Send>, tag: u8, log: &Mutex<LogWriter>) {
    let mut reader = BufReader::with_capacity(MAX_LINE, stream);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                l.write_line(now_ms(), tag, &line);
            }
        }
    }
}

/// Appends to `output.log`, rotating it to `output.log.1` … `.keep` when it gets too big.
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    size: u64,
    max: u64,
    keep: u32,
}

impl LogWriter {
    pub fn open(dir: &Path, max: u64, keep: u32) -> std::io::Result<LogWriter> {
        fs::create_dir_all(dir)?;
        let path = dir.join(files::LOG);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file,
            size,
            max: if max == 0 { 10 << 20 } else { max },
            keep: keep.max(1),
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{}.{n}", files::LOG))
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let _ = fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let _ = fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        fs::rename(self.dir.join(files::LOG), self.rotated(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(files::LOG))?;
        self.size = 0;
        Ok(())
    }

    /// Writes one line as `<unix-ms> <o|e> <text>`.
    pub fn write_line(&mut self, time_ms: u64, tag: u8, line: &[u8]) {
        let mut record = Vec::with_capacity(line.len() + 17);
        record.extend_from_slice(time_ms.to_string().as_bytes());
        record.push(b' ');
        record.push(tag);
        record.push(b' ');
        record.extend_from_slice(line);
        self.write(&record);
    }

    /// Writes `bytes`; log trouble never stops the workload, so errors are dropped.
    pub fn write(&mut self, bytes: &[u8]) {
        if self.size > 0 && self.size + bytes.len() as u64 > self.max {
            let _ = self.rotate();
        }
        if self.file.write_all(bytes).is_ok() {
            self.size += bytes.len() as u64;
        }
    }

    pub fn flush(&mut self) {
        let _ = self.file.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_and_keep_the_newest_files() {
        let d = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(d.path(), 10, 2).unwrap();
        for chunk in ["aaaaaaa\n", "bbbbbbb\n", "ccccccc\n", "ddddddd\n"] {
            w.write(chunk.as_bytes());
        }
        w.flush();
        let read = |name: &str| fs::read_to_string(d.path().join(name)).unwrap_or_default();
        assert_eq!(read("output.log"), "ddddddd\n");
        assert_eq!(read("output.log.1"), "ccccccc\n");
        assert_eq!(read("output.log.2"), "bbbbbbb\n");
        assert!(!d.path().join("output.log.3").exists());
    }
}
