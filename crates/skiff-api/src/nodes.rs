//! Nodes and their agents: registration, heartbeats, allocations (long poll), reports, and
//! draining an instance before its stop signal. The deciding is `skiff_control`'s; this
//! module is HTTP only.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use skiff_client::{
    Allocations, Drained, LabelChange, NodeRegistration, PollQuery, Report, ReportAnswer,
    StackFilter, UnplacedView,
};
use skiff_control::ControlError;
use skiff_model::{Allocation, Node, NodeStatus};

use crate::catalog::wait_param;
use crate::{ApiError, ApiPath, ApiQuery, ApiState, Body, parse_instance_id};

/// Longest an allocations long poll waits.
const MAX_WAIT: Duration = Duration::from_secs(300);

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::UnknownNode(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "node_not_found", e.to_string())
            }
            ControlError::NameTaken { .. } => {
                ApiError::new(StatusCode::CONFLICT, "node_name_taken", e.to_string())
            }
            ControlError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
            }
            ControlError::NoRollout(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "rollout_not_found", e.to_string())
            }
            ControlError::RolloutState(_) => {
                ApiError::new(StatusCode::CONFLICT, "rollout_state", e.to_string())
            }
            ControlError::Store(_) => {
                tracing::error!("{e}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    e.to_string(),
                )
            }
        }
    }
}

pub(crate) async fn list(State(s): State<ApiState>) -> Json<Vec<Node>> {
    Json(s.control.nodes())
}

/// A node by id or by name.
pub(crate) async fn get(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Node>, ApiError> {
    s.control
        .nodes()
        .into_iter()
        .find(|n| n.id == id || n.name == id)
        .map(Json)
        .ok_or_else(|| ControlError::UnknownNode(id).into())
}

pub(crate) async fn register(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    Body(reg): Body<NodeRegistration>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(s.control.register(&id, reg).await?))
}

pub(crate) async fn heartbeat(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(s.control.heartbeat(&id)?))
}

/// What the node's proxies counted per service and release (for canary analysis).
pub(crate) async fn figures(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    Body(body): Body<skiff_client::NodeFiguresBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (figures, last_requests) = body.into_parts();
    if last_requests.len() > 100_000 {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("{} last requests: at most 100000", last_requests.len()),
        ));
    }
    if figures.len() > 100_000 {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("{} entries: at most 100000", figures.len()),
        ));
    }
    let n = figures.len();
    s.control.node_figures(&id, figures)?;
    s.control.node_last_requests(&id, last_requests)?;
    Ok(Json(serde_json::json!({ "accepted": n })))
}

pub(crate) async fn allocations(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PollQuery>,
) -> Result<Json<Allocations>, ApiError> {
    let wait = wait_param(q.wait.as_deref(), Duration::ZERO, MAX_WAIT)?;
    Ok(Json(s.control.allocations(&id, q.index, wait).await?))
}

pub(crate) async fn all_allocations(State(s): State<ApiState>) -> Json<Vec<Allocation>> {
    Json(s.control.all_allocations())
}

pub(crate) async fn report(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    Body(report): Body<Report>,
) -> Result<Json<ReportAnswer>, ApiError> {
    Ok(Json(s.control.report(&id, report).await?))
}

#[derive(Deserialize)]
pub(crate) struct DrainQuery {
    #[serde(default)]
    timeout_ms: u64,
}

pub(crate) async fn drain(
    State(s): State<ApiState>,
    ApiPath((env, stack, instance)): ApiPath<(String, String, String)>,
    ApiQuery(q): ApiQuery<DrainQuery>,
) -> Result<Json<Drained>, ApiError> {
    let id = parse_instance_id(&env, &stack, &instance)?;
    let timeout = Duration::from_millis(q.timeout_ms).min(Duration::from_secs(300));
    Ok(Json(s.control.drain(&id, timeout).await))
}

pub(crate) async fn drain_node(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(s.control.set_status(&id, NodeStatus::Draining).await?))
}

pub(crate) async fn undrain_node(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(s.control.set_status(&id, NodeStatus::Ready).await?))
}

pub(crate) async fn label_node(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    Body(change): Body<LabelChange>,
) -> Result<Json<Node>, ApiError> {
    if let Some(k) = change.set.keys().find(|k| k.is_empty()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("label key {k:?} is empty"),
        ));
    }
    Ok(Json(
        s.control
            .set_labels(&id, change.set, &change.remove)
            .await?,
    ))
}

/// Work the last planner pass could place nowhere (optionally of one stack), with reasons.
pub(crate) async fn unplaced(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<StackFilter>,
) -> Json<Vec<UnplacedView>> {
    Json(
        s.control
            .unplaced()
            .into_iter()
            .filter(|u| q.env.as_ref().is_none_or(|e| &u.stack.env == e))
            .filter(|u| q.stack.as_ref().is_none_or(|st| &u.stack.stack == st))
            .map(view)
            .collect(),
    )
}

/// Unplaced work of one stack.
pub(crate) fn unplaced_of(s: &ApiState, stack: &skiff_model::StackKey) -> Vec<UnplacedView> {
    s.control
        .unplaced()
        .into_iter()
        .filter(|u| &u.stack == stack)
        .map(view)
        .collect()
}

fn view(u: skiff_scheduler::Unplaced) -> UnplacedView {
    UnplacedView {
        env: u.stack.env,
        stack: u.stack.stack,
        service: u.service,
        missing: u.missing,
        reason: u.reason,
    }
}
