//! What only the node running an instance can do — logs, exec, signals, stats — asked of
//! that node's agent on its own listener. The server reads no node's disk.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use skiff_client::{Client, ClientError};
use skiff_control::Control;
use skiff_model::{InstanceId, InstanceStats};

use skiff_client::Exec;

use crate::{
    ApiError, ApiPath, ApiQuery, ApiState, Body as JsonBody, BoxFuture, InstanceError, Instances,
};

/// [`Instances`] through the agents' listeners.
pub struct ViaAgents {
    control: Arc<Control>,
}

impl ViaAgents {
    pub fn new(control: Arc<Control>) -> ViaAgents {
        ViaAgents { control }
    }
}

/// A client of the agent that runs `id`, or why there is none.
fn agent_of(control: &Control, id: &InstanceId) -> Result<Client, InstanceError> {
    let node = control
        .node_of(id)
        .ok_or_else(|| InstanceError::NoNode(id.clone()))?;
    if node.agent_port == 0 {
        return Err(InstanceError::NoListener(node.name));
    }
    Ok(Client::of_agent(&node)?)
}

impl Instances for ViaAgents {
    fn stats(&self, id: InstanceId) -> BoxFuture<'static, Option<InstanceStats>> {
        let control = self.control.clone();
        Box::pin(async move {
            let agent = agent_of(&control, &id).ok()?;
            agent.agent_stats(&id).await.ok()
        })
    }

    fn exec(
        &self,
        id: InstanceId,
        cmd: Vec<String>,
    ) -> BoxFuture<'static, Result<Exec, InstanceError>> {
        let control = self.control.clone();
        Box::pin(async move {
            let agent = agent_of(&control, &id)?;
            let (exit_code, output) = agent.agent_exec(&id, &cmd).await?;
            Ok(Exec { exit_code, output })
        })
    }

    fn signal(
        &self,
        id: InstanceId,
        signal: String,
    ) -> BoxFuture<'static, Result<(), InstanceError>> {
        let control = self.control.clone();
        Box::pin(async move {
            let agent = agent_of(&control, &id)?;
            Ok(agent.agent_signal(&id, &signal).await?)
        })
    }
}

use skiff_client::LogQuery;

/// `GET …/instances/{instance}/logs?follow=&since_ms=`: the records as the instance's agent
/// streams them (with `follow`, until the instance is gone or the client leaves).
pub async fn instance_logs(
    State(s): State<ApiState>,
    ApiPath((env, stack, instance)): ApiPath<(String, String, String)>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let id = crate::parse_instance_id(&env, &stack, &instance)?;
    let not_found = |why: String| ApiError::new(StatusCode::NOT_FOUND, "instance_not_found", why);
    let agent = agent_of(&s.control, &id).map_err(|e| not_found(e.to_string()))?;
    match agent.agent_logs(&id, q.follow, q.since_ms).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Ok(Response::from_parts(parts, Body::new(body)))
        }
        Err(ClientError::Api {
            status, message, ..
        }) if status == StatusCode::NOT_FOUND => Err(not_found(message)),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "agent_unreachable",
            e.to_string(),
        )),
    }
}

/// `POST /v1/envs/{env}/copy-data {"to": "B"}`: every node holding volumes of `env` copies
/// them into `B`'s directories, holding the instances that use them still (frozen or stopped,
/// per service) for the copy. Nodes are asked one after another; the first that fails ends
/// the request with its reason (the copies already made stay).
pub async fn copy_env_data(
    State(s): State<ApiState>,
    ApiPath(env): ApiPath<String>,
    JsonBody(req): JsonBody<skiff_client::CopyDataRequest>,
) -> Result<axum::Json<skiff_client::CopiedData>, ApiError> {
    copy_data(&s, &env, &req.to).await.map(axum::Json)
}

/// The nodes that can hold volumes (up, with an agent listener), by name.
fn data_nodes(s: &ApiState) -> Vec<skiff_model::Node> {
    let mut nodes: Vec<_> = s
        .control
        .nodes()
        .into_iter()
        .filter(|n| n.status != skiff_model::NodeStatus::Down && n.agent_port != 0)
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// Every node's volumes of `env` removed (`skiff env rm`); the first node that fails ends it
/// with its reason.
pub(crate) async fn remove_data(s: &ApiState, env: &str) -> Result<(), ApiError> {
    for node in data_nodes(s) {
        let agent = Client::of_agent(&node).map_err(|e| {
            ApiError::new(StatusCode::BAD_GATEWAY, "agent_unreachable", e.to_string())
        })?;
        agent.agent_remove_env_data(env).await.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "remove_failed",
                format!("removing the volumes of {env} on node {}: {e}", node.name),
            )
        })?;
    }
    Ok(())
}

/// What `copy-data` does (also `env clone --with-data`).
pub(crate) async fn copy_data(
    s: &ApiState,
    env: &str,
    to: &str,
) -> Result<skiff_client::CopiedData, ApiError> {
    let req = skiff_client::CopyDataRequest { to: to.to_string() };
    let env = env.to_string();
    // Environment names follow the stack key's rules.
    crate::stack_key(&env, "copy")?;
    crate::stack_key(&req.to, "copy")?;
    if env == req.to {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("cannot copy environment {env:?} onto itself"),
        ));
    }
    let mut volumes = Vec::new();
    for node in data_nodes(s) {
        let agent = Client::of_agent(&node).map_err(|e| {
            ApiError::new(StatusCode::BAD_GATEWAY, "agent_unreachable", e.to_string())
        })?;
        match agent.agent_copy_env_data(&env, &req.to).await {
            Ok(copied) => volumes.extend(copied.volumes),
            Err(ClientError::Api { message, .. }) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "copy_failed",
                    format!("node {}: {message}", node.name),
                ));
            }
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "agent_unreachable",
                    format!("node {}: {e}", node.name),
                ));
            }
        }
    }
    volumes.sort_by(|a, b| (&a.stack, &a.volume, &a.node).cmp(&(&b.stack, &b.volume, &b.node)));
    Ok(skiff_client::CopiedData { volumes })
}
