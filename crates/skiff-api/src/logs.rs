//! `GET /v1/envs/{env}/stacks/{stack}/instances/{instance}/logs?follow=&since_ms=`: an
//! instance's log records (`<unix-ms> <o|e> <text>` lines), oldest first.
//!
//! Without `follow` the answer holds the rotated files and the current one; with it, the
//! stream continues with new records (polling every 100 ms, following rotation) until the
//! instance's directory goes away or the client disconnects.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use skiff_driver_process::{files, parse_log_line};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::{ApiError, ApiPath, ApiQuery, ApiState, stack_key};

#[derive(Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    since_ms: u64,
}

/// Keeps complete records at or after `since_ms`; a trailing partial line is carried over.
fn filter(buf: &mut Vec<u8>, chunk: &[u8], since_ms: u64) -> Vec<u8> {
    buf.extend_from_slice(chunk);
    let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
        return Vec::new();
    };
    let complete: Vec<u8> = buf.drain(..=end).collect();
    if since_ms == 0 {
        return complete;
    }
    let mut out = Vec::with_capacity(complete.len());
    for line in complete.split_inclusive(|b| *b == b'\n') {
        let keep = std::str::from_utf8(line)
            .ok()
            .and_then(parse_log_line)
            .is_none_or(|r| r.time_ms >= since_ms);
        if keep {
            out.extend_from_slice(line);
        }
    }
    out
}

pub async fn instance_logs(
    State(s): State<ApiState>,
    ApiPath((env, stack, instance)): ApiPath<(String, String, String)>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let key = stack_key(&env, &stack)?;
    if instance.contains('/') || instance.contains("..") || instance.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            format!("bad instance name {instance:?}"),
        ));
    }
    let dir = s
        .data_dir
        .join("instances")
        .join(&key.env)
        .join(&key.stack)
        .join(&instance);
    let log_dir = dir.join(files::LOG_DIR);
    if !log_dir.is_dir() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "instance_not_found",
            format!("no logs for {key}/{instance}"),
        ));
    }
    let current = log_dir.join(files::LOG);
    // History: rotated files oldest first, then the current file up to now.
    let mut history = Vec::new();
    for n in (1..=9).rev() {
        if let Ok(b) = tokio::fs::read(log_dir.join(format!("{}.{n}", files::LOG))).await {
            history.extend_from_slice(&b);
        }
    }
    let mut offset = 0u64;
    if let Ok(b) = tokio::fs::read(&current).await {
        offset = b.len() as u64;
        history.extend_from_slice(&b);
    }
    let mut carry = Vec::new();
    let first = filter(&mut carry, &history, q.since_ms);
    let builder = Response::builder().header("content-type", "text/plain; charset=utf-8");
    if !q.follow {
        return Ok(builder.body(Body::from(first)).expect("valid response"));
    }
    let state = Follow {
        dir,
        path: current,
        offset,
        carry,
        since_ms: q.since_ms,
        first: Some(first),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if let Some(first) = st.first.take()
            && !first.is_empty()
        {
            return Some((Ok::<Bytes, std::io::Error>(Bytes::from(first)), st));
        }
        loop {
            let chunk = st.poll().await;
            if let Some(c) = chunk {
                if !c.is_empty() {
                    return Some((Ok(Bytes::from(c)), st));
                }
            } else {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok(builder
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

struct Follow {
    dir: PathBuf,
    path: PathBuf,
    offset: u64,
    carry: Vec<u8>,
    since_ms: u64,
    first: Option<Vec<u8>>,
}

impl Follow {
    /// New filtered bytes (possibly none); `None` once the instance is gone.
    async fn poll(&mut self) -> Option<Vec<u8>> {
        if !Path::new(&self.dir).is_dir() {
            return None;
        }
        let Ok(mut f) = tokio::fs::File::open(&self.path).await else {
            return Some(Vec::new());
        };
        let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Rotated: the new file starts from zero.
            self.offset = 0;
        }
        if len == self.offset {
            return Some(Vec::new());
        }
        let mut buf = Vec::with_capacity((len - self.offset) as usize);
        if f.seek(SeekFrom::Start(self.offset)).await.is_err()
            || f.read_to_end(&mut buf).await.is_err()
        {
            return Some(Vec::new());
        }
        self.offset += buf.len() as u64;
        Some(filter(&mut self.carry, &buf, self.since_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::filter;

    #[test]
    fn since_keeps_complete_recent_records_and_carries_partial_lines() {
        let mut carry = Vec::new();
        let out = filter(&mut carry, b"100 o old\n200 o new\n300 e par", 150);
        assert_eq!(out, b"200 o new\n");
        assert_eq!(carry, b"300 e par");
        let out = filter(&mut carry, b"tial\n", 150);
        assert_eq!(out, b"300 e partial\n");
    }
}
