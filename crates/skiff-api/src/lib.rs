//! The control plane's HTTP/JSON API. The OpenAPI description is `docs/openapi.json`, served
//! at `/openapi.json`. The request and answer types are `skiff_client`'s (its `wire` module):
//! the handlers here and the client share them.
//!
//! Every error is a 4xx with a stable `code` and a `message` (`{"code":"stack_not_found",…}`);
//! clients match on `code`. A store failure is the only 5xx (`store_error`).
//!
//! **Invariant:** a `201` for a release means it is durably stored (the store's kv fsyncs it
//! before answering), so an acknowledged release survives `kill -9`.

mod agents;
mod catalog;
mod envs;
mod nodes;
pub use agents::ViaAgents;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use skiff_client::{
    ErrorBody, EventQuery, Exec, ExecRequest, InstanceStatus, NewRelease, PlacementPreview,
    ReleaseSummary, ScaleRequest, ServiceControlView, ServiceStatus, SignalRequest, StackFilter,
    StackView,
};
use skiff_control::Steer;
use skiff_model::diff;
use skiff_model::{
    Author, Cause, Event, Instance, InstanceId, InstanceStats, Release, ServiceControl, StackKey,
    StackSpec,
};
use skiff_store::{StackState, Store};

/// The largest body that may carry an environment's override files (16 of 1 MiB, as JSON).
const OVERRIDES_BODY: usize = 40 << 20;

/// The longest change line a release summary carries.
const CHANGE_CHARS: usize = 200;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// What the API asks of the agent that runs an instance.
pub trait Instances: Send + Sync {
    /// Resource usage (from its cgroup, or the Docker engine).
    fn stats(&self, id: InstanceId) -> BoxFuture<'static, Option<InstanceStats>>;
    /// Runs a command in the instance (inside a container; with a process's environment and
    /// working directory): exit code and combined output.
    fn exec(
        &self,
        id: InstanceId,
        cmd: Vec<String>,
    ) -> BoxFuture<'static, Result<Exec, InstanceError>>;
    /// Sends a signal to the instance's workload (`SIGHUP` to reload).
    fn signal(
        &self,
        id: InstanceId,
        signal: String,
    ) -> BoxFuture<'static, Result<(), InstanceError>>;
}

/// Why what was asked of an instance's agent did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstanceError {
    #[error("{0} runs on no known node")]
    NoNode(InstanceId),
    #[error("the agent of node {0} has no listener")]
    NoListener(String),
    /// The agent answered, or could not be reached (`ClientError::Api` carries its answer).
    #[error("{}", agent_message(.0))]
    Agent(#[from] skiff_client::ClientError),
}

/// The agent's own words when it answered, else what went wrong reaching it.
fn agent_message(e: &skiff_client::ClientError) -> String {
    match e {
        skiff_client::ClientError::Api { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

pub type BoxFuture<'a, T> = futures_util::future::BoxFuture<'a, T>;

#[derive(Clone)]
pub struct ApiState {
    /// Releases, stacks, controls, instances and events.
    pub store: Store,
    /// Nodes, allocations and agents' reports; woken after a change of desired state.
    pub control: Arc<skiff_control::Control>,
    /// Logs, exec, signals and stats of an instance, from the agent that runs it
    /// ([`ViaAgents`]).
    pub instances: Arc<dyn Instances>,
    /// Why this server has no Docker engine, if it has none: releases with Docker services
    /// are refused up front instead of failing instance by instance.
    pub docker_unavailable: Option<String>,
    /// Ready instances per service, as DNS and the ingress see them.
    pub catalog: Arc<skiff_catalog::Catalog>,
    /// The DNS zone (for `GET /v1/dns`, what the DNS server would answer).
    pub zone: skiff_dns::Zone,
    /// The ingress's live route table (`GET /v1/routes`), when this server runs one.
    pub routes: Option<skiff_ingress::Routes>,
}

/// An error answer: HTTP status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<skiff_store::StoreError> for ApiError {
    fn from(e: skiff_store::StoreError) -> Self {
        tracing::error!("store: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            e.to_string(),
        )
    }
}

/// `Json` whose rejections are [`ApiError`]s with code `invalid_body`.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(ApiError::new(e.status(), "invalid_body", body_reason(&e))),
        }
    }
}

fn body_reason(e: &JsonRejection) -> String {
    e.body_text()
}

/// `Path` whose rejections are [`ApiError`]s with code `invalid_request`.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                e.body_text(),
            )),
        }
    }
}

/// `Query` whose rejections are [`ApiError`]s with code `invalid_request`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                e.body_text(),
            )),
        }
    }
}

fn stack_key(env: &str, stack: &str) -> Result<StackKey, ApiError> {
    StackKey::new(env, stack)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .route("/v1/stacks", get(list_stacks))
        .route("/v1/envs", get(envs::list))
        .route(
            "/v1/envs/{env}",
            get(envs::get)
                .put(envs::create)
                .delete(envs::remove)
                .layer(axum::extract::DefaultBodyLimit::max(OVERRIDES_BODY)),
        )
        .route("/v1/envs/{env}/values", post(envs::values))
        .route(
            "/v1/envs/{env}/overrides",
            axum::routing::put(envs::overrides)
                .layer(axum::extract::DefaultBodyLimit::max(OVERRIDES_BODY)),
        )
        .route("/v1/envs/{env}/down", post(envs::down))
        .route("/v1/envs/{env}/clone", post(envs::clone))
        .route(
            "/v1/envs/{env}/stacks/{stack}",
            axum::routing::delete(down_stack),
        )
        .route(
            "/v1/envs/{env}/stacks/{stack}/releases",
            post(create_release).get(list_releases),
        )
        .route(
            "/v1/envs/{env}/stacks/{stack}/plan",
            post(preview_placement),
        )
        .route("/v1/envs/{env}/stacks/{stack}/rollouts", get(list_rollouts))
        .route(
            "/v1/envs/{env}/stacks/{stack}/rollouts/{service}/{action}",
            post(steer_rollout),
        )
        .route("/v1/envs/{env}/stacks/{stack}/rollback", post(rollback))
        .route(
            "/v1/envs/{env}/stacks/{stack}/releases/{number}",
            get(get_release),
        )
        .route("/v1/envs/{env}/stacks/{stack}/scale", post(scale_service))
        .route(
            "/v1/envs/{env}/stacks/{stack}/services/{service}",
            get(service_status),
        )
        .route(
            "/v1/envs/{env}/stacks/{stack}/services/{service}/{action}",
            post(control_service),
        )
        .route("/v1/instances", get(list_instances))
        .route("/v1/nodes", get(nodes::list))
        .route(
            "/v1/nodes/{id}",
            axum::routing::put(nodes::register).get(nodes::get),
        )
        .route(
            "/v1/nodes/{id}/heartbeat",
            axum::routing::put(nodes::heartbeat),
        )
        .route("/v1/nodes/{id}/figures", axum::routing::put(nodes::figures))
        .route("/v1/nodes/{id}/allocations", get(nodes::allocations))
        .route("/v1/nodes/{id}/report", post(nodes::report))
        .route("/v1/nodes/{id}/drain", post(nodes::drain_node))
        .route("/v1/nodes/{id}/undrain", post(nodes::undrain_node))
        .route("/v1/nodes/{id}/labels", post(nodes::label_node))
        .route("/v1/allocations", get(nodes::all_allocations))
        .route("/v1/unplaced", get(nodes::unplaced))
        .route(
            "/v1/envs/{env}/stacks/{stack}/instances/{instance}/drain",
            post(nodes::drain),
        )
        .route(
            "/v1/envs/{env}/stacks/{stack}/instances/{instance}/exec",
            post(exec_instance),
        )
        .route(
            "/v1/envs/{env}/stacks/{stack}/instances/{instance}/signal",
            post(signal_instance),
        )
        .route(
            "/v1/envs/{env}/stacks/{stack}/instances/{instance}/logs",
            get(agents::instance_logs),
        )
        .route("/v1/envs/{env}/copy-data", post(agents::copy_env_data))
        .route("/v1/events", get(list_events))
        .route("/v1/catalog", get(catalog::list))
        .route("/v1/dns", get(catalog::dns))
        .route("/v1/routes", get(catalog::routes))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(state)
}

async fn list_stacks(State(s): State<ApiState>) -> Result<Json<Vec<StackView>>, ApiError> {
    Ok(Json(
        s.store
            .stacks()
            .await?
            .into_iter()
            .map(|st| StackView {
                env: st.stack.env,
                stack: st.stack.stack,
                current: st.current,
            })
            .collect(),
    ))
}

/// The release a stack runs now, or 404 `stack_not_found`.
async fn current_release(s: &ApiState, key: &StackKey) -> Result<Release, ApiError> {
    current_of(&s.store, key).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "stack_not_found",
            format!("no running stack {key}"),
        )
    })
}

/// The stack's current release, if it has one (none before the first `up` and after `down`).
async fn current_of(st: &Store, key: &StackKey) -> skiff_store::Result<Option<Release>> {
    match st.stacks().await?.into_iter().find(|s| &s.stack == key) {
        Some(StackState {
            current: Some(n), ..
        }) => st.release(key, n).await,
        _ => Ok(None),
    }
}

fn service_not_found(key: &StackKey, service: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "service_not_found",
        format!("stack {key} has no service {service:?}"),
    )
}

/// Records `spec` as the stack's new current release (durably), by `author` (`unknown` when
/// the request named nobody) and made by `cause`, and wakes the reconciler,
/// unless it equals the current release (spec and resolved source): then nothing is recorded
/// and the current release comes back with `false`, as `docker compose up -d` and
/// `nomad job run` treat an unchanged file.
async fn record_release(
    s: &ApiState,
    key: StackKey,
    spec: StackSpec,
    source: String,
    author: Option<Author>,
    cause: Cause,
) -> Result<(Release, bool), ApiError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (release, created) = match current_of(&s.store, &key).await? {
        Some(cur) if cur.spec == spec && cur.source == source => (cur, false),
        _ => {
            let author = author.unwrap_or_default();
            let r = s
                .store
                .create_release(&key, spec, source, now, author, cause)
                .await?;
            (r, true)
        }
    };
    if created {
        skiff_store::crash_point("release-stored");
        s.control.changed();
    }
    Ok((release, created))
}

/// 201 for a release just recorded, 200 for the current one an unchanged request named.
fn release_status(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

async fn create_release(
    State(s): State<ApiState>,
    ApiPath((env, stack)): ApiPath<(String, String)>,
    Body(req): Body<NewRelease>,
) -> Result<(StatusCode, Json<Release>), ApiError> {
    let key = stack_key(&env, &stack)?;
    check_spec(&s, &req.spec)?;
    envs::ensure_active(&s, &env, req.author.as_ref()).await?;
    let (release, created) =
        record_release(&s, key.clone(), req.spec, req.source, req.author, Cause::Up).await?;
    // Like `docker compose up`: a deploy runs every service, also ones stopped by hand.
    s.store
        .update_controls(&key, |c| c.values_mut().for_each(|c| c.stopped = false))
        .await?;
    s.control.changed();
    Ok((release_status(created), Json(release)))
}

/// Refuses a spec no release may have: bad names, absurd replicas or limits, unknown
/// dependencies, Docker services on a server without an engine.
fn check_spec(s: &ApiState, spec: &StackSpec) -> Result<(), ApiError> {
    for (name, svc) in &spec.services {
        if !skiff_model::valid_service_name(name) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_spec",
                format!(
                    "service name {name:?}: start with a letter or digit, then letters, \
                     digits, '_', '.' or '-' (at most 255)"
                ),
            ));
        }
        if svc.replicas > 10_000 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_spec",
                format!("service {name}: at most 10000 replicas"),
            ));
        }
        let l = &svc.limits;
        if l.cpus.is_some_and(|c| !c.is_finite() || c <= 0.0)
            || l.memory_bytes == Some(0)
            || l.pids == Some(0)
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_spec",
                format!("service {name}: limits must be positive (cpus, memory_bytes, pids)"),
            ));
        }
        for dep in svc.depends_on.keys() {
            if !spec.services.contains_key(dep) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_spec",
                    format!("service {name} depends on unknown service {dep}"),
                ));
            }
        }
    }
    if let Some(why) = &s.docker_unavailable {
        let docker: Vec<&str> = spec
            .services
            .iter()
            .filter(|(_, svc)| svc.driver == skiff_model::Driver::Docker && svc.replicas > 0)
            .map(|(n, _)| n.as_str())
            .collect();
        if !docker.is_empty() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "engine_unavailable",
                format!(
                    "services {} run on Docker, and this server has none ({why}); start \
                     dockerd, or give them x-skiff: {{driver: process}}",
                    docker.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Where a stack's spec would run if it were deployed now; nothing is recorded.
async fn preview_placement(
    State(s): State<ApiState>,
    ApiPath((env, stack)): ApiPath<(String, String)>,
    Body(req): Body<NewRelease>,
) -> Result<Json<PlacementPreview>, ApiError> {
    let key = stack_key(&env, &stack)?;
    check_spec(&s, &req.spec)?;
    Ok(Json(s.control.preview(&key, &req.spec)))
}

async fn get_release(
    State(s): State<ApiState>,
    ApiPath((env, stack, number)): ApiPath<(String, String, u64)>,
) -> Result<Json<Release>, ApiError> {
    let key = stack_key(&env, &stack)?;
    s.store
        .release(&key, number)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "release_not_found",
                format!("no release {number} of {key}"),
            )
        })
}

/// Records a new release equal to the current one but for `service`'s replica count, so
/// scaling shows in the history and can be rolled back like any release.
async fn scale_service(
    State(s): State<ApiState>,
    ApiPath((env, stack)): ApiPath<(String, String)>,
    Body(req): Body<ScaleRequest>,
) -> Result<(StatusCode, Json<Release>), ApiError> {
    let key = stack_key(&env, &stack)?;
    if req.replicas > 10_000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_spec",
            "at most 10000 replicas",
        ));
    }
    let release = current_release(&s, &key).await?;
    let mut spec = release.spec;
    let svc = spec
        .services
        .get_mut(&req.service)
        .ok_or_else(|| service_not_found(&key, &req.service))?;
    svc.replicas = req.replicas;
    let cause = Cause::Scale {
        service: req.service,
        replicas: req.replicas,
    };
    let (new, created) = record_release(&s, key, spec, release.source, req.author, cause).await?;
    Ok((release_status(created), Json(new)))
}

/// Deploys an earlier release's spec again as a new release, rolled by `rollback_config`.
async fn rollback(
    State(s): State<ApiState>,
    ApiPath((env, stack)): ApiPath<(String, String)>,
    Body(req): Body<skiff_client::RollbackRequest>,
) -> Result<(StatusCode, Json<Release>), ApiError> {
    let key = stack_key(&env, &stack)?;
    let author = req.author.unwrap_or_default();
    let release = s.control.rollback(&key, req.to, Some(author)).await?;
    Ok((StatusCode::CREATED, Json(release)))
}

/// `pause` a running rollout, `resume` a paused one, `promote` a canary's step (or switch a
/// blue-green release) or `abort` a rollout (traffic back, new instances stopped, rolled back).
async fn steer_rollout(
    State(s): State<ApiState>,
    ApiPath((env, stack, service, action)): ApiPath<(String, String, String, String)>,
) -> Result<Json<skiff_client::RolloutView>, ApiError> {
    let key = stack_key(&env, &stack)?;
    let Some(steer) = Steer::ALL.into_iter().find(|a| a.as_str() == action) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no action {action:?} (pause, resume, promote, abort)"),
        ));
    };
    let r = s.control.steer_rollout(&key, &service, steer).await?;
    Ok(Json(rollout_view(&s, &key, service, r)))
}

fn rollout_view(
    s: &ApiState,
    key: &StackKey,
    service: String,
    r: skiff_scheduler::rollout::Rollout,
) -> skiff_client::RolloutView {
    let policy = s.control.release_policy(key, r.release, &service);
    let traffic = r.traffic.as_ref().zip(policy).map(|(t, policy)| {
        let svc = skiff_catalog::ServiceKey::new(key, &service);
        let figures = |release: u64| {
            let f = s.control.release_figures(&svc, release);
            skiff_client::ReleaseFigures {
                release,
                requests: f.requests,
                errors: f.errors,
                p99_ms: f.p99_ms(),
            }
        };
        let blue_green = policy.strategy == skiff_model::ReleaseStrategy::BlueGreen;
        let steps = skiff_scheduler::traffic::step_count(&policy);
        skiff_client::TrafficView {
            strategy: if blue_green { "blue-green" } else { "canary" }.into(),
            step: (t.step + 1).min(steps),
            steps,
            weight: t.weight,
            verdict: t.verdict.clone(),
            new: figures(r.release),
            stable: figures(r.from.unwrap_or_default()),
        }
    });
    skiff_client::RolloutView {
        service,
        release: r.release,
        from: r.from,
        rollback: r.rollback,
        state: r.state.as_str().to_string(),
        reason: r.reason,
        total: r.total,
        replaced: r.replaced,
        failed: r.failed,
        in_flight: r.batch.len() as u32,
        watching: r.watching.len() as u32,
        started_ms: r.started_ms,
        traffic,
    }
}

/// Each service's last rollout (in flight or over); empty before the first change rolls.
async fn list_rollouts(
    State(s): State<ApiState>,
    ApiPath((env, stack)): ApiPath<(String, String)>,
) -> Result<Json<Vec<skiff_client::RolloutView>>, ApiError> {
    let key = stack_key(&env, &stack)?;
    Ok(Json(
        s.control
            .rollouts(&key)
            .into_iter()
            .map(|(service, r)| rollout_view(&s, &key, service, r))
            .collect(),
    ))
}

/// Every release of the stack, oldest first, each with its author and its change from the
/// release before in one line.
async fn list_releases(
    State(s): State<ApiState>,
    ApiPath((env, stack)): ApiPath<(String, String)>,
) -> Result<Json<Vec<ReleaseSummary>>, ApiError> {
    let key = stack_key(&env, &stack)?;
    let current = s
        .store
        .stacks()
        .await?
        .into_iter()
        .find(|st| st.stack == key)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "stack_not_found",
                format!("no stack {key}"),
            )
        })?
        .current;
    let releases = s.store.releases(&key).await?;
    Ok(Json(
        releases
            .iter()
            .enumerate()
            .map(|(i, r)| ReleaseSummary {
                number: r.number,
                created_ms: r.created_ms,
                services: r.spec.services.keys().cloned().collect(),
                current: current == Some(r.number),
                author: r.author.clone(),
                cause: r.cause.clone(),
                change: diff::summary(
                    i.checked_sub(1).map(|p| &releases[p].spec),
                    &r.spec,
                    CHANGE_CHARS,
                ),
            })
            .collect(),
    ))
}

async fn down_stack(
    State(s): State<ApiState>,
    ApiPath((env, stack)): ApiPath<(String, String)>,
) -> Result<Json<StackView>, ApiError> {
    let key = stack_key(&env, &stack)?;
    if !s.store.stacks().await?.iter().any(|st| st.stack == key) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "stack_not_found",
            format!("no stack {key}"),
        ));
    }
    s.store.set_current(&key, None).await?;
    s.control.changed();
    Ok(Json(StackView {
        env: key.env,
        stack: key.stack,
        current: None,
    }))
}

async fn list_instances(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<StackFilter>,
) -> Result<Json<Vec<Instance>>, ApiError> {
    let all = s.store.instances(None).await?;
    Ok(Json(
        all.into_iter()
            .filter(|i| q.env.as_ref().is_none_or(|e| &i.id.stack.env == e))
            .filter(|i| q.stack.as_ref().is_none_or(|st| &i.id.stack.stack == st))
            .collect(),
    ))
}

async fn list_events(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let selected = |e: &Event| {
        q.env.as_ref().is_none_or(|env| &e.stack.env == env)
            && q.stack.as_ref().is_none_or(|stack| &e.stack.stack == stack)
    };
    if q.env.is_none() && q.stack.is_none() {
        return Ok(Json(s.store.events_after(q.after, limit).await?));
    }
    // Filtered: page through the kept events (at most `EVENTS_KEPT`) until `limit` match.
    let mut out = Vec::new();
    let mut after = q.after;
    while out.len() < limit {
        let page = s.store.events_after(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() == 1000;
        out.extend(page.into_iter().filter(|e| selected(e)));
        if !full {
            break;
        }
    }
    out.truncate(limit);
    Ok(Json(out))
}

/// `stop` keeps the service's instances stopped until `start` (or the next deploy);
/// `restart` replaces every instance (and starts a stopped service).
async fn control_service(
    State(s): State<ApiState>,
    ApiPath((env, stack, service, action)): ApiPath<(String, String, String, String)>,
) -> Result<Json<ServiceControlView>, ApiError> {
    let key = stack_key(&env, &stack)?;
    let change: fn(&mut ServiceControl) = match action.as_str() {
        "stop" => |c| c.stopped = true,
        "start" => |c| c.stopped = false,
        "restart" => |c| {
            c.stopped = false;
            c.generation += 1;
        },
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no action {other:?} (stop, start, restart)"),
            ));
        }
    };
    if !current_release(&s, &key)
        .await?
        .spec
        .services
        .contains_key(&service)
    {
        return Err(service_not_found(&key, &service));
    }
    let controls = s
        .store
        .update_controls(&key, |c| change(c.entry(service.clone()).or_default()))
        .await?;
    s.control.changed();
    let control = controls.get(&service).cloned().unwrap_or_default();
    Ok(Json(ServiceControlView {
        env: key.env,
        stack: key.stack,
        service,
        stopped: control.stopped,
        generation: control.generation,
    }))
}

async fn service_status(
    State(s): State<ApiState>,
    ApiPath((env, stack, service)): ApiPath<(String, String, String)>,
) -> Result<Json<ServiceStatus>, ApiError> {
    let key = stack_key(&env, &stack)?;
    let release = current_release(&s, &key).await?;
    let spec = release
        .spec
        .services
        .get(&service)
        .cloned()
        .ok_or_else(|| service_not_found(&key, &service))?;
    let control = s
        .store
        .stacks()
        .await?
        .into_iter()
        .find(|st| st.stack == key)
        .and_then(|st| st.controls.get(&service).cloned())
        .unwrap_or_default();
    // Sampled together: each takes a CPU sample window.
    let mine: Vec<Instance> = s
        .store
        .instances(Some(&key))
        .await?
        .into_iter()
        .filter(|i| i.id.service == service)
        .collect();
    let samples =
        futures_util::future::join_all(mine.iter().map(|i| s.instances.stats(i.id.clone()))).await;
    let instances = mine
        .into_iter()
        .zip(samples)
        .map(|(instance, stats)| InstanceStatus { instance, stats })
        .collect();
    let unplaced = nodes::unplaced_of(&s, &key)
        .into_iter()
        .find(|u| u.service == service);
    Ok(Json(ServiceStatus {
        env: key.env,
        stack: key.stack,
        service,
        release: release.number,
        stopped: control.stopped,
        generation: control.generation,
        unplaced,
        spec,
        instances,
    }))
}

/// The instance `<service>-<index>` of a stack, as a well-formed id.
fn parse_instance_id(env: &str, stack: &str, instance: &str) -> Result<InstanceId, ApiError> {
    let key = stack_key(env, stack)?;
    format!("{key}/{instance}")
        .parse()
        .map_err(|e: skiff_model::NameError| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string())
        })
}

/// The instance `<service>-<index>` of a stack, known to the store.
async fn instance_id(
    s: &ApiState,
    env: &str,
    stack: &str,
    instance: &str,
) -> Result<InstanceId, ApiError> {
    let id = parse_instance_id(env, stack, instance)?;
    if !s
        .store
        .instances(Some(&id.stack))
        .await?
        .iter()
        .any(|i| i.id == id)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "instance_not_found",
            format!("no instance {id}"),
        ));
    }
    Ok(id)
}

async fn exec_instance(
    State(s): State<ApiState>,
    ApiPath((env, stack, instance)): ApiPath<(String, String, String)>,
    Body(req): Body<ExecRequest>,
) -> Result<Json<Exec>, ApiError> {
    let id = instance_id(&s, &env, &stack, &instance).await?;
    if req.cmd.is_empty() || req.cmd.len() > 1024 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "cmd: one program and its arguments (at most 1024)",
        ));
    }
    s.instances
        .exec(id, req.cmd)
        .await
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "exec_failed", e.to_string()))
}

async fn signal_instance(
    State(s): State<ApiState>,
    ApiPath((env, stack, instance)): ApiPath<(String, String, String)>,
    Body(req): Body<SignalRequest>,
) -> Result<StatusCode, ApiError> {
    let id = instance_id(&s, &env, &stack, &instance).await?;
    s.instances
        .signal(id, req.signal)
        .await
        .map(|()| StatusCode::NO_CONTENT)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "signal_failed", e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The paths `router` declares (`.route("…"` literals in this file), but `/openapi.json`.
    fn router_paths() -> BTreeSet<String> {
        include_str!("lib.rs")
            .split(".route(")
            .skip(1)
            .filter_map(|rest| {
                let lit = rest.trim_start().strip_prefix('"')?;
                let path = &lit[..lit.find('"')?];
                path.starts_with("/v1/").then(|| path.to_string())
            })
            .collect()
    }

    #[test]
    fn the_openapi_document_describes_every_route_of_the_router_and_no_other() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let documented: BTreeSet<String> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|p| p.starts_with("/v1/"))
            .cloned()
            .collect();
        let served = router_paths();
        assert!(served.contains("/v1/envs/{env}/clone"), "{served:?}");
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "served but not in docs/openapi.json: {undocumented:?}; documented but not \
             served: {unserved:?}"
        );
    }
}
