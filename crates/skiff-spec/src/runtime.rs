//! From the compose model to the runtime's [`StackSpec`]: what agents act on.
//!
//! Defaults are compose's where compose has one (healthcheck interval 30s, timeout 30s,
//! retries 3, start_interval 5s; stop signal SIGTERM with a 10s grace). The restart default
//! follows `docker stack deploy` (restart on any exit), because skiff supervises services;
//! `restart: "no"` or `deploy.restart_policy.condition: none` turns it off.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use skiff_model::{
    Driver, HealthSpec, PortSpec, ResourceLimits, RestartCondition, RestartPolicy, ServiceSpec,
    StackSpec, WaitFor,
};

use crate::diag::{Diagnostic, SpecError};
use crate::loader::Loader;
use crate::model::{self, Condition, DeployMode, Project, Restart, Service};
use crate::order;
use crate::project::LoadedProject;
use crate::validate::key_pos;

/// The largest config file a release carries (releases travel whole to every node).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Converts a loaded, validated project; the contents of the `configs` its services use are
/// read through `loader` (`file:`), taken inline (`content:`) or from the project's
/// environment (`environment:`).
pub fn stack_spec(loaded: &LoadedProject, loader: &dyn Loader) -> Result<StackSpec, SpecError> {
    let contents = config_contents(loaded, loader)?;
    let project = &loaded.project;
    let services: BTreeMap<String, ServiceSpec> = project
        .services
        .iter()
        .map(|(name, svc)| (name.clone(), service_spec(project, svc, &contents)))
        .collect();
    let deps = project
        .services
        .iter()
        .map(|(n, s)| (n.clone(), s.depends_on.keys().cloned().collect()))
        .collect();
    // Validation rejected cycles; an empty order here would only hide a bug, so keep
    // whatever ordering is possible.
    let batches = order::batches(&deps).unwrap_or_default();
    Ok(StackSpec {
        services,
        batches,
        values: BTreeMap::new(),
    })
}

/// The content of every top-level config a service grants, by name; every config that
/// cannot be had is reported, each at its place.
fn config_contents(
    loaded: &LoadedProject,
    loader: &dyn Loader,
) -> Result<BTreeMap<String, String>, SpecError> {
    let used: BTreeSet<&str> = loaded
        .project
        .services
        .values()
        .flat_map(|s| s.configs.iter().map(|c| c.source.as_str()))
        .collect();
    let mut contents = BTreeMap::new();
    let mut errors = Vec::new();
    for name in used {
        let Some(obj) = loaded.project.configs.get(name) else {
            continue; // validation reported the undefined reference
        };
        let at = |field: &str, message: String| {
            let path: Vec<&str> = ["configs", name, field]
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect();
            Diagnostic::new(key_pos(&loaded.tree, &path), path.join("."), message)
        };
        let content = if obj.external.is_some() {
            Err(at(
                "external",
                "external configs are not supported: skiff has no config store; give the \
                 content with file, content or environment"
                    .into(),
            ))
        } else if let Some(path) = &obj.file {
            loader
                .read(Path::new(path))
                .map_err(|e| at("file", format!("cannot read {path}: {e}")))
                .map(|text| (text, "file"))
        } else if let Some(text) = &obj.content {
            Ok((text.clone(), "content"))
        } else if let Some(var) = &obj.environment {
            loaded
                .environment
                .get(var)
                .cloned()
                .ok_or_else(|| at("environment", format!("variable {var} is not set")))
                .map(|text| (text, "environment"))
        } else {
            Err(at(
                "",
                format!("config {name:?} has no source: set file, content or environment"),
            ))
        };
        match content {
            Ok((text, field)) if text.len() > MAX_CONFIG_BYTES => errors.push(at(
                field,
                format!(
                    "is {} bytes or more; a config may hold at most {MAX_CONFIG_BYTES} bytes \
                     (1 MiB)",
                    text.len()
                ),
            )),
            Ok((text, field)) => {
                let template = obj.x_skiff.as_ref().is_some_and(|x| x.template);
                match template
                    .then(|| crate::template::check(&text, &loaded.project.services))
                    .transpose()
                {
                    Ok(_) => {
                        contents.insert(name.to_string(), text);
                    }
                    Err(why) => errors.push(at(field, format!("template: {why}"))),
                }
            }
            Err(d) => errors.push(d),
        }
    }
    if errors.is_empty() {
        Ok(contents)
    } else {
        Err(SpecError {
            diagnostics: errors,
        })
    }
}

/// A service's `configs` grants with their contents: target as compose defaults it
/// (`/<name>`), mode as given.
fn configs(
    project: &Project,
    svc: &Service,
    contents: &BTreeMap<String, String>,
) -> Vec<skiff_model::ConfigFile> {
    svc.configs
        .iter()
        .filter_map(|r| {
            Some(skiff_model::ConfigFile {
                name: r.source.clone(),
                target: match &r.target {
                    Some(t) if t.starts_with('/') => t.clone(),
                    Some(t) => format!("/{t}"),
                    None => format!("/{}", r.source),
                },
                content: contents.get(&r.source)?.clone(),
                mode: r.mode,
                template: project
                    .configs
                    .get(&r.source)
                    .and_then(|c| c.x_skiff.as_ref())
                    .is_some_and(|x| x.template),
                values: BTreeMap::new(),
            })
        })
        .collect()
}

fn service_spec(
    project: &Project,
    svc: &Service,
    contents: &BTreeMap<String, String>,
) -> ServiceSpec {
    let x = svc.x_skiff.as_deref();
    let deploy = svc.deploy.as_deref();
    let global = matches!(
        deploy.and_then(|d| d.mode),
        Some(DeployMode::Global | DeployMode::GlobalJob)
    );
    let replicas = if global {
        1
    } else {
        deploy.and_then(|d| d.replicas).or(svc.scale).unwrap_or(1)
    };
    let deploy_limits = deploy
        .and_then(|d| d.resources.as_ref())
        .and_then(|r| r.limits.as_ref());
    let limits = ResourceLimits {
        memory_bytes: deploy_limits
            .and_then(|l| l.memory)
            .or(svc.mem_limit)
            .map(|b| b.0),
        cpus: deploy_limits.and_then(|l| l.cpus).or(svc.cpus).map(|c| c.0),
        pids: deploy_limits
            .and_then(|l| l.pids)
            .or(svc.pids_limit)
            .and_then(|p| u64::try_from(p).ok()),
    };
    ServiceSpec {
        driver: match x.and_then(|x| x.driver) {
            Some(model::Driver::Process) => Driver::Process,
            _ => Driver::Docker,
        },
        image: svc.image.clone(),
        build: svc.build.as_ref().map(|b| skiff_model::BuildSpec {
            context: b.context.clone().unwrap_or_else(|| ".".into()),
            dockerfile: b.dockerfile.clone(),
        }),
        entrypoint: svc.entrypoint.as_ref().map(|c| c.0.clone()),
        command: svc.command.as_ref().map(|c| c.0.clone()),
        executable: x.and_then(|x| x.executable.clone()),
        working_dir: svc.working_dir.clone(),
        environment: svc
            .environment
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect(),
        ports: ports(svc),
        mounts: mounts(project, svc),
        replicas,
        depends_on: svc
            .depends_on
            .iter()
            .map(|(d, dep)| {
                let w = match dep.condition {
                    Condition::ServiceStarted => WaitFor::Started,
                    Condition::ServiceHealthy => WaitFor::Healthy,
                    Condition::ServiceCompletedSuccessfully => WaitFor::CompletedSuccessfully,
                };
                (d.clone(), w)
            })
            .collect(),
        health: x
            .and_then(|x| x.readiness.as_ref())
            .map(|c| check(svc, c))
            .or_else(|| health(svc)),
        liveness: x.and_then(|x| x.liveness.as_ref()).map(|c| check(svc, c)),
        keep_failed: x.is_some_and(|x| x.keep_failed),
        routes: x.map_or_else(Vec::new, |x| {
            x.routes
                .iter()
                .map(|r| skiff_model::RouteSpec {
                    host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                    path: r.path.clone().unwrap_or_else(|| "/".into()),
                    port: port_name(svc, r.port.as_ref()),
                    strip_prefix: r.strip_prefix,
                })
                .collect()
        }),
        restart: restart(svc),
        stop_signal: svc.stop_signal.clone().unwrap_or_else(|| "SIGTERM".into()),
        stop_grace: svc
            .stop_grace_period
            .map_or(Duration::from_secs(10), |d| d.0),
        reservations: reservations(svc, &limits),
        limits,
        placement: placement(svc, global),
        update: update_policy(deploy.and_then(|d| d.update_config.as_ref())),
        rollback: update_policy(deploy.and_then(|d| d.rollback_config.as_ref())),
        release: release_policy(x.and_then(|x| x.release.as_ref())),
        configs: configs(project, svc, contents),
        reload: x
            .and_then(|x| x.reload.as_ref())
            .map(|r| skiff_model::ReloadSpec {
                signal: r.signal.clone(),
            }),
        seed: x
            .and_then(|x| x.seed.as_ref())
            .map(|s| skiff_model::SeedSpec {
                from: s.from.clone(),
                into: s.into.clone(),
                consistency: match s.consistency {
                    Some(model::Consistency::Stop) => skiff_model::Consistency::Stop,
                    _ => skiff_model::Consistency::Freeze,
                },
            }),
    }
}

/// `update_config` / `rollback_config`, Swarm's defaults where a field is absent.
fn update_policy(c: Option<&model::UpdateConfig>) -> skiff_model::UpdatePolicy {
    let d = skiff_model::UpdatePolicy::default();
    let Some(c) = c else { return d };
    skiff_model::UpdatePolicy {
        parallelism: match c.parallelism {
            Some(crate::units::Parallelism::Count(n)) => skiff_model::Parallelism::Count(n),
            Some(crate::units::Parallelism::Percent(p)) => skiff_model::Parallelism::Percent(p),
            None => d.parallelism,
        },
        delay: c.delay.map_or(d.delay, |x| x.0),
        monitor: c.monitor.map_or(d.monitor, |x| x.0),
        max_failure_ratio: c.max_failure_ratio.unwrap_or(d.max_failure_ratio),
        failure_action: match c.failure_action {
            Some(model::FailureAction::Continue) => skiff_model::FailureAction::Continue,
            Some(model::FailureAction::Rollback) => skiff_model::FailureAction::Rollback,
            Some(model::FailureAction::Pause) | None => skiff_model::FailureAction::Pause,
        },
        order: match c.order {
            Some(model::UpdateOrder::StartFirst) => skiff_model::UpdateOrder::StartFirst,
            Some(model::UpdateOrder::StopFirst) | None => skiff_model::UpdateOrder::StopFirst,
        },
    }
}

/// `x-skiff.release`.
fn release_policy(r: Option<&model::Release>) -> skiff_model::ReleasePolicy {
    let Some(r) = r else {
        return skiff_model::ReleasePolicy::default();
    };
    skiff_model::ReleasePolicy {
        strategy: match r.strategy {
            Some(model::Strategy::Canary) => skiff_model::ReleaseStrategy::Canary,
            Some(model::Strategy::BlueGreen) => skiff_model::ReleaseStrategy::BlueGreen,
            Some(model::Strategy::Rolling) | None => skiff_model::ReleaseStrategy::Rolling,
        },
        steps: r
            .steps
            .iter()
            .map(|s| skiff_model::CanaryStep {
                weight: s.weight,
                pause: s.pause.map(|p| p.0),
            })
            .collect(),
        switch: match r.switch {
            Some(model::Switch::Manual) => skiff_model::Switch::Manual,
            _ => skiff_model::Switch::Auto,
        },
        keep_previous: r.keep_previous.map_or(Duration::ZERO, |d| d.0),
        analysis: r.analysis.as_ref().map(|a| {
            let d = skiff_model::Analysis::default();
            skiff_model::Analysis {
                max_error_rate: a.max_error_rate.map(|p| p.0 / 100.0),
                max_p99: a.max_p99.map(|d| d.0),
                min_requests: a.min_requests.unwrap_or(d.min_requests),
                interval: a.interval.map_or(d.interval, |i| i.0),
                on_no_traffic: match a.on_no_traffic {
                    Some(model::NoTraffic::Promote) => skiff_model::NoTraffic::Promote,
                    Some(model::NoTraffic::Abort) => skiff_model::NoTraffic::Abort,
                    Some(model::NoTraffic::Pause) | None => skiff_model::NoTraffic::Pause,
                },
                max_wait: a.max_wait.map_or(d.max_wait, |w| w.0),
            }
        }),
    }
}

/// What an instance holds on its node: `deploy.resources.reservations` (memory: else
/// `mem_reservation`), else the service's limits.
fn reservations(svc: &Service, limits: &ResourceLimits) -> skiff_model::Reservations {
    let reserved = svc
        .deploy
        .as_deref()
        .and_then(|d| d.resources.as_ref())
        .and_then(|r| r.reservations.as_ref());
    let cpus = reserved
        .and_then(|r| r.cpus)
        .map(|c| c.0)
        .or(limits.cpus)
        .unwrap_or(0.0);
    let memory = reserved
        .and_then(|r| r.memory)
        .or(svc.mem_reservation)
        .map(|b| b.0)
        .or(limits.memory_bytes)
        .unwrap_or(0);
    skiff_model::Reservations {
        cpu_millis: (cpus * 1000.0).round() as u64,
        memory_bytes: memory,
    }
}

/// `deploy.mode` and `deploy.placement` (validation rejected constraints that do not parse;
/// `node.role` ones are dropped: skiff nodes have no swarm role), `x-skiff.placement`.
fn placement(svc: &Service, global: bool) -> skiff_model::PlacementSpec {
    let p = svc.deploy.as_deref().and_then(|d| d.placement.as_ref());
    skiff_model::PlacementSpec {
        mode: if global {
            skiff_model::DeployMode::Global
        } else {
            skiff_model::DeployMode::Replicated
        },
        constraints: p.map_or_else(Vec::new, |p| {
            p.constraints
                .iter()
                .filter(|c| !crate::validate::is_role_constraint(c))
                .filter_map(|c| skiff_model::Constraint::parse(c).ok())
                .collect()
        }),
        spread: p.map_or_else(Vec::new, |p| {
            p.preferences
                .iter()
                .filter_map(|pref| pref.spread.strip_prefix("node.labels."))
                .map(str::to_string)
                .collect()
        }),
        max_replicas_per_node: p.and_then(|p| p.max_replicas_per_node),
        strategy: match svc.x_skiff.as_deref().and_then(|x| x.placement.as_ref()) {
            Some(model::XPlacement {
                strategy: Some(model::PlacementStrategy::Binpack),
                ..
            }) => skiff_model::Strategy::Binpack,
            _ => skiff_model::Strategy::Spread,
        },
    }
}

/// `volumes` (bind, named or anonymous volume, tmpfs) and `tmpfs`; a named volume takes the
/// name compose resolves for it (`<project>_<volume>`, or its `name:`).
fn mounts(project: &Project, svc: &Service) -> Vec<skiff_model::MountSpec> {
    use skiff_model::MountSpec;
    let mut out: Vec<MountSpec> = svc
        .volumes
        .iter()
        .filter_map(|v| match v.kind {
            model::VolumeKind::Bind => Some(MountSpec::Bind {
                source: v.source.clone().unwrap_or_default(),
                target: v.target.clone(),
                read_only: v.read_only,
            }),
            model::VolumeKind::Volume => {
                let (name, external) = match &v.source {
                    Some(src) => match project.volumes.get(src) {
                        Some(top) => (
                            top.name.clone().unwrap_or_else(|| src.clone()),
                            top.external.is_some(),
                        ),
                        None => (src.clone(), false),
                    },
                    None => (String::new(), false),
                };
                Some(MountSpec::Volume {
                    name,
                    key: v.source.clone().unwrap_or_default(),
                    external,
                    target: v.target.clone(),
                    read_only: v.read_only,
                })
            }
            model::VolumeKind::Tmpfs => Some(MountSpec::Tmpfs {
                target: v.target.clone(),
                size_bytes: v.tmpfs.as_ref().and_then(|t| t.size).map(|b| b.0),
            }),
            // Not supported by the Docker driver yet; validate warns about them.
            _ => None,
        })
        .collect();
    out.extend(svc.tmpfs.iter().map(|t| MountSpec::Tmpfs {
        target: t.split(':').next().unwrap_or(t).to_string(),
        size_bytes: None,
    }));
    out
}

/// Ports from `ports` and `expose`, one per target port.
/// The name of the port `p` designates (a name or target number), else of the first port.
fn port_name(svc: &Service, p: Option<&String>) -> String {
    let all = ports(svc);
    p.and_then(|p| {
        all.iter()
            .find(|x| x.name == *p || x.target.to_string() == *p)
    })
    .or(all.first())
    .map(|x| x.name.clone())
    .unwrap_or_default()
}

fn ports(svc: &Service) -> Vec<PortSpec> {
    let mut out: Vec<PortSpec> = Vec::new();
    for p in &svc.ports {
        if out
            .iter()
            .any(|o| o.target == p.target && o.protocol == p.protocol)
        {
            continue;
        }
        out.push(PortSpec {
            name: p.name.clone().unwrap_or_else(|| p.target.to_string()),
            target: p.target,
            protocol: p.protocol.clone(),
            published: p.published.as_deref().and_then(|s| s.parse().ok()),
            host_mode: p.mode == "host",
        });
    }
    for e in &svc.expose {
        let (port, proto) = e.0.split_once('/').unwrap_or((&e.0, "tcp"));
        let Ok(target) = port.parse::<u16>() else {
            continue;
        };
        if out
            .iter()
            .any(|o| o.target == target && o.protocol == proto)
        {
            continue;
        }
        out.push(PortSpec {
            name: target.to_string(),
            target,
            protocol: proto.to_string(),
            published: None,
            host_mode: false,
        });
    }
    out
}

fn health(svc: &Service) -> Option<HealthSpec> {
    let h = svc.healthcheck.as_deref()?;
    if h.disable || h.test.is_empty() || h.test.first().map(String::as_str) == Some("NONE") {
        return None;
    }
    Some(HealthSpec {
        test: h.test.clone(),
        http: None,
        tcp: None,
        interval: h.interval.map_or(Duration::from_secs(30), |d| d.0),
        timeout: h.timeout.map_or(Duration::from_secs(30), |d| d.0),
        retries: h.retries.unwrap_or(3),
        start_period: h.start_period.map_or(Duration::ZERO, |d| d.0),
        start_interval: h.start_interval.map_or(Duration::from_secs(5), |d| d.0),
    })
}

/// An `x-skiff` readiness or liveness check. Defaults suit a fast check of a local instance
/// (interval 10s, timeout 2s or a third of the interval, retries 3), not compose's 30s.
fn check(svc: &Service, c: &model::Check) -> HealthSpec {
    let port_of = |p: &Option<String>| port_name(svc, p.as_ref());
    let interval = c.interval.map_or(Duration::from_secs(10), |d| d.0);
    HealthSpec {
        test: c.test.clone(),
        http: c.http.as_ref().map(|h| skiff_model::HttpProbe {
            port: port_of(&h.port),
            path: h.path.clone().unwrap_or_else(|| "/".into()),
            status: h.status,
        }),
        tcp: c.tcp.as_ref().map(|t| port_of(&t.port)),
        interval,
        // Unset: 2 s, but at most a third of the interval, so that `retries` failures of a
        // hung instance take at most `retries` intervals and a third of one.
        timeout: c
            .timeout
            .map_or(Duration::from_secs(2).min(interval / 3), |d| d.0),
        retries: c.retries.unwrap_or(3),
        start_period: c.start_period.map_or(Duration::ZERO, |d| d.0),
        start_interval: interval.min(Duration::from_secs(5)),
    }
}

fn restart(svc: &Service) -> RestartPolicy {
    let default = RestartPolicy::default();
    if let Some(p) = svc
        .deploy
        .as_deref()
        .and_then(|d| d.restart_policy.as_ref())
    {
        return RestartPolicy {
            condition: match p.condition {
                Some(model::RestartCondition::None) => RestartCondition::Never,
                Some(model::RestartCondition::OnFailure) => RestartCondition::OnFailure,
                Some(model::RestartCondition::Any) | None => RestartCondition::Always,
            },
            max_attempts: p.max_attempts,
            delay: p.delay.map_or(default.delay, |d| d.0),
            window: p.window.map_or(Duration::ZERO, |d| d.0),
        };
    }
    match &svc.restart {
        Some(Restart::No) => RestartPolicy {
            condition: RestartCondition::Never,
            ..default
        },
        Some(Restart::OnFailure(n)) => RestartPolicy {
            condition: RestartCondition::OnFailure,
            max_attempts: *n,
            ..default
        },
        Some(Restart::Always | Restart::UnlessStopped) | None => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::load_str;

    fn spec(text: &str) -> StackSpec {
        let loaded = load_str(&[("c.yaml", text)], &[]).unwrap();
        stack_spec(&loaded, &crate::loader::MemLoader::new()).unwrap()
    }

    /// The stack spec of `text` (at `/project/c.yaml`) with `files` readable, or the
    /// diagnostics as `file:line:col: path: message` lines.
    fn spec_with(
        text: &str,
        files: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Result<StackSpec, Vec<String>> {
        let loaded = load_str(&[("c.yaml", text)], env).unwrap();
        let mut loader = crate::loader::MemLoader::new();
        for (p, t) in files {
            loader.insert(*p, *t);
        }
        stack_spec(&loaded, &loader)
            .map_err(|e| e.diagnostics.iter().map(|d| d.to_string()).collect())
    }

    const CONFIGS: &str = "services:\n  web:\n    image: web\n    configs:\n      - app\n      - source: inline\n        target: /etc/web/inline.conf\n        mode: 0440\n      - {source: fromenv, target: env.conf}\nconfigs:\n  app:\n    file: ./app.conf\n  inline:\n    content: \"port=${PORT:-80}\"\n  fromenv:\n    environment: WEB_CONF\n";

    #[test]
    fn configs_from_file_content_and_environment_reach_the_service_with_their_targets() {
        let s = spec_with(
            CONFIGS,
            &[("/project/app.conf", "from the file\n")],
            &[("WEB_CONF", "from the environment")],
        )
        .unwrap();
        let got: Vec<(&str, &str, &str, Option<u32>)> = s.services["web"]
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.target.as_str(),
                    c.content.as_str(),
                    c.mode,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("app", "/app", "from the file\n", None),
                ("inline", "/etc/web/inline.conf", "port=80", Some(0o440)),
                ("fromenv", "/env.conf", "from the environment", None),
            ]
        );
    }

    #[test]
    fn a_missing_config_file_or_variable_is_an_error_at_its_place() {
        let errors = spec_with(CONFIGS, &[], &[]).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "c.yaml:12:5: configs.app.file: cannot read /project/app.conf: no such file",
                "c.yaml:16:5: configs.fromenv.environment: variable WEB_CONF is not set",
            ]
        );
    }

    #[test]
    fn a_config_over_one_mebibyte_is_refused() {
        let big = "x".repeat(MAX_CONFIG_BYTES + 1);
        let errors = spec_with(
            CONFIGS,
            &[("/project/app.conf", big.as_str())],
            &[("WEB_CONF", "ok")],
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("c.yaml:12:5: configs.app.file: is 1048577 bytes"),
            "{errors:?}"
        );
        // Exactly 1 MiB is fine.
        let max = "x".repeat(MAX_CONFIG_BYTES);
        let s = spec_with(
            CONFIGS,
            &[("/project/app.conf", max.as_str())],
            &[("WEB_CONF", "ok")],
        )
        .unwrap();
        assert_eq!(s.services["web"].configs[0].content.len(), MAX_CONFIG_BYTES);
    }

    #[test]
    fn an_external_config_is_refused_with_a_reason() {
        let errors = spec_with(
            "services:\n  web:\n    image: web\n    configs: [ext]\nconfigs:\n  ext:\n    external: true\n",
            &[],
            &[],
        )
        .unwrap_err();
        assert_eq!(
            errors,
            vec![
                "c.yaml:7:5: configs.ext.external: external configs are not supported: \
                 skiff has no config store; give the content with file, content or environment"
            ]
        );
    }

    #[test]
    fn a_seed_and_its_volume_key_reach_the_service_spec() {
        let s = spec(
            "name: shop\nservices:\n  db:\n    command: [db]\n    volumes: [data:/var/lib/db]\n    \
             x-skiff: {driver: process, seed: {from: snap.tar.zst, into: data, consistency: stop}}\n\
             volumes:\n  data: {}\n",
        );
        let db = &s.services["db"];
        let seed = db.seed.as_ref().unwrap();
        assert!(seed.from.ends_with("/snap.tar.zst") && seed.from.starts_with('/'));
        assert_eq!(seed.into, "data");
        assert_eq!(seed.consistency, skiff_model::Consistency::Stop);
        assert!(matches!(
            &db.mounts[..],
            [skiff_model::MountSpec::Volume { name, key, .. }] if name == "shop_data" && key == "data"
        ));
    }

    #[test]
    fn reload_reaches_the_service_spec() {
        let s =
            spec("services:\n  web:\n    image: web\n    x-skiff: {reload: {signal: SIGHUP}}\n");
        assert_eq!(
            s.services["web"].reload,
            Some(skiff_model::ReloadSpec {
                signal: "SIGHUP".into()
            })
        );
    }

    #[test]
    fn the_example_stack_converts_with_order_ports_and_limits() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/compose.yaml"),
        )
        .unwrap();
        let s = spec(&text);
        assert_eq!(
            s.batches,
            vec![vec!["cache", "db"], vec!["api"], vec!["web"]]
        );
        let api = &s.services["api"];
        assert_eq!(api.driver, Driver::Process);
        assert_eq!(api.replicas, 2);
        assert_eq!(api.process_argv(), vec!["skiff-demo", "--name", "api"]);
        assert_eq!(api.limits.memory_bytes, Some(128 << 20));
        assert_eq!(api.limits.cpus, Some(0.5));
        assert_eq!(api.depends_on["db"], WaitFor::Healthy);
        let web = &s.services["web"];
        assert_eq!(web.ports[0].name, "http");
        assert_eq!(web.ports[0].published, Some(7790));
        let db = &s.services["db"];
        assert_eq!(db.ports[0].name, "5432");
        assert_eq!(
            db.health.as_ref().unwrap().start_interval,
            Duration::from_millis(100)
        );
        assert_eq!(db.stop_grace, Duration::from_secs(5));
    }

    #[test]
    fn parallelism_as_a_percentage_or_a_quoted_count_reaches_the_model() {
        let s = spec(
            "services:\n  a:\n    image: a\n    deploy:\n      update_config: {parallelism: 25%}\n      rollback_config: {parallelism: \"3\"}\n",
        );
        let a = &s.services["a"];
        assert_eq!(a.update.parallelism, skiff_model::Parallelism::Percent(25));
        assert_eq!(a.rollback.parallelism, skiff_model::Parallelism::Count(3));
        // 25 % of 10 replicas: batches of 3 (rounded up).
        assert_eq!(a.update.parallelism.batch(10), 3);
    }

    #[test]
    fn update_and_rollback_config_and_x_skiff_release_reach_the_model() {
        let s = spec(
            "services:\n  a:\n    image: a\n    deploy:\n      update_config: {parallelism: 2, delay: 1s, order: start-first, failure_action: rollback, monitor: 3s, max_failure_ratio: 0.2}\n      rollback_config: {parallelism: 0}\n    x-skiff:\n      release:\n        strategy: canary\n        steps: [{weight: 10, pause: 1m}, {weight: 50}]\n  b: {image: b}\n",
        );
        let a = &s.services["a"];
        assert_eq!(
            a.update,
            skiff_model::UpdatePolicy {
                parallelism: skiff_model::Parallelism::Count(2),
                delay: Duration::from_secs(1),
                monitor: Duration::from_secs(3),
                max_failure_ratio: 0.2,
                failure_action: skiff_model::FailureAction::Rollback,
                order: skiff_model::UpdateOrder::StartFirst,
            }
        );
        assert_eq!(a.rollback.parallelism, skiff_model::Parallelism::Count(0));
        assert_eq!(a.rollback.order, skiff_model::UpdateOrder::StopFirst);
        assert_eq!(a.release.strategy, skiff_model::ReleaseStrategy::Canary);
        assert_eq!(
            a.release.steps,
            [
                skiff_model::CanaryStep {
                    weight: 10,
                    pause: Some(Duration::from_secs(60))
                },
                skiff_model::CanaryStep {
                    weight: 50,
                    pause: None
                }
            ]
        );
        // Swarm's defaults, and a change of policy alone keeps the instances.
        let b = &s.services["b"];
        assert_eq!(b.update, skiff_model::UpdatePolicy::default());
        assert_eq!(
            a.change_to(&skiff_model::ServiceSpec {
                image: Some("a".into()),
                ..b.clone()
            }),
            skiff_model::WorkloadChange::Keep
        );
    }

    #[test]
    fn restart_defaults_to_always_and_follows_compose_when_set() {
        let s = spec(
            "services:\n  a: {image: a}\n  b: {image: b, restart: \"no\"}\n  c: {image: c, restart: on-failure:3}\n  d:\n    image: d\n    deploy: {restart_policy: {condition: none}}\n",
        );
        assert_eq!(s.services["a"].restart.condition, RestartCondition::Always);
        assert_eq!(s.services["b"].restart.condition, RestartCondition::Never);
        assert_eq!(s.services["c"].restart.max_attempts, Some(3));
        assert_eq!(s.services["d"].restart.condition, RestartCondition::Never);
    }

    #[test]
    fn x_skiff_checks_name_ports_and_override_the_healthcheck_for_readiness() {
        let s = spec(
            "services:\n  a:\n    image: a\n    ports: [{name: web, target: 80}, {target: 9000}]\n    healthcheck: {test: \"true\"}\n    x-skiff:\n      readiness: {http: {path: /ready, port: \"9000\", status: 204}, interval: 1s}\n      liveness: {tcp: {}, retries: 2}\n      keep_failed: true\n",
        );
        let a = &s.services["a"];
        let r = a.health.as_ref().unwrap();
        assert!(r.test.is_empty());
        assert_eq!(
            r.http,
            Some(skiff_model::HttpProbe {
                port: "9000".into(),
                path: "/ready".into(),
                status: Some(204)
            })
        );
        assert_eq!(r.interval, Duration::from_secs(1));
        assert_eq!(r.timeout, r.interval / 3, "at most a third of the interval");
        let l = a.liveness.as_ref().unwrap();
        assert_eq!(l.tcp.as_deref(), Some("web"), "default: the first port");
        assert_eq!((l.retries, l.timeout), (2, Duration::from_secs(2)));
        assert!(a.keep_failed);
    }

    #[test]
    fn x_skiff_routes_name_their_port_and_default_to_the_first_one_and_path_slash() {
        let s = spec(
            "services:\n  a:\n    image: a\n    ports: [{name: web, target: 80}, {target: 9000}]\n    x-skiff:\n      routes:\n        - {host: Shop.Example.Test}\n        - {path: /admin, port: \"9000\", strip_prefix: true}\n",
        );
        let r = &s.services["a"].routes;
        assert_eq!(
            r,
            &vec![
                skiff_model::RouteSpec {
                    host: Some("shop.example.test".into()),
                    path: "/".into(),
                    port: "web".into(),
                    strip_prefix: false,
                },
                skiff_model::RouteSpec {
                    host: None,
                    path: "/admin".into(),
                    port: "9000".into(),
                    strip_prefix: true,
                },
            ]
        );
    }

    #[test]
    fn healthcheck_none_or_disabled_means_no_health_spec() {
        let s = spec(
            "services:\n  a: {image: a, healthcheck: {test: [NONE]}}\n  b: {image: b, healthcheck: {disable: true}}\n  c: {image: c, healthcheck: {test: \"true\"}}\n",
        );
        assert!(s.services["a"].health.is_none());
        assert!(s.services["b"].health.is_none());
        let c = s.services["c"].health.as_ref().unwrap();
        assert_eq!((c.interval, c.retries), (Duration::from_secs(30), 3));
    }
}
