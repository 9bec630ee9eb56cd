//! The instance log format every driver writes into an instance's `logs/` directory, so that
//! `skiff logs` reads one format whatever ran the workload: one record per line,
//! `<unix-ms> <o|e> <text>` (`o` stdout, `e` stderr), rotated to `output.log.1` … `.N`.
//! `skiff logs --since` filters by time without another index.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The directory of an instance's logs, inside its instance directory.
pub const LOG_DIR: &str = "logs";
/// The current log file in [`LOG_DIR`].
pub const LOG: &str = "output.log";

/// One record of an instance log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRecord<'a> {
    pub time_ms: u64,
    /// `o` for stdout, `e` for stderr.
    pub stream: char,
    /// The line, without its line break.
    pub text: &'a str,
}

/// Reads a log record (`<unix-ms> <o|e> <text>`).
pub fn parse_log_line(line: &str) -> Option<LogRecord<'_>> {
    let (ts, rest) = line.split_once(' ')?;
    let (stream, text) = rest.split_once(' ').unwrap_or((rest, ""));
    let stream = match stream {
        "o" => 'o',
        "e" => 'e',
        _ => return None,
    };
    Some(LogRecord {
        time_ms: ts.parse().ok()?,
        stream,
        text: text.trim_end_matches(['\n', '\r']),
    })
}

/// Time of the last record of a log file (0 when empty or missing).
pub fn last_record_ms(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find_map(|l| parse_log_line(l).map(|r| r.time_ms))
        })
        .unwrap_or(0)
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
        let path = dir.join(LOG);
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
        self.dir.join(format!("{}.{n}", LOG))
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let _ = fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let _ = fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        fs::rename(self.dir.join(LOG), self.rotated(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(LOG))?;
        self.size = 0;
        Ok(())
    }

    /// Writes one line as `<unix-ms> <o|e> <text>` (with a line break, whether `line` ends
    /// with one or not).
    pub fn write_line(&mut self, time_ms: u64, tag: u8, line: &[u8]) {
        let mut record = Vec::with_capacity(line.len() + 18);
        record.extend_from_slice(time_ms.to_string().as_bytes());
        record.push(b' ');
        record.push(tag);
        record.push(b' ');
        record.extend_from_slice(line);
        if line.last() != Some(&b'\n') {
            record.push(b'\n');
        }
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
