//! The monitor task of an instance: its exit seen at once beside its readiness and
//! liveness probes, each run when due.

use super::*;

impl Agent {
    pub(crate) fn spawn_monitor(
        self: &Arc<Self>,
        id: InstanceId,
        live: &Live,
    ) -> tokio::task::JoinHandle<()> {
        let agent = self.clone();
        let handle = live
            .handle
            .clone()
            .expect("monitored instances have a handle");
        let observed = live.observed.clone();
        let spec = live.spec.clone();
        let ports = live.ports.clone();
        let node = self.cfg.node_addr;
        tokio::spawn(async move {
            // Command checks run through the workload (inside a container; with a process's
            // environment), so no environment is needed here.
            let no_env = BTreeMap::new();
            let readiness = Checker::new(
                Probe::for_instance(
                    spec.health.as_ref(),
                    node,
                    &ports,
                    &no_env,
                    Some(handle.clone()),
                ),
                spec.health.as_ref(),
            );
            let liveness = spec.liveness.as_ref().map(|h| {
                Checker::liveness(
                    Probe::for_instance(Some(h), node, &ports, &no_env, Some(handle.clone())),
                    h,
                )
            });
            let mut probes = Probes {
                started: Instant::now(),
                ready_once: false,
                readiness,
                liveness,
                held: false,
                killed_for: None,
            };
            // The exit is watched beside the probes, not between them: a crash during a
            // probe that hangs until its timeout is still seen within ~10 ms.
            // Resolves from an event (a pidfd, the engine's wait): no timer per instance.
            let exit = handle.wait();
            tokio::pin!(exit);
            let status = loop {
                let round = async {
                    if probes.killed_for.is_some() {
                        return std::future::pending().await;
                    }
                    // Boxed for the round: the probes' futures (HTTP, exec) stay out of the
                    // state machine every instance keeps for its whole life.
                    Box::pin(agent.probe_once(&id, &spec, &observed, &handle, &mut probes)).await;
                    // Asleep until a check is due: no timer per instance every few ms.
                    tokio::time::sleep_until(probes.next_due()).await;
                };
                tokio::select! {
                    biased;
                    status = &mut exit => break status,
                    () = round => {}
                }
            };
            // Out of traffic before anything else happens: the server withdraws it on this
            // report (the details of the exit follow).
            agent.observed_now(&id, &observed, InstanceState::Exited, None);
            // An instance that never became ready: what its readiness check said last goes
            // with its exit (a bring-up that fails on it reports both).
            let last_check = (!probes.readiness.passed_once())
                .then(|| probes.readiness.last_failure().map(|f| f.output.clone()))
                .flatten();
            // Wake the reconciler when the back-off ends, not at the next resync.
            if let Some(delay) = agent.on_exit(
                &id,
                &spec,
                &observed,
                status,
                probes.killed_for.take(),
                last_check,
            ) {
                tokio::time::sleep(delay).await;
                agent.wake();
            }
        })
    }

    /// One round of the monitor's probes: readiness (into or out of the catalog), then
    /// liveness (stop for a restart, or hold out of traffic under `keep_failed`).
    async fn probe_once(
        &self,
        id: &InstanceId,
        spec: &ServiceSpec,
        observed: &Mutex<Observed>,
        handle: &Arc<dyn Workload>,
        p: &mut Probes,
    ) {
        if let Some(verdict) = p.readiness.due(p.started).await {
            let mut o = observed.lock().unwrap_or_else(|p| p.into_inner());
            let before = o.state;
            let mut event = None;
            match verdict {
                Verdict::Pass if !p.held => {
                    o.state = InstanceState::Healthy;
                    o.reason = None;
                    // The first pass is when it became ready: the server keeps the time (a
                    // bring-up's critical path is made of these and the starts).
                    if !p.ready_once {
                        p.ready_once = true;
                        event = Some((
                            "ready",
                            format!(
                                "ready {} ms after its start",
                                p.started.elapsed().as_millis()
                            ),
                        ));
                    }
                }
                Verdict::Pass => {}
                Verdict::Failing(why) => o.reason = Some(why),
                Verdict::Failed(why) => {
                    o.state = InstanceState::Unhealthy;
                    o.reason = Some(why);
                }
                Verdict::NeverReady(fail) => {
                    // Kept running out of traffic for `skiff exec` and `skiff logs`
                    // (`keep_failed`); a later pass still makes it ready.
                    o.state = InstanceState::Unhealthy;
                    o.reason = Some(format!(
                        "readiness never passed: {}; kept running out of traffic (keep_failed)",
                        fail.why
                    ));
                    event = Some((
                        "readiness_failed",
                        format!(
                            "readiness never passed in {} ms (start_period + retries x \
                             interval): {}; kept running out of traffic for `skiff exec` and \
                             `skiff logs`\nlast health check output:\n{}",
                            p.started.elapsed().as_millis(),
                            fail.why,
                            fail.output
                        ),
                    ));
                }
            }
            let now = o.state;
            drop(o);
            if let Some((kind, message)) = event {
                self.event(&id.stack, Some(id), kind, message);
            }
            if now != before {
                // Into or out of traffic: the server routes to it exactly while it is healthy.
                self.write_observed(id);
                self.wake();
            }
        }
        if let Some(live) = p.liveness.as_mut()
            && let Some(Verdict::Failed(why)) = live.due(p.started).await
        {
            if spec.keep_failed {
                let mut o = observed.lock().unwrap_or_else(|p| p.into_inner());
                o.state = InstanceState::Unhealthy;
                o.reason = Some(format!(
                    "liveness: {why}; kept running for inspection (keep_failed)"
                ));
                drop(o);
                self.event(
                    &id.stack,
                    Some(id),
                    "liveness_failed",
                    format!("{why}; kept running out of traffic (keep_failed)"),
                );
                self.write_observed(id);
                p.liveness = None;
                p.held = true;
            } else {
                self.event(
                    &id.stack,
                    Some(id),
                    "liveness_failed",
                    format!("{why}; restarting"),
                );
                self.observed_now(
                    id,
                    observed,
                    InstanceState::Unhealthy,
                    Some(format!("liveness: {why}")),
                );
                p.killed_for = Some(format!("liveness check failed: {why}"));
                let (h, signal, grace) = (handle.clone(), stop_signal(spec), spec.stop_grace);
                tokio::spawn(async move {
                    if let Err(e) = h.stop(signal, grace).await {
                        tracing::warn!("stopping after failed liveness: {e}");
                    }
                });
            }
        }
    }
}

impl Probes {
    /// When the next check is due (readiness or liveness, whichever comes first).
    fn next_due(&self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let readiness = self.readiness.next_due().unwrap_or(now);
        match self.liveness.as_ref() {
            Some(l) => readiness.min(l.next_due().unwrap_or(now)),
            None => readiness,
        }
    }
}

/// An instance's probes and what they decided so far.
struct Probes {
    started: Instant,
    /// Readiness passed once (its `ready` event was sent).
    ready_once: bool,
    readiness: Checker,
    liveness: Option<Checker>,
    /// Failed liveness under `keep_failed`: out of traffic for good.
    held: bool,
    /// Stopped by skiff after failed liveness: the cause recorded with the exit.
    killed_for: Option<String>,
}
