//! An instance's environment: `PORT`, `SKIFF_*`, `<SVC>_SERVICE_HOST/PORT`, and the
//! service's own `environment` with `{{ service("x") }}` rendered.

use skiff_model::ConfigFile;

use super::*;

/// How a service of another node is reached: its stable address, its first ready instance.
pub(crate) type Remote = (Option<(IpAddr, u16)>, Option<(IpAddr, u16)>);

impl Agent {
    /// Where a process reaches `service`: its stable address (the same on every node,
    /// balanced over its ready instances wherever they run) at its first TCP port; without
    /// one yet, the first ready instance on this node, else where the server's catalog
    /// listed one at the start.
    pub(crate) fn service_address(&self, stack: &StackKey, service: &str) -> Option<(IpAddr, u16)> {
        self.stable_address(stack, service)
            .or_else(|| self.remote(stack, service).0)
            .or_else(|| self.instance_address(stack, service))
    }

    /// The first ready instance of `service`: on this node, else where the server's catalog
    /// listed one (what a container reaches: the stable addresses are the host's loopback).
    fn instance_address(&self, stack: &StackKey, service: &str) -> Option<(IpAddr, u16)> {
        self.local_address(stack, service)
            .or_else(|| self.remote(stack, service).1)
    }

    fn remote(&self, stack: &StackKey, service: &str) -> Remote {
        self.remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(stack.clone(), service.to_string()))
            .copied()
            .unwrap_or_default()
    }

    /// The stable address of `service` and the target of its first TCP port, as this node's
    /// catalog has it.
    fn stable_address(&self, stack: &StackKey, service: &str) -> Option<(IpAddr, u16)> {
        let snap = self.catalog.snapshot();
        let e = snap
            .services
            .get(&skiff_catalog::ServiceKey::new(stack, service))?;
        let port = e.ports.iter().find_map(|p| e.targets.get(p))?;
        Some((e.address?, *port))
    }

    /// Learns how the services of `stack` are reached from the server's catalog when
    /// `spec` needs an address this node's catalog does not have yet.
    pub(crate) async fn learn_addresses(&self, stack: &StackKey, spec: &ServiceSpec) {
        let needs = spec
            .depends_on
            .keys()
            .any(|dep| self.stable_address(stack, dep).is_none())
            || spec.environment.values().any(|v| v.contains("service("));
        if !needs {
            return;
        }
        match self.cfg.server.catalog(Some(stack)).await {
            Ok(view) => {
                let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
                remote.retain(|(s, _), _| s != stack);
                for s in view.services {
                    let stable = s
                        .address
                        .zip(s.ports.iter().find_map(|p| s.targets.get(p)).copied());
                    let first = s.ports.first().and_then(|p| {
                        let e = s.endpoints.first()?;
                        Some((e.address, *e.ports.get(p)?))
                    });
                    remote.insert((stack.clone(), s.key.service), (stable, first));
                }
            }
            Err(e) => tracing::warn!(%stack, "catalog: {e}"),
        }
    }

    pub(crate) fn local_address(&self, stack: &StackKey, service: &str) -> Option<(IpAddr, u16)> {
        let live = self.live();
        let mut candidates: Vec<(&InstanceId, &Live)> = live
            .iter()
            .filter(|(i, _)| &i.stack == stack && i.service == service)
            .collect();
        candidates.sort_by_key(|(i, _)| i.index);
        candidates
            .iter()
            .find_map(|(_, l)| l.ports.first().map(|(_, p)| (self.cfg.node_addr, *p)))
    }

    /// The environment skiff gives an instance: `PORT`/`SKIFF_PORT_*` (the ports it listens
    /// on: host ports for processes, container ports for containers), `SKIFF_*`, the address
    /// of each dependency as `<SVC>_SERVICE_HOST/PORT`, then the service's own `environment`
    /// with `{{ service("x") }}` rendered.
    pub(crate) fn instance_env(
        &self,
        id: &InstanceId,
        rel: &Release,
        spec: &ServiceSpec,
        listen_ports: &[(String, u16)],
        container: bool,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut env = port_env(listen_ports);
        env.insert("SKIFF_INSTANCE".into(), id.short());
        env.insert("SKIFF_SERVICE".into(), id.service.clone());
        env.insert("SKIFF_STACK".into(), id.stack.stack.clone());
        env.insert("SKIFF_ENV".into(), id.stack.env.clone());
        env.insert("SKIFF_RELEASE".into(), rel.number.to_string());
        if !container {
            // The address a process listens on: the node's, where it is reached.
            env.insert("SKIFF_HOST".into(), self.cfg.node_addr.to_string());
        }
        for dep in spec.depends_on.keys() {
            if let Some((host, port)) = self.dependency_address(&id.stack, rel, dep, container) {
                env.insert(format!("{}_SERVICE_HOST", env_name(dep)), host);
                env.insert(format!("{}_SERVICE_PORT", env_name(dep)), port.to_string());
            }
        }
        for (k, v) in &spec.environment {
            let value = self
                .render(&id.stack, rel, v, container)
                .map_err(|e| format!("environment {k}: {e}"))?;
            env.insert(k.clone(), value);
        }
        Ok(env)
    }

    /// Where an instance reaches `dep`: from a container, a container dependency is its
    /// service name (a network alias) and container port; otherwise the dependency's stable
    /// address ([`Agent::service_address`]).
    pub(crate) fn dependency_address(
        &self,
        stack: &StackKey,
        rel: &Release,
        dep: &str,
        container: bool,
    ) -> Option<(String, u16)> {
        let dep_spec = rel.spec.services.get(dep)?;
        if container && dep_spec.driver == skiff_model::Driver::Docker {
            return dep_spec.ports.first().map(|p| (dep.to_string(), p.target));
        }
        let found = if container {
            self.instance_address(stack, dep)
        } else {
            self.service_address(stack, dep)
        };
        found.map(|(ip, port)| (ip.to_string(), port))
    }

    /// Renders `{{ service("db").address }}` (also `.host`, `.port`) in an environment value.
    pub(crate) fn render(
        &self,
        stack: &StackKey,
        rel: &Release,
        value: &str,
        container: bool,
    ) -> Result<String, String> {
        if !value.contains("{{") {
            return Ok(value.to_string());
        }
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        self.add_service_function(&mut env, stack, rel, container);
        env.render_str(value, ()).map_err(|e| e.to_string())
    }

    /// Renders a config template (`x-skiff: {template: true}`) for one instance: its
    /// `values`, `service("x")`, `instance` (index, name, service, stack, env, release, host,
    /// port, ports) and `env` (the instance's environment, `PORT` and `SKIFF_*` included).
    /// Strict (an undefined name is an error) and bounded by
    /// [`skiff_spec::template::FUEL`].
    pub(crate) fn render_config(
        &self,
        id: &InstanceId,
        rel: &Release,
        config: &ConfigFile,
        instance_env: &BTreeMap<String, String>,
        ports: &[(String, u16)],
        container: bool,
    ) -> Result<String, String> {
        let mut env = skiff_spec::template::environment();
        self.add_service_function(&mut env, &id.stack, rel, container);
        let host = if container {
            "0.0.0.0".to_string()
        } else {
            self.cfg.node_addr.to_string()
        };
        let ports_by_name: BTreeMap<&str, u16> =
            ports.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        let ctx = minijinja::context! {
            values => &config.values,
            env => instance_env,
            instance => minijinja::context! {
                index => id.index,
                name => id.short(),
                service => &id.service,
                stack => &id.stack.stack,
                env => &id.stack.env,
                release => rel.number,
                host => host,
                port => ports.first().map(|(_, p)| *p),
                ports => ports_by_name,
            },
        };
        env.render_str(&config.content, ctx).map_err(|e| {
            format!(
                "config {}: template: {}",
                config.name,
                skiff_spec::template::describe(&e)
            )
        })
    }

    /// `service("x")` in a template: how this instance reaches service `x`.
    fn add_service_function(
        &self,
        env: &mut minijinja::Environment<'_>,
        stack: &StackKey,
        rel: &Release,
        container: bool,
    ) {
        let addresses: BTreeMap<String, (String, u16)> = rel
            .spec
            .services
            .keys()
            .filter_map(|n| {
                self.dependency_address(stack, rel, n, container)
                    .map(|a| (n.clone(), a))
            })
            .collect();
        env.add_function(
            "service",
            move |name: String| -> Result<minijinja::Value, minijinja::Error> {
                let (host, port) = addresses.get(&name).ok_or_else(|| {
                    minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!("service {name:?} has no running instance"),
                    )
                })?;
                let address = match host.parse::<IpAddr>() {
                    Ok(ip) => SocketAddr::new(ip, *port).to_string(),
                    Err(_) => format!("{host}:{port}"),
                };
                Ok(minijinja::context! { host => host, port => port, address => address })
            },
        );
    }
}
