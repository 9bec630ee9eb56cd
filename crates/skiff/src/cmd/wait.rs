//! Waiting for a stack's desired instances: what `up`, `scale`, `start` and `restart` follow
//! until it holds. The desired set is the current release's: for each service, `replicas`
//! instances healthy and up to date with the current spec (counted, not named: a start-first
//! replacement runs under an index of its own). An instance kept through a release that
//! changed nothing of how it runs (an unchanged `up`, a replica or policy change) is re-stamped
//! with that release, so "up to date" is `release == current`, whatever release started it;
//! instances a rollout has not replaced yet keep their older release and are not counted, and
//! the wait holds while one of them still serves.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use skiff_client::StackFilter;
use skiff_client::blocking::Client;
use skiff_model::{Instance, InstanceState, Release};

use super::bringup;

/// Restarts after which an instance that never became healthy fails the wait (a crash loop,
/// or a start that cannot succeed: a missing image, a bad command).
const CRASH_LOOP: u32 = 3;

/// What to wait for.
pub struct Wait<'a> {
    pub env: &'a str,
    pub stack: &'a str,
    /// The release whose spec is desired (the current one).
    pub release: &'a Release,
    /// Only these services (all of the release's when empty).
    pub services: &'a [String],
    pub timeout: Duration,
    /// Print a line per service whenever its count changes.
    pub progress: bool,
}

/// Waits as `up` does for `release` of `stack` (`timeout` seconds), then prints how many
/// instances are healthy and how long it took since `started`.
pub fn until_ready_and_report(
    client: &Client,
    env: &str,
    stack: &str,
    release: &Release,
    timeout: u64,
    started: Instant,
) -> anyhow::Result<()> {
    let wait = Wait {
        env,
        stack,
        release,
        services: &[],
        timeout: Duration::from_secs(timeout),
        progress: true,
    };
    until_ready(client, &wait, |_| true)?;
    let total: u32 = release.spec.services.values().map(|s| s.replicas).sum();
    println!(
        "stack {stack} release {}: {total} instances healthy in {:.2}s",
        release.number,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Polls the server until every desired instance is healthy, up to date and passes `fresh`
/// (e.g. "not one of the pids before a restart"). Fails at once on a failed instance or a
/// crash loop, naming the cause, and with the instances still pending after the timeout.
pub fn until_ready(
    client: &Client,
    w: &Wait<'_>,
    fresh: impl Fn(&Instance) -> bool,
) -> anyhow::Result<()> {
    until_ready_following(client, w, fresh, None)
}

/// A bring-up that failed (already reported to the user, as text or as `-o json`).
#[derive(Debug)]
pub struct BringupFailed(pub Box<bringup::Failure>);

impl std::fmt::Display for BringupFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "service {} failed the bring-up", self.0.service)
    }
}

impl std::error::Error for BringupFailed {}

/// [`until_ready`], also following the stack's `events` from where they were marked: an
/// instance of the release that ends before it was ever ready, or whose readiness check is
/// given up on, fails the wait at once with a [`BringupFailed`] (its report is not printed
/// here).
pub fn until_ready_following(
    client: &Client,
    w: &Wait<'_>,
    fresh: impl Fn(&Instance) -> bool,
    mut events: Option<&mut bringup::Events>,
) -> anyhow::Result<()> {
    let wanted: BTreeMap<&String, u32> = w
        .release
        .spec
        .services
        .iter()
        .filter(|(n, _)| w.services.is_empty() || w.services.contains(n))
        .map(|(n, s)| (n, s.replicas))
        .collect();
    let deadline = Instant::now() + w.timeout;
    let mut last_lines: BTreeMap<&String, String> = BTreeMap::new();
    let mut last_gate: Option<String> = None;
    let filter = StackFilter {
        env: Some(w.env.to_string()),
        stack: Some(w.stack.to_string()),
    };
    loop {
        let instances = client.instances(&filter)?;
        let mut all_ready = true;
        let mut failed = Vec::new();
        // A rollout of this release that paused or failed will not finish by waiting.
        let stack = skiff_model::StackKey {
            env: w.env.to_string(),
            stack: w.stack.to_string(),
        };
        let mut gated: Vec<String> = Vec::new();
        // Services whose new release has every request: old instances kept warm (blue-green's
        // keep_previous) do not serve.
        let mut switched: Vec<String> = Vec::new();
        // Services that roll out this release: their failures are the rollout's to judge
        // (pause, roll back or carry on by its policy), reported below.
        let mut rolling: Vec<String> = Vec::new();
        for r in client.rollouts(&stack)? {
            if r.release == w.release.number {
                rolling.push(r.service.clone());
            }
            if r.release == w.release.number && r.traffic.as_ref().is_some_and(|t| t.weight == 100)
            {
                switched.push(r.service.clone());
            }
            // A canary step or a blue-green switch that waits for `promote` is where `up`
            // hands over to the operator.
            if let Some(t) = &r.traffic
                && r.release == w.release.number
                && r.state == "running"
                && r.reason
                    .as_deref()
                    .is_some_and(|why| why.contains("promote"))
            {
                let line = format!(
                    "{}: {} step {}/{}, {}% of requests to release {}; waiting for `skiff rollout promote {} {}`",
                    r.service, t.strategy, t.step, t.steps, t.weight, r.release, w.stack, r.service
                );
                if w.progress && last_gate.as_ref() != Some(&line) {
                    println!("  {line}");
                    last_gate = Some(line);
                }
                gated.push(r.service.clone());
            }
            if r.rollback && r.from == Some(w.release.number) {
                failed.push(format!(
                    "release {} was rolled back by release {}: {}",
                    w.release.number,
                    r.release,
                    r.reason.as_deref().unwrap_or("`skiff rollback`")
                ));
                break;
            }
            if wanted.contains_key(&r.service)
                && r.release == w.release.number
                && (r.state == "paused" || r.state == "failed")
            {
                failed.push(format!(
                    "{}: the rollout of release {} {}: {} (see `skiff rollout status {}`)",
                    r.service,
                    r.release,
                    r.state,
                    r.reason.as_deref().unwrap_or("no reason recorded"),
                    w.stack
                ));
            }
        }
        if let Some(ev) = events.as_deref_mut() {
            ev.poll(client)?;
            let brought_up = |s: &str| {
                let s = s.to_string();
                wanted.contains_key(&s) && !rolling.contains(&s)
            };
            if let Some(e) =
                bringup::first_failure(&ev.seen, &instances, w.release.number, &brought_up)
            {
                let report = bringup::failure(client, &stack, &w.release.spec, e, &instances);
                return Err(BringupFailed(Box::new(report)).into());
            }
        }
        // Work no node can take fails the wait at once, with the scheduler's reason.
        let unplaced = client.unplaced(&filter)?;
        for u in unplaced.iter().filter(|u| wanted.contains_key(&u.service)) {
            failed.push(format!(
                "{}: {} instance(s) fit no node: {} (placed once a node fits; see `skiff node ls`)",
                u.service, u.missing, u.reason
            ));
        }
        for (&svc, &n) in &wanted {
            if gated.contains(svc) {
                continue;
            }
            let desired: Vec<&Instance> = instances
                .iter()
                .filter(|i| &i.id.service == svc && i.release == w.release.number)
                .collect();
            // A one-shot (a migration) that exited 0 is done: its policy does not restart it.
            let completed =
                |i: &Instance| i.state == InstanceState::Failed && i.exit_code == Some(0);
            let ready = desired
                .iter()
                .filter(|i| (i.state == InstanceState::Healthy && fresh(i)) || completed(i))
                .count();
            for i in &desired {
                let reason = i.reason.clone().unwrap_or_default();
                if i.state == InstanceState::Failed && !completed(i) {
                    failed.push(format!("{}: {reason}", i.id.short()));
                } else if i.state != InstanceState::Healthy && i.restarts >= CRASH_LOOP {
                    // Waiting out the timeout would only hide the cause.
                    failed.push(format!(
                        "{}: restarted {} times without becoming healthy; last: {reason} \
                         (see `skiff logs {svc}`)",
                        i.id.short(),
                        i.restarts
                    ));
                }
            }
            let ready = (ready as u32).min(n);
            // Done when the old ones no longer serve either (a rollout withdraws and drains
            // them once their replacements are ready).
            // ...and are stopped: not serving, nor draining (a restart's old instances are of
            // the same release: not `fresh`).
            let old_serving = !switched.contains(svc)
                && instances.iter().any(|i| {
                    &i.id.service == svc
                        && (i.release != w.release.number || !fresh(i))
                        && matches!(i.state, InstanceState::Healthy | InstanceState::Stopping)
                });
            all_ready &= ready == n && !old_serving;
            if w.progress {
                let line = format!("{svc:<20} {ready}/{n} healthy");
                if last_lines.get(svc) != Some(&line) {
                    println!("  {line}");
                    last_lines.insert(svc, line);
                }
            }
        }
        if all_ready {
            return Ok(());
        }
        if !failed.is_empty() {
            for f in failed {
                crate::output::print_error(&f);
            }
            anyhow::bail!("stack {} did not become healthy", w.stack);
        }
        if Instant::now() > deadline {
            let pending: Vec<String> = instances
                .iter()
                .filter(|i| wanted.contains_key(&i.id.service))
                .filter(|i| i.state != InstanceState::Healthy || i.release != w.release.number)
                .map(|i| {
                    format!(
                        "{} {} (release {}){}",
                        i.id.short(),
                        super::service::state_name(i.state),
                        i.release,
                        i.reason
                            .as_ref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            anyhow::bail!(
                "timed out after {}s waiting for release {}; not ready: {}",
                w.timeout.as_secs(),
                w.release.number,
                if pending.is_empty() {
                    "instances not started yet (waiting for dependencies?)".into()
                } else {
                    pending.join(", ")
                }
            );
        }
        // Every 10 ms, slower for big stacks: each poll lists every instance.
        std::thread::sleep(Duration::from_millis(
            (instances.len() as u64 / 20).clamp(10, 50),
        ));
    }
}
