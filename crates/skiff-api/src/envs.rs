//! Environments: records with owners, values, override files and lifetimes
//! (`/v1/envs[/{env}]`), their summaries, down, removal and clones.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use skiff_client::{CloneEnv, CloneResult, EnvView, NewEnv, StackView, ValuesChange};
use skiff_model::{
    Author, Cause, DEFAULT_ENV, EnvState, Environment, Expiry, InstanceState, OverrideFile,
    StackKey,
};
use skiff_store::StackState;

use crate::{ApiError, ApiPath, ApiState, Body, current_of, record_release};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn check_name(env: &str) -> Result<(), ApiError> {
    skiff_model::check_env_name(env).map_err(|e| invalid("invalid_name", e.to_string()))
}

fn not_found(env: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "env_not_found",
        format!("no environment {env}"),
    )
}

fn default_keeps_nothing() -> ApiError {
    invalid(
        "default_env",
        "the default environment has no record: it keeps no values, override files or \
         lifetime; create an environment (skiff env create NAME)",
    )
}

/// The `default` environment as views show it: it has no record.
fn implicit_default() -> Environment {
    Environment::new(DEFAULT_ENV, Author::unknown(), 0)
}

/// The environment's record (`default`'s implicit one), or 404.
async fn record(s: &ApiState, env: &str) -> Result<(Environment, bool), ApiError> {
    check_name(env)?;
    match s.store.env(env).await? {
        Some(e) => Ok((e, false)),
        None if env == DEFAULT_ENV => Ok((implicit_default(), true)),
        None => Err(not_found(env)),
    }
}

/// Views of `envs` with what runs in them, from one read of stacks and instances.
async fn views(s: &ApiState, envs: Vec<(Environment, bool)>) -> Result<Vec<EnvView>, ApiError> {
    let stacks = s.store.stacks().await?;
    let instances = s.store.instances(None).await?;
    let last = s.control.last_requests();
    let mut out = Vec::with_capacity(envs.len());
    for (env, implicit) in envs {
        let mine: Vec<&StackState> = stacks
            .iter()
            .filter(|st| st.stack.env == env.name)
            .collect();
        let mut desired = 0;
        for st in &mine {
            if let Some(n) = st.current
                && let Some(release) = s.store.release(&st.stack, n).await?
            {
                desired += release
                    .spec
                    .services
                    .iter()
                    .filter(|(name, _)| !st.controls.get(*name).is_some_and(|c| c.stopped))
                    .map(|(_, svc)| svc.replicas)
                    .sum::<u32>();
            }
        }
        let ready = instances
            .iter()
            .filter(|i| i.id.stack.env == env.name && i.state == InstanceState::Healthy)
            .count() as u32;
        let last_request_ms = last.get(&env.name).copied();
        let expiry = match env.state {
            EnvState::Active => env.expiry(last_request_ms),
            EnvState::Down => None,
        };
        out.push(EnvView {
            stacks: mine
                .iter()
                .map(|st| StackView {
                    env: st.stack.env.clone(),
                    stack: st.stack.stack.clone(),
                    current: st.current,
                })
                .collect(),
            ready,
            desired,
            last_request_ms,
            expires_ms: expiry.map(Expiry::at_ms),
            expires_by: expiry.map(|e| {
                match e {
                    Expiry::Ttl { .. } => "ttl",
                    Expiry::Idle { .. } => "idle",
                }
                .to_string()
            }),
            env,
            implicit,
        });
    }
    Ok(out)
}

async fn view(s: &ApiState, env: Environment, implicit: bool) -> Result<EnvView, ApiError> {
    Ok(views(s, vec![(env, implicit)])
        .await?
        .pop()
        .expect("one view per environment"))
}

/// Every environment, `default` first whether or not anything runs in it.
pub(crate) async fn list(State(s): State<ApiState>) -> Result<Json<Vec<EnvView>>, ApiError> {
    let mut envs: Vec<(Environment, bool)> = s
        .store
        .envs()
        .await?
        .into_iter()
        .map(|e| (e, false))
        .collect();
    if !envs.iter().any(|(e, _)| e.name == DEFAULT_ENV) {
        envs.insert(0, (implicit_default(), true));
    }
    Ok(Json(views(&s, envs).await?))
}

pub(crate) async fn get(
    State(s): State<ApiState>,
    ApiPath(env): ApiPath<String>,
) -> Result<Json<EnvView>, ApiError> {
    let (e, implicit) = record(&s, &env).await?;
    Ok(Json(view(&s, e, implicit).await?))
}

fn bad_contents(e: &Environment) -> Result<(), ApiError> {
    e.check_contents()
        .map_err(|why| invalid("invalid_env", format!("environment {}: {why}", e.name)))
}

/// Creates an environment (201), copying `from`'s values and override files first; 409
/// `env_exists` when it exists.
pub(crate) async fn create(
    State(s): State<ApiState>,
    ApiPath(env): ApiPath<String>,
    Body(req): Body<NewEnv>,
) -> Result<(StatusCode, Json<EnvView>), ApiError> {
    check_name(&env)?;
    if env == DEFAULT_ENV {
        return Err(exists(&env));
    }
    if req.ttl_ms == Some(0) || req.idle_ms == Some(0) {
        return Err(invalid("invalid_env", "ttl and idle must be longer than 0"));
    }
    let mut e = Environment::new(&env, req.author.unwrap_or_default(), now_ms());
    e.ttl_ms = req.ttl_ms;
    e.idle_ms = req.idle_ms;
    if let Some(from) = &req.from {
        let (source, _) = record(&s, from).await?;
        e.values = source.values;
        e.overrides = source.overrides;
        e.from = Some(from.clone());
    }
    e.values.extend(req.values);
    e.overrides.extend(req.overrides);
    bad_contents(&e)?;
    if !s.store.create_env(&e).await? {
        return Err(exists(&env));
    }
    Ok((StatusCode::CREATED, Json(view(&s, e, false).await?)))
}

fn exists(env: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "env_exists",
        format!("environment {env} exists already"),
    )
}

/// Changes a record with `f` (its result checked against the bounds), or 404.
async fn change(
    s: &ApiState,
    env: &str,
    f: impl Fn(&mut Environment) + Send + Sync,
) -> Result<Environment, ApiError> {
    check_name(env)?;
    if env == DEFAULT_ENV && s.store.env(env).await?.is_none() {
        return Err(default_keeps_nothing());
    }
    match s
        .store
        .update_env(env, |e| {
            f(e);
            e.check_contents()
        })
        .await?
    {
        None => Err(not_found(env)),
        Some(Err(why)) => Err(invalid("invalid_env", format!("environment {env}: {why}"))),
        Some(Ok(e)) => Ok(e),
    }
}

/// Sets and removes values (used by the next `up` of each stack).
pub(crate) async fn values(
    State(s): State<ApiState>,
    ApiPath(env): ApiPath<String>,
    Body(req): Body<ValuesChange>,
) -> Result<Json<EnvView>, ApiError> {
    for (k, v) in &req.set {
        skiff_model::check_value(k, v).map_err(|why| invalid("invalid_env", why))?;
    }
    let e = change(&s, &env, |e| {
        e.values
            .extend(req.set.iter().map(|(k, v)| (k.clone(), v.clone())));
        for k in &req.unset {
            e.values.remove(k);
        }
    })
    .await?;
    Ok(Json(view(&s, e, false).await?))
}

/// Replaces the override files.
pub(crate) async fn overrides(
    State(s): State<ApiState>,
    ApiPath(env): ApiPath<String>,
    Body(files): Body<Vec<OverrideFile>>,
) -> Result<Json<EnvView>, ApiError> {
    let e = change(&s, &env, |e| e.overrides = files.clone()).await?;
    Ok(Json(view(&s, e, false).await?))
}

/// Takes every stack of the environment down.
pub(crate) async fn down(
    State(s): State<ApiState>,
    ApiPath(env): ApiPath<String>,
) -> Result<Json<EnvView>, ApiError> {
    record(&s, &env).await?;
    s.control.down_env(&env, None).await?;
    let (e, implicit) = record(&s, &env).await?;
    Ok(Json(view(&s, e, implicit).await?))
}

/// Removes the environment: every stack down, then its releases, controls and instance
/// records, then its record (204). Volumes and other data outside the store are not touched
/// here.
pub(crate) async fn remove(
    State(s): State<ApiState>,
    ApiPath(env): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    check_name(&env)?;
    if env == DEFAULT_ENV {
        return Err(invalid(
            "default_env",
            "the default environment cannot be removed (skiff env down default stops it)",
        ));
    }
    record(&s, &env).await?;
    let stacks: Vec<StackKey> = s
        .store
        .env_stacks(&env)
        .await?
        .into_iter()
        .map(|st| st.stack)
        .collect();
    s.control.down_env(&env, None).await?;
    for stack in &stacks {
        s.store.remove_stack(stack).await?;
    }
    s.control.forget_env(&env).await?;
    // The data goes before the record: a node that cannot remove it leaves the environment
    // listed, and `env rm` can be tried again.
    crate::agents::remove_data(&s, &env).await?;
    s.store.delete_env(&env).await?;
    s.control.changed();
    Ok(StatusCode::NO_CONTENT)
}

/// Makes sure a non-default environment a release goes into exists and is active: created
/// with `author` as its owner when it has no record (as compose creates a project), made
/// active again (its ttl and idle time counting from now) when it was down.
pub(crate) async fn ensure_active(
    s: &ApiState,
    env: &str,
    author: Option<&Author>,
) -> Result<(), ApiError> {
    if env == DEFAULT_ENV {
        return Ok(());
    }
    check_name(env)?;
    let now = now_ms();
    let e = Environment::new(env, author.cloned().unwrap_or_default(), now);
    if s.store.create_env(&e).await? {
        return Ok(());
    }
    s.store
        .update_env(env, |e| {
            if e.state == EnvState::Down {
                e.state = EnvState::Active;
                e.down_reason = None;
                e.active_ms = now;
            }
            Ok::<(), ()>(())
        })
        .await?;
    Ok(())
}

/// Creates `req.to` with the values and override files of `env`, then deploys every stack
/// current in `env` into it from its current release (spec and source as they are).
pub(crate) async fn clone(
    State(s): State<ApiState>,
    ApiPath(env): ApiPath<String>,
    Body(req): Body<CloneEnv>,
) -> Result<(StatusCode, Json<CloneResult>), ApiError> {
    let (source, _) = record(&s, &env).await?;
    check_name(&req.to)?;
    if req.to == DEFAULT_ENV || req.to == env {
        return Err(exists(&req.to));
    }
    let mut e = Environment::new(&req.to, req.author.clone().unwrap_or_default(), now_ms());
    e.values = source.values.clone();
    e.overrides = source.overrides.clone();
    e.ttl_ms = source.ttl_ms;
    e.idle_ms = source.idle_ms;
    e.from = Some(env.clone());
    if !s.store.create_env(&e).await? {
        return Err(exists(&req.to));
    }
    // The data first, so that the clone's instances start on it.
    let data = if req.with_data {
        match crate::agents::copy_data(&s, &env, &req.to).await {
            Ok(d) => Some(d),
            Err(e) => {
                // Nothing of the clone stays: its partial copies and its record go.
                let _ = crate::agents::remove_data(&s, &req.to).await;
                let _ = s.store.delete_env(&req.to).await;
                return Err(e);
            }
        }
    } else {
        None
    };
    let mut releases = Vec::new();
    let stacks: Vec<StackKey> = s
        .store
        .env_stacks(&env)
        .await?
        .into_iter()
        .filter(|st| st.current.is_some())
        .map(|st| st.stack)
        .collect();
    for stack in stacks {
        let Some(current) = current_of(&s.store, &stack).await? else {
            continue;
        };
        let to = StackKey {
            env: req.to.clone(),
            stack: stack.stack.clone(),
        };
        let (release, _) = record_release(
            &s,
            to,
            current.spec,
            current.source,
            req.author.clone(),
            Cause::Up,
        )
        .await?;
        releases.push(release);
    }
    let env_view = view(&s, e, false).await?;
    Ok((
        StatusCode::CREATED,
        Json(CloneResult {
            env: env_view,
            releases,
            data,
        }),
    ))
}
