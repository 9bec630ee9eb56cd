//! The agent's own listener (port 7701 by default, on the node address): what only the node
//! that runs an instance can do. The server proxies `skiff logs/exec/kill/status` here; it
//! reads no node's disk.
//!
//! ```text
//!   GET  /v1/agent/instances/{env}/{stack}/{instance}/logs?follow=&since_ms=
//!   GET  /v1/agent/instances/{env}/{stack}/{instance}/stats
//!   POST /v1/agent/instances/{env}/{stack}/{instance}/exec    {"cmd": [...]}
//!   POST /v1/agent/instances/{env}/{stack}/{instance}/signal  {"signal": "HUP"}
//!   POST /v1/agent/envs/{env}/copy-data                       {"to": "B"}
//!   DELETE /v1/agent/envs/{env}/volumes
//! ```
//!
//! Logs are the instance's records (`<unix-ms> <o|e> <text>` lines), oldest first. Without
//! `follow` the answer holds the rotated files and the current one; with it, the stream
//! continues with new records (polling every 100 ms, following rotation) until the
//! instance's directory goes away or the client disconnects. Errors are `{code, message}`.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use skiff_driver_process::{files, parse_log_line};
use skiff_model::{InstanceId, InstanceStats};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::Agent;

use skiff_client::LogQuery;

/// A command to run in an instance.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
}

/// What a command run in an instance did.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    pub exit_code: i64,
    pub output: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SignalRequest {
    pub signal: String,
}

/// An error answer: `{code, message}` with its status.
pub struct AgentError(StatusCode, &'static str, String);

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(serde_json::json!({"code": self.1, "message": self.2})),
        )
            .into_response()
    }
}

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route(
            "/v1/agent/instances/{env}/{stack}/{instance}/logs",
            get(instance_logs),
        )
        .route(
            "/v1/agent/instances/{env}/{stack}/{instance}/stats",
            get(stats),
        )
        .route(
            "/v1/agent/instances/{env}/{stack}/{instance}/exec",
            post(exec),
        )
        .route(
            "/v1/agent/instances/{env}/{stack}/{instance}/signal",
            post(signal),
        )
        .route(
            "/v1/agent/instances/{env}/{stack}/{instance}/drain",
            post(drain),
        )
        .route("/v1/agent/envs/{env}/copy-data", post(copy_data))
        .route("/v1/agent/envs/{env}/volumes", delete(remove_data))
        .with_state(agent)
}

fn instance_id(env: &str, stack: &str, instance: &str) -> Result<InstanceId, AgentError> {
    format!("{env}/{stack}/{instance}")
        .parse()
        .map_err(|e: skiff_model::NameError| {
            AgentError(StatusCode::BAD_REQUEST, "invalid_name", e.to_string())
        })
}

/// This node's volumes of `env` copied into environment `to` (`skiff env clone --with-data`).
async fn copy_data(
    State(agent): State<Arc<Agent>>,
    UrlPath(env): UrlPath<String>,
    Json(req): Json<skiff_client::CopyDataRequest>,
) -> Result<Json<skiff_client::CopiedData>, AgentError> {
    match agent.copy_env_data(&env, &req.to).await {
        Ok(volumes) => Ok(Json(skiff_client::CopiedData { volumes })),
        Err(e) => Err(AgentError(StatusCode::CONFLICT, "copy_failed", e)),
    }
}

/// This node's volumes of `env` removed (`skiff env rm`).
async fn remove_data(
    State(agent): State<Arc<Agent>>,
    UrlPath(env): UrlPath<String>,
) -> Result<StatusCode, AgentError> {
    match agent.remove_env_data(&env).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(e) => Err(AgentError(StatusCode::CONFLICT, "remove_failed", e)),
    }
}

async fn stats(
    State(agent): State<Arc<Agent>>,
    UrlPath((env, stack, instance)): UrlPath<(String, String, String)>,
) -> Result<Json<InstanceStats>, AgentError> {
    let id = instance_id(&env, &stack, &instance)?;
    agent.stats(&id).await.map(Json).ok_or_else(|| {
        AgentError(
            StatusCode::NOT_FOUND,
            "instance_not_found",
            format!("{id} does not run here"),
        )
    })
}

async fn exec(
    State(agent): State<Arc<Agent>>,
    UrlPath((env, stack, instance)): UrlPath<(String, String, String)>,
    Json(req): Json<ExecRequest>,
) -> Result<Json<ExecResult>, AgentError> {
    let id = instance_id(&env, &stack, &instance)?;
    let (exit_code, output) = agent
        .exec(&id, &req.cmd)
        .await
        .map_err(|e| AgentError(StatusCode::CONFLICT, "exec_failed", e.to_string()))?;
    Ok(Json(ExecResult { exit_code, output }))
}

async fn signal(
    State(agent): State<Arc<Agent>>,
    UrlPath((env, stack, instance)): UrlPath<(String, String, String)>,
    Json(req): Json<SignalRequest>,
) -> Result<Json<serde_json::Value>, AgentError> {
    let id = instance_id(&env, &stack, &instance)?;
    agent
        .signal(&id, &req.signal)
        .await
        .map_err(|e| AgentError(StatusCode::BAD_REQUEST, "signal_failed", e.to_string()))?;
    Ok(Json(serde_json::json!({})))
}

/// Withdraws an instance from this node's proxies (its copy of the catalog may not have
/// heard yet) and waits until none of them has a request or connection on it.
async fn drain(
    State(agent): State<Arc<Agent>>,
    UrlPath((env, stack, instance)): UrlPath<(String, String, String)>,
    axum::extract::Query(q): axum::extract::Query<skiff_client::DrainQuery>,
) -> Result<Json<skiff_client::Drained>, AgentError> {
    let id = instance_id(&env, &stack, &instance)?;
    let timeout = Duration::from_millis(q.timeout_ms.min(30_000));
    if let Some(index) = q.index {
        agent.withdrawals.hold(&id, index);
    }
    Ok(Json(match agent.catalog().remove(&id) {
        None => skiff_client::Drained {
            drained: true,
            in_flight: 0,
        },
        Some(t) => skiff_client::Drained {
            drained: t.drained(timeout).await,
            in_flight: t.in_flight(),
        },
    }))
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

async fn instance_logs(
    State(agent): State<Arc<Agent>>,
    UrlPath((env, stack, instance)): UrlPath<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, AgentError> {
    let id = instance_id(&env, &stack, &instance)?;
    let dir = agent.instance_dir(&id);
    let log_dir = dir.join(files::LOG_DIR);
    if !log_dir.is_dir() {
        return Err(AgentError(
            StatusCode::NOT_FOUND,
            "instance_not_found",
            format!("no logs for {id} here"),
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
