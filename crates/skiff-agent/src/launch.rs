//! Starting a workload: a process under its shim (cgroups joined before exec), or a
//! container (image built once per release, stack network, labels, limits).

use super::*;

impl Agent {
    /// Starts the workload of `id`; returns its handle and host ports.
    pub(crate) async fn launch(
        &self,
        id: &InstanceId,
        rel: &Release,
        spec: &ServiceSpec,
        generation: u64,
        restarts: u32,
    ) -> Result<Launched, String> {
        if spec.driver == skiff_model::Driver::Docker {
            // Boxed: an image build and the engine's calls make a large future; process
            // starts should not carry its size.
            return Box::pin(self.launch_container(id, rel, spec, generation, restarts)).await;
        }
        // Boxed: rare, and a large future (an HTTP call) would otherwise sit in every start's
        // state machine (1,000 starts in flight hold 1,000 of them).
        Box::pin(self.learn_addresses(&id.stack, spec)).await;
        let mut ports = Vec::new();
        for p in &spec.ports {
            let port = self
                .ports
                .allocate()
                .map_err(|e| format!("allocating a port: {e}"))?;
            ports.push((p.name.clone(), port));
        }
        let mut env = self.cfg.base_env.clone();
        match self.instance_env(id, rel, spec, &ports, false) {
            Ok(e) => env.extend(e),
            Err(e) => {
                self.ports.release(ports.iter().map(|(_, p)| *p));
                return Err(e);
            }
        }
        let dir = self.instance_dir(id);
        let argv = spec.process_argv();
        if argv.is_empty() {
            self.ports.release(ports.iter().map(|(_, p)| *p));
            return Err("no program to run (set command or x-skiff.executable)".into());
        }
        let limits = skiff_cgroup::Limits {
            memory_bytes: spec.limits.memory_bytes,
            cpus: spec.limits.cpus,
            pids: spec.limits.pids,
        };
        let cgroups = self.cfg.cgroups.clone();
        let group_name = cgroup_name(id);
        let mut launch = LaunchSpec {
            argv,
            env: env.clone(),
            cwd: spec
                .working_dir
                .as_ref()
                .map_or_else(|| dir.join("work"), PathBuf::from),
            max_log_bytes: 10 << 20,
            keep_logs: 3,
            cgroup_procs: Vec::new(),
        };
        let meta = Meta {
            id: id.to_string(),
            release: rel.number,
            generation,
            spec: spec.clone(),
            ports: ports.clone(),
            env: env.clone(),
            restarts,
            container: None,
        };
        let shim = self.cfg.shim.clone();
        let _permit = self.process_starts.acquire().await;
        let result = tokio::task::spawn_blocking(move || {
            match &cgroups {
                Ok(cg) => {
                    // A group left by a crashed run would carry its OOM count and processes.
                    if let Ok(stale) = cg.open(&group_name) {
                        stale.remove().map_err(|e| e.to_string())?;
                    }
                    let group = cg.create(&group_name, &limits).map_err(|e| e.to_string())?;
                    launch.cgroup_procs = group.procs_files();
                }
                Err(why) if limits != skiff_cgroup::Limits::default() => {
                    return Err(format!("resource limits need cgroups: {why}"));
                }
                Err(_) => {}
            }
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            let json = serde_json::to_vec(&meta).expect("meta serializes");
            driver::write_atomic(&dir.join(META), &json).map_err(|e| e.to_string())?;
            skiff_store::crash_point("instance-dir-written");
            let started = driver::Instance::start(&shim, &dir, &launch).map_err(|e| e.to_string());
            skiff_store::crash_point("instance-started");
            started
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match result {
            Ok(handle) => {
                self.event(
                    &id.stack,
                    Some(id),
                    "started",
                    format!("pid {} release {}", handle.pid, rel.number),
                );
                Ok((Handle::Process(handle), ports, env))
            }
            Err(e) => {
                self.ports.release(ports.iter().map(|(_, p)| *p));
                Err(e)
            }
        }
    }

    /// Starts `id` as a container: the image (built once per release when the service has
    /// `build`), the stack's network, then the container with its labels and limits.
    pub(crate) async fn launch_container(
        &self,
        id: &InstanceId,
        rel: &Release,
        spec: &ServiceSpec,
        generation: u64,
        restarts: u32,
    ) -> Result<Launched, String> {
        use skiff_driver_docker::labels;
        let engine = self.cfg.docker.clone().map_err(|why| {
            format!(
                "service {} runs on Docker ({why}); x-skiff: {{driver: process}} runs it as a \
                 process instead",
                id.service
            )
        })?;
        let image = self.ensure_image(&engine, id, rel, spec).await?;
        let targets: Vec<(String, u16)> = spec
            .ports
            .iter()
            .map(|p| (p.name.clone(), p.target))
            .collect();
        let env = self.instance_env(id, rel, spec, &targets, true)?;
        let stack_labels = BTreeMap::from([
            (labels::STACK.to_string(), id.stack.stack.clone()),
            (labels::ENV.to_string(), id.stack.env.clone()),
        ]);
        let network = format!("skiff_{}_{}", id.stack.stack, id.stack.env);
        engine
            .ensure_network(&network, &stack_labels)
            .await
            .map_err(|e| e.to_string())?;
        let mut container_labels = stack_labels;
        container_labels.insert(labels::SERVICE.into(), id.service.clone());
        container_labels.insert(labels::INSTANCE.into(), id.to_string());
        container_labels.insert(labels::RELEASE.into(), rel.number.to_string());
        let name = format!(
            "skiff-{}-{}-{}-{}",
            engine.cluster(),
            id.stack.env,
            id.stack.stack,
            id.short()
        );
        // A container of this name left by a crash before it was recorded.
        let _ = engine.remove(&name).await;
        let dir = self.instance_dir(id);
        let mut meta = Meta {
            id: id.to_string(),
            release: rel.number,
            generation,
            spec: spec.clone(),
            ports: Vec::new(),
            env: env.clone(),
            restarts,
            container: None,
        };
        write_meta(&dir, &meta).await?;
        skiff_store::crash_point("instance-dir-written");
        let run = skiff_driver_docker::ContainerSpec {
            name,
            image,
            entrypoint: spec.entrypoint.clone(),
            command: spec.command.clone(),
            env: env.clone(),
            working_dir: spec.working_dir.clone(),
            labels: container_labels,
            ports: spec
                .ports
                .iter()
                .map(|p| (p.name.clone(), p.target, p.protocol.clone()))
                .collect(),
            host_ip: self.cfg.node_addr.to_string(),
            network: Some((network, vec![id.service.clone()])),
            mounts: spec
                .mounts
                .iter()
                .map(|m| docker_mount(m, &id.stack.env))
                .collect(),
            memory_bytes: spec.limits.memory_bytes,
            cpus: spec.limits.cpus,
            pids: spec.limits.pids,
            stop_signal: normalize_signal(&spec.stop_signal),
            stop_grace: spec.stop_grace,
        };
        let container = engine.run(&run).await.map_err(|e| e.to_string())?;
        meta.container = Some(container.id.clone());
        meta.ports = container.ports.clone();
        write_meta(&dir, &meta).await?;
        skiff_store::crash_point("instance-started");
        self.event(
            &id.stack,
            Some(id),
            "started",
            format!(
                "container {} release {}",
                &container.id[..12.min(container.id.len())],
                rel.number
            ),
        );
        let handle = Handle::Container(Container::watch(engine, container.id, container.pid, &dir));
        Ok((handle, container.ports, env))
    }

    /// The image a container of `spec` runs: built from `build` (once per release, shared
    /// by the replicas starting together), or `image` as it is on this machine.
    pub(crate) async fn ensure_image(
        &self,
        engine: &skiff_driver_docker::Engine,
        id: &InstanceId,
        rel: &Release,
        spec: &ServiceSpec,
    ) -> Result<String, String> {
        match (&spec.build, &spec.image) {
            (Some(build), image) => {
                // As compose does: with both, the built image gets the `image` name.
                let tag = image.clone().unwrap_or_else(|| {
                    format!(
                        "skiff-{}-{}-{}:r{}",
                        id.stack.env, id.stack.stack, id.service, rel.number
                    )
                    .to_lowercase()
                });
                let cell = self
                    .builds
                    .lock()
                    .await
                    .entry(format!("{tag}#{}", rel.number))
                    .or_default()
                    .clone();
                cell.get_or_init(|| async {
                    self.event(&id.stack, Some(id), "building", format!("image {tag}"));
                    let started = Instant::now();
                    let built = engine
                        .build(
                            Path::new(&build.context),
                            build.dockerfile.as_deref(),
                            &tag,
                            |line| tracing::debug!(image = %tag, "{line}"),
                        )
                        .await
                        .map_err(|e| e.to_string());
                    if built.is_ok() {
                        self.event(
                            &id.stack,
                            Some(id),
                            "built",
                            format!("image {tag} in {:.1}s", started.elapsed().as_secs_f64()),
                        );
                    }
                    built
                })
                .await
                .clone()?;
                Ok(tag)
            }
            (None, Some(image)) => {
                if engine.has_image(image).await {
                    Ok(image.clone())
                } else {
                    Err(format!(
                        "image {image} is not on this machine (skiff does not pull from \
                         registries yet): build it, or give the service a build: section"
                    ))
                }
            }
            (None, None) => Err(format!(
                "service {} has neither an image nor a build context",
                id.service
            )),
        }
    }
}

/// A mount as the engine takes it. Volumes are per environment (an environment is an isolated
/// copy of the stack, databases included), except in `default` and for external ones, which
/// keep the name compose gives them.
fn docker_mount(m: &skiff_model::MountSpec, env: &str) -> skiff_driver_docker::MountSpec {
    use skiff_driver_docker::MountSpec as D;
    use skiff_model::MountSpec as M;
    match m {
        M::Bind {
            source,
            target,
            read_only,
        } => D::Bind {
            source: source.clone(),
            target: target.clone(),
            read_only: *read_only,
        },
        M::Volume {
            name,
            external,
            target,
            read_only,
        } => D::Volume {
            name: if name.is_empty() || *external || env == "default" {
                name.clone()
            } else {
                format!("{name}_{env}")
            },
            target: target.clone(),
            read_only: *read_only,
        },
        M::Tmpfs { target, size_bytes } => D::Tmpfs {
            target: target.clone(),
            size_bytes: *size_bytes,
        },
    }
}

/// `<env>/<stack>/<service>-<index>` below the agent's cgroup base.
pub(crate) fn cgroup_name(id: &InstanceId) -> String {
    format!("{}/{}/{}", id.stack.env, id.stack.stack, id.short())
}
