//! One reconcile pass: what this node's allocations want vs. what runs; starts, stops
//! (deregister, drain, signal), restarts by policy with back-off.

use super::*;

impl Agent {
    /// One pass: stop what is not allocated here, restart by policy, start what is missing.
    /// (The server allocates a service only once its dependencies are met.)
    pub async fn reconcile(self: Arc<Self>) {
        let Some(allocs) = self.desired() else { return };
        let mut desired: BTreeMap<InstanceId, (Arc<Release>, String, u64)> = BTreeMap::new();
        for (id, a) in allocs.iter() {
            // A release that cannot be fetched now keeps what runs of it as it is.
            let Some(rel) = self.release(&id.stack, a.release).await else {
                return;
            };
            if rel.spec.services.contains_key(&id.service) {
                desired.insert(id.clone(), (rel, id.service.clone(), a.generation));
            }
        }

        let mut to_stop = Vec::new();
        let mut to_start = Vec::new();
        let mut to_reload = Vec::new();
        let mut restamped = Vec::new();
        {
            let mut live = self.live();
            for (id, l) in live.iter_mut() {
                if l.busy {
                    continue;
                }
                // A new release that only changes the replica count or how releases roll
                // out keeps the instances that stay; one that changes only config files of a
                // service with `x-skiff.reload` reloads the running ones; any other change,
                // or a restart, replaces them.
                let change = match desired.get(id) {
                    Some((rel, svc, generation)) if *generation == l.generation => {
                        l.spec.change_to(&rel.spec.services[svc])
                    }
                    _ => WorkloadChange::Replace,
                };
                if let WorkloadChange::Reload { configs, signal } = change {
                    l.busy = true;
                    if let Some((rel, svc, _)) = desired.get(id)
                        && l.handle.is_some()
                        && l.running()
                    {
                        to_reload.push((id.clone(), rel.clone(), svc.clone(), configs, signal));
                    } else {
                        // Not running: its next start takes the new files anyway.
                        to_stop.push(id.clone());
                    }
                    continue;
                }
                if change == WorkloadChange::Replace {
                    l.busy = true;
                    to_stop.push(id.clone());
                    continue;
                }
                // A kept instance belongs to the current release from now on: `up`, `ps`
                // and `status` see it as up to date, whatever release started it.
                if let Some((rel, svc, _)) = desired.get(id)
                    && l.release != rel.number
                {
                    l.release = rel.number;
                    l.spec = rel.spec.services[svc].clone();
                    restamped.push(id.clone());
                }
                let obs = l.observed.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if obs.state == InstanceState::Exited
                    && obs.restart_at.is_some_and(|t| t <= Instant::now())
                {
                    l.busy = true;
                    to_stop.push(id.clone());
                }
            }
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            for (id, (rel, svc, generation)) in &desired {
                if !live.contains_key(id) && !held.contains(id) {
                    to_start.push((id.clone(), rel.clone(), svc.clone(), *generation));
                }
            }
        }
        for id in &restamped {
            self.write_observed(id);
        }

        let mut tasks = tokio::task::JoinSet::new();
        for id in to_stop {
            let agent = self.clone();
            tasks.spawn(async move { agent.stop_instance(id).await });
        }
        for (id, rel, svc, generation) in to_start {
            let agent = self.clone();
            tasks.spawn(async move { agent.start_instance(id, rel, svc, generation).await });
        }
        for (id, rel, svc, configs, signal) in to_reload {
            let agent = self.clone();
            tasks.spawn(async move { agent.reload_instance(id, rel, svc, configs, signal).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    pub(crate) async fn start_instance(
        self: Arc<Self>,
        id: InstanceId,
        rel: Arc<Release>,
        svc: String,
        generation: u64,
    ) {
        let spec = rel.spec.services[&svc].clone();
        let observed = Arc::new(Mutex::new(Observed {
            state: InstanceState::Starting,
            exit: None,
            restarts: 0,
            restart_at: None,
            started: Instant::now(),
            reason: None,
        }));
        // Claim the id first: no second start can race this one.
        {
            let mut live = self.live();
            if live.contains_key(&id) {
                return;
            }
            live.insert(
                id.clone(),
                Live {
                    release: rel.number,
                    generation,
                    spec: spec.clone(),
                    handle: None,
                    ports: Vec::new(),
                    observed: observed.clone(),
                    busy: true,
                    monitor: None,
                },
            );
        }
        match self.launch(&id, &rel, &spec, generation, 0).await {
            Ok(handle) => {
                let mut live = self.live();
                if let Some(l) = live.get_mut(&id) {
                    l.ports = handle.ports().to_vec();
                    l.handle = Some(handle);
                    l.busy = false;
                    l.monitor = Some(self.spawn_monitor(id.clone(), l));
                }
            }
            Err(reason) => {
                self.event(&id.stack, Some(&id), "start_failed", reason.clone());
                let mut o = observed.lock().unwrap_or_else(|p| p.into_inner());
                o.state = InstanceState::Exited;
                o.reason = Some(reason);
                o.restart_at = Some(Instant::now() + Duration::from_secs(1));
                drop(o);
                if let Some(l) = self.live().get_mut(&id) {
                    l.busy = false;
                }
            }
        }
        self.write_observed(&id);
    }

    /// Applies a release that changes only config files of a reloading service to a running
    /// instance: rewrites the changed files (as its driver says: atomically, or in place),
    /// sends the reload signal, then re-stamps it with the release and records that in its
    /// directory. It stays in the catalog throughout. A file that cannot be written or a
    /// signal that cannot be sent replaces the instance instead.
    pub(crate) async fn reload_instance(
        self: Arc<Self>,
        id: InstanceId,
        rel: Arc<Release>,
        svc: String,
        configs: Vec<String>,
        signal: String,
    ) {
        let spec = rel.spec.services[&svc].clone();
        let handle = self.live().get(&id).and_then(|l| l.handle.clone());
        let dir = self.instance_dir(&id);
        let done = async {
            let handle = handle.ok_or_else(|| "it is not running".to_string())?;
            let sig = Signal::from_str(&normalize_signal(&signal))
                .map_err(|_| format!("unknown signal {signal:?}"))?;
            let driver = self.driver(spec.driver).map_err(str::to_string)?;
            let mut changed: Vec<_> = launch::config_places(driver.as_ref(), &dir, &spec)?
                .into_iter()
                .filter(|(c, _)| configs.contains(&c.name))
                .collect();
            if changed.iter().any(|(c, _)| c.template) {
                // Rendered with what the instance was started with: its ports and environment.
                let meta = adopt::read_meta(&dir)
                    .ok_or_else(|| "its record cannot be read".to_string())?;
                let container = driver.own_network();
                // A container listens on its container ports (the record has the host ports
                // the engine picked), as when it started.
                let ports = if container {
                    driver.listen_ports(&spec).map_err(|e| e.to_string())?
                } else {
                    meta.ports.clone()
                };
                for (c, _) in changed.iter_mut().filter(|(c, _)| c.template) {
                    c.content = self.render_config(&id, &rel, c, &meta.env, &ports, container)?;
                }
            }
            tokio::task::spawn_blocking(move || {
                for (c, place) in &changed {
                    skiff_driver::configs::write(place, c)
                        .map_err(|e| format!("config {}: {e}", c.name))?;
                }
                Ok::<_, String>(())
            })
            .await
            .map_err(|e| e.to_string())??;
            skiff_store::crash_point("config-written");
            handle
                .signal(sig)
                .await
                .map_err(|e| format!("sending {}: {e}", sig.as_str()))?;
            Ok::<_, String>(sig)
        }
        .await;
        let sig = match done {
            Ok(sig) => sig,
            Err(why) => {
                self.event(
                    &id.stack,
                    Some(&id),
                    "reload_failed",
                    format!(
                        "reloading configs {} failed ({why}); replacing the instance",
                        configs.join(", ")
                    ),
                );
                self.stop_instance(id).await;
                return;
            }
        };
        // From here on the instance is of the new release, also for the next agent that
        // adopts it: its record names the release whose files it has.
        if let Some(mut meta) = adopt::read_meta(&dir) {
            meta.release = rel.number;
            meta.spec = spec.clone();
            if let Err(e) = write_meta(&dir, &meta).await {
                tracing::warn!(instance = %id, "recording the reload: {e}");
            }
        }
        if let Some(l) = self.live().get_mut(&id) {
            l.release = rel.number;
            l.spec = spec;
            l.busy = false;
        }
        self.event(
            &id.stack,
            Some(&id),
            "reloaded",
            format!("reloaded: configs {}; {}", configs.join(", "), sig.as_str()),
        );
        self.write_observed(&id);
    }

    /// Records an exit; returns the restart delay when the policy restarts it.
    pub(crate) fn on_exit(
        &self,
        id: &InstanceId,
        spec: &ServiceSpec,
        observed: &Mutex<Observed>,
        ended: Ended,
        cause: Option<String>,
        last_check: Option<String>,
    ) -> Option<Duration> {
        let exit = ended.exit;
        let oom = ended.oom_killed.then(|| match spec.limits.memory_bytes {
            Some(b) => format!("out of memory: limit {} MiB", b >> 20),
            None => "out of memory".to_string(),
        });
        let mut o = observed.lock().unwrap_or_else(|p| p.into_inner());
        let restart = match spec.restart.condition {
            RestartCondition::Always => true,
            RestartCondition::OnFailure => !exit.success(),
            RestartCondition::Never => false,
        } && spec.restart.max_attempts.is_none_or(|m| o.restarts < m);
        // Back off by doubling from the policy's delay, up to 10 s; a run longer than 10 s
        // starts the doubling over.
        let ran = o.started.elapsed();
        let exponent = if ran > Duration::from_secs(10) {
            0
        } else {
            o.restarts.min(7)
        };
        let delay = (spec.restart.delay * 2u32.pow(exponent)).min(Duration::from_secs(10));
        o.state = if restart {
            InstanceState::Exited
        } else {
            InstanceState::Failed
        };
        let describe = match oom.as_ref().or(cause.as_ref()) {
            Some(why) => format!("{} ({why})", exit.describe()),
            None => exit.describe(),
        };
        o.reason = Some(describe.clone());
        o.restart_at = restart.then(|| Instant::now() + delay);
        o.exit = Some(exit.clone());
        drop(o);
        let mut what = if restart {
            format!("{describe}; restarting in {delay:?}")
        } else {
            format!("{describe}; not restarting (policy)")
        };
        if let Some(check) = last_check {
            what = format!("{what}\nlast health check output:\n{check}");
        }
        // A one-shot that ended well (a migration) completed; anything else exited.
        let kind = if oom.is_some() {
            "oom_killed"
        } else if exit.success() && !restart {
            "completed"
        } else {
            "exited"
        };
        self.event(&id.stack, Some(id), kind, what);
        self.write_observed(id);
        self.wake();
        restart.then_some(delay)
    }

    pub(crate) async fn stop_instance(self: Arc<Self>, id: InstanceId) {
        let (handle, spec, monitor, restarting, restarts) = {
            let mut live = self.live();
            let Some(l) = live.get_mut(&id) else { return };
            let o = l.observed.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let restarting = o.state == InstanceState::Exited && o.restart_at.is_some();
            (
                l.handle.clone(),
                l.spec.clone(),
                l.monitor.take(),
                restarting,
                o.restarts,
            )
        };
        if let Some(m) = monitor {
            m.abort();
        }
        // Deregister, drain, then signal: nothing routes to it by the time it gets its stop
        // signal, and the requests it was serving have finished (at most the stop grace
        // period, capped at 30 s, is spent waiting for them).
        let observed = self.live().get(&id).map(|l| l.observed.clone());
        let was_running = observed.as_ref().is_some_and(|o| {
            let o = o.lock().unwrap_or_else(|p| p.into_inner());
            matches!(o.state, InstanceState::Healthy | InstanceState::Unhealthy)
        });
        if let Some(o) = &observed {
            self.observed_now(&id, o, InstanceState::Stopping, None);
        }
        // Only an instance the server still counts requests on waits for them (most have
        // none: no drain call, no connection per stop).
        if was_running && Box::pin(self.reporter.flush()).await.contains(&id) {
            let grace = spec.stop_grace.min(Duration::from_secs(30));
            match Box::pin(self.cfg.server.drain(&id, grace)).await {
                Ok(d) if !d.drained => self.event(
                    &id.stack,
                    Some(&id),
                    "drain_timeout",
                    format!(
                        "{} requests still in flight after {grace:?}; stopping anyway",
                        d.in_flight
                    ),
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(instance = %id, "drain: {e}; stopping anyway"),
            }
        }
        if let Some(h) = handle {
            if let Err(e) = h.stop(stop_signal(&spec), spec.stop_grace).await {
                tracing::warn!(instance = %id, "stopping: {e}");
            }
            skiff_store::crash_point("instance-stopped");
            // What it held on the node: a process's cgroup (whatever escaped its process
            // group dies with it) and host ports, a container's network once unused.
            if let Err(e) = h.release().await {
                self.event(&id.stack, Some(&id), "release", format!("releasing: {e}"));
            }
        }
        let dir = self.instance_dir(&id);
        let _ = tokio::task::spawn_blocking(move || {
            if restarting {
                // A restart keeps what the instance wrote (as `docker logs` does): a crash
                // loop's last lines stay readable through `skiff logs` and `up`'s report.
                remove_all_but_logs(&dir)
            } else {
                std::fs::remove_dir_all(dir)
            }
        })
        .await;
        self.live().remove(&id);
        self.reporter.send(Change::Removed(id.clone()));
        if restarting {
            // Start again right away, counting the restart.
            let desired = self.desired_release(&id).await;
            if let Some((rel, generation)) = desired {
                let svc = id.service.clone();
                let agent = self.clone();
                agent
                    .clone()
                    .start_instance(id.clone(), rel, svc, generation)
                    .await;
                if let Some(l) = agent.live().get(&id) {
                    l.observed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .restarts = restarts + 1;
                }
                agent.write_observed(&id);
            }
        } else {
            self.event(&id.stack, Some(&id), "stopped", "stopped".into());
            // Replaced (new release, restart): its successor starts now, not at the resync.
            if self.desired().is_some_and(|d| d.contains_key(&id)) {
                self.wake();
            }
        }
    }

    /// The release and restart generation `id` should run now, if it is allocated here.
    pub(crate) async fn desired_release(&self, id: &InstanceId) -> Option<(Arc<Release>, u64)> {
        let a = self.desired()?.get(id)?.clone();
        let rel = self.release(&id.stack, a.release).await?;
        rel.spec
            .services
            .contains_key(&id.service)
            .then_some((rel, a.generation))
    }

    /// Stops every instance (`skiff dev` shutting down).
    pub async fn stop_everything(self: &Arc<Self>) {
        let ids: Vec<InstanceId> = self.live().keys().cloned().collect();
        let mut tasks = tokio::task::JoinSet::new();
        for id in ids {
            if let Some(l) = self.live().get_mut(&id) {
                l.observed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .restart_at = None;
                l.busy = true;
            }
            let agent = self.clone();
            tasks.spawn(async move { agent.stop_instance(id).await });
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Empties an instance directory but for its logs.
fn remove_all_but_logs(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == driver::files::LOG_DIR {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}
