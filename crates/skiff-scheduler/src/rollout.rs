//! Rolling updates, decided: which outdated instances of a service to replace next, when a
//! batch is done, and what a failure does. Pure, like the placement half of this crate: the
//! control plane keeps the [`Rollout`] in its store, describes the service's copies as
//! [`Copy`]s, calls [`step`] on every pass and carries out the [`Action`]s.
//!
//! A batch holds up to `parallelism` instances. **Stop-first** re-stamps an outdated
//! allocation with the new release in place: its agent withdraws, drains and stops the old
//! instance and starts the new one under the same index. **Start-first** asks for a
//! replacement beside it (the scheduler places it under an index of its own; the old copy is
//! `replaced_by` it and stops once the replacement is ready, as a node drain does). An item
//! is done once its new instance is ready (and, start-first, the old copy gone); it is then
//! watched for `monitor` (as Swarm does, the window does not hold the next batch back): a new
//! instance that fails before it was ready or within its window is a failed update. When
//! failures exceed `max_failure_ratio` of the instances to replace, `failure_action` pauses
//! the rollout, rolls it back or carries on. The next batch starts `delay` after the last one
//! is done; the rollout is done when nothing is outdated, in flight or watched.
//!
//! **Invariant:** a step never puts more than `parallelism` instances in flight, and never
//! acts while the rollout is paused or over.

use serde::{Deserialize, Serialize};
use skiff_model::{FailureAction, UpdateOrder, UpdatePolicy};

/// A service's rollout to one release, as the store keeps it between passes (and across a
/// restart of the server: it resumes where it was).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The release being rolled out.
    pub release: u64,
    /// The release it replaces (where a rollback goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// Rolling back: `rollback_config` applies instead of `update_config`.
    #[serde(default)]
    pub rollback: bool,
    /// The service's restart generation it replaces to (`skiff restart` rolls too).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    pub state: RolloutState,
    /// Why it paused or failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub started_ms: u64,
    /// Outdated instances when it started.
    pub total: u32,
    pub replaced: u32,
    pub failed: u32,
    /// Instances in flight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch: Vec<Item>,
    /// New instances in their monitor window: (allocation, ready since).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watching: Vec<(String, u64)>,
    /// The next batch starts no earlier (the policy's `delay` after the last one).
    #[serde(default)]
    pub next_batch_ms: u64,
    /// Canary and blue-green: steps, weight and judgements ([`crate::traffic`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<crate::traffic::Traffic>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    Running,
    Paused,
    /// Every instance runs the release.
    Done,
    /// Over without reaching it (rolled back, or aborted).
    Failed,
}

/// One instance in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The outdated allocation (stop-first: re-stamped in place, so also the new one).
    pub old: String,
    /// Start-first: the replacement's allocation, once placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
}

/// One allocation of the service as the control plane sees it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copy<'a> {
    pub alloc: &'a str,
    pub index: u32,
    /// Its spec runs differently from the release's (an instance to replace).
    pub outdated: bool,
    /// Start-first: the allocation replacing it.
    pub replaced_by: Option<&'a str>,
    pub health: Health,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not started yet, starting, or not ready yet.
    Pending,
    Ready,
    /// Exited, gave up, or not ready any more after it was.
    Failed,
}

/// What the control plane does for a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop-first: give this allocation the new release, in place.
    Restamp(String),
    /// Start-first: place a replacement for this allocation; it stops once that is ready.
    Replace(String),
    /// A replacement that failed: stop it (its old copy is one of the replicas again).
    Abandon(String),
    /// Roll back to `from` (by `rollback_config`).
    Rollback,
    /// Something to tell (an event of the stack).
    Event(String),
}

impl RolloutState {
    /// The state's name, as it is stored (serde) and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Done => "done",
            RolloutState::Failed => "failed",
        }
    }
}

impl Rollout {
    /// A rollout of `release` over `total` outdated instances, starting now.
    pub fn new(release: u64, from: Option<u64>, total: u32, now_ms: u64) -> Rollout {
        Rollout {
            release,
            from,
            rollback: false,
            generation: 0,
            state: RolloutState::Running,
            reason: None,
            started_ms: now_ms,
            total,
            replaced: 0,
            failed: 0,
            batch: Vec::new(),
            watching: Vec::new(),
            next_batch_ms: 0,
            traffic: None,
        }
    }

    /// When a later pass has something to do even if nothing is reported: the end of a
    /// monitor window or of the delay between batches.
    pub fn wake_at(&self, policy: &UpdatePolicy) -> Option<u64> {
        if self.state != RolloutState::Running {
            return None;
        }
        let monitor = policy.monitor.as_millis() as u64;
        let watched = self.watching.iter().map(|(_, t)| t + monitor).min();
        let next = self.batch.is_empty().then_some(self.next_batch_ms);
        match (watched, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Advances `r` over the service's `copies` (its allocations now) by `policy` at `now_ms`;
/// `replicas` sizes percentage batches.
pub fn step(
    r: &mut Rollout,
    copies: &[Copy<'_>],
    policy: &UpdatePolicy,
    replicas: u32,
    now_ms: u64,
) -> Vec<Action> {
    let mut out = Vec::new();
    if r.state != RolloutState::Running {
        return out;
    }
    let find = |id: &str| copies.iter().find(|c| c.alloc == id);
    let monitor = policy.monitor.as_millis() as u64;
    let start_first = policy.order == UpdateOrder::StartFirst;

    // New instances in their monitor window: a failure counts, an end passes.
    let mut watching = std::mem::take(&mut r.watching);
    watching.retain(|(id, since)| {
        let Some(c) = find(id) else { return false };
        match c.health {
            Health::Ready => now_ms < since + monitor,
            Health::Pending | Health::Failed => {
                r.failed += 1;
                r.replaced = r.replaced.saturating_sub(1);
                out.push(Action::Event(format!(
                    "release {}: instance {} failed within its monitor window",
                    r.release, c.index
                )));
                false
            }
        }
    });
    r.watching = watching;

    // Progress of the batch in flight.
    let mut finished = false;
    let mut batch = std::mem::take(&mut r.batch);
    let mut ready = Vec::new();
    batch.retain_mut(|item| {
        let old = find(&item.old);
        if start_first && item.new.is_none() {
            item.new = old.and_then(|c| c.replaced_by).map(str::to_string);
        }
        let new_id = if start_first {
            item.new.as_deref()
        } else {
            Some(item.old.as_str())
        };
        let Some(new) = new_id.and_then(find) else {
            if start_first && item.new.is_some() && old.is_some_and(|c| c.replaced_by.is_none()) {
                // The replacement went away before it was done (its node went down, or it
                // was stopped): the old copy is a replica again and outdated; it will be
                // picked again.
                return false;
            }
            // Not placed yet (start-first), or the allocation is gone (scaled down, node
            // down): nothing more to wait for.
            return start_first && item.new.is_none() && old.is_some();
        };
        // A re-stamp not applied yet still shows the old instance: not the new one's health.
        let health = if new.outdated {
            Health::Pending
        } else {
            new.health
        };
        match health {
            Health::Ready => {
                if start_first && old.is_some() {
                    // Ready; done once the old copy is gone (it is being drained).
                    return true;
                }
                r.replaced += 1;
                finished = true;
                ready.push((new.alloc.to_string(), now_ms));
                false
            }
            Health::Pending => true,
            Health::Failed => {
                r.failed += 1;
                finished = true;
                out.push(Action::Event(format!(
                    "release {}: instance {} failed before it was ready",
                    r.release, new.index
                )));
                if start_first {
                    out.push(Action::Abandon(new.alloc.to_string()));
                }
                false
            }
        }
    });
    r.batch = batch;
    if monitor > 0 {
        r.watching.extend(ready);
    }

    // Too many failures: the policy's failure action.
    let allowed = policy.max_failure_ratio * f64::from(r.total.max(1));
    if r.failed > 0 && f64::from(r.failed) > allowed {
        let why = format!(
            "{} of {} instances failed (max_failure_ratio {})",
            r.failed, r.total, policy.max_failure_ratio
        );
        match policy.failure_action {
            FailureAction::Pause => {
                r.state = RolloutState::Paused;
                out.push(Action::Event(format!(
                    "release {} paused: {why}; `skiff rollout resume` or `rollback`",
                    r.release
                )));
                r.reason = Some(why);
                return out;
            }
            FailureAction::Rollback if r.from.is_some() && !r.rollback => {
                r.state = RolloutState::Failed;
                out.push(Action::Event(format!(
                    "release {} failed: {why}; rolling back to release {}",
                    r.release,
                    r.from.unwrap_or_default()
                )));
                r.reason = Some(why);
                out.push(Action::Rollback);
                return out;
            }
            FailureAction::Rollback | FailureAction::Continue => {}
        }
    }

    if finished && r.batch.is_empty() {
        r.next_batch_ms = now_ms + policy.delay.as_millis() as u64;
    }
    if !r.batch.is_empty() || now_ms < r.next_batch_ms {
        return out;
    }

    // The next batch: outdated copies not being replaced, lowest index first.
    let mut todo: Vec<&Copy<'_>> = copies
        .iter()
        .filter(|c| c.outdated && c.replaced_by.is_none())
        .collect();
    if todo.is_empty() && !r.watching.is_empty() {
        return out;
    }
    if todo.is_empty() {
        r.state = RolloutState::Done;
        out.push(Action::Event(format!(
            "release {}: {} instance(s) replaced{}",
            r.release,
            r.replaced,
            if r.failed > 0 {
                format!(", {} failed", r.failed)
            } else {
                String::new()
            }
        )));
        return out;
    }
    todo.sort_by_key(|c| c.index);
    for c in todo
        .into_iter()
        .take(policy.parallelism.batch(replicas) as usize)
    {
        r.batch.push(Item {
            old: c.alloc.to_string(),
            new: None,
        });
        out.push(if start_first {
            Action::Replace(c.alloc.to_string())
        } else {
            Action::Restamp(c.alloc.to_string())
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use skiff_model::Parallelism;

    use super::*;

    fn policy(parallelism: u32, order: UpdateOrder) -> UpdatePolicy {
        UpdatePolicy {
            parallelism: Parallelism::Count(parallelism),
            monitor: Duration::from_millis(100),
            order,
            ..UpdatePolicy::default()
        }
    }

    fn copy(alloc: &str, index: u32, outdated: bool, health: Health) -> Copy<'_> {
        Copy {
            alloc,
            index,
            outdated,
            replaced_by: None,
            health,
        }
    }

    #[test]
    fn stop_first_replaces_one_batch_at_a_time_after_its_monitor_window() {
        let p = policy(2, UpdateOrder::StopFirst);
        let mut r = Rollout::new(2, Some(1), 3, 0);
        let all_old = [
            copy("a1", 1, true, Health::Ready),
            copy("a2", 2, true, Health::Ready),
            copy("a3", 3, true, Health::Ready),
        ];
        let acts = step(&mut r, &all_old, &p, 3, 0);
        assert_eq!(
            acts,
            [Action::Restamp("a1".into()), Action::Restamp("a2".into())]
        );
        // Restamped: starting, then ready; done once ready for the monitor window.
        let starting = [
            copy("a1", 1, false, Health::Pending),
            copy("a2", 2, false, Health::Pending),
            copy("a3", 3, true, Health::Ready),
        ];
        assert!(step(&mut r, &starting, &p, 3, 10).is_empty());
        let ready = [
            copy("a1", 1, false, Health::Ready),
            copy("a2", 2, false, Health::Ready),
            copy("a3", 3, true, Health::Ready),
        ];
        // Ready: done, watched for the monitor window, and the next batch starts at once.
        assert_eq!(
            step(&mut r, &ready, &p, 3, 20),
            [Action::Restamp("a3".into())]
        );
        assert_eq!(r.replaced, 2);
        assert_eq!(r.wake_at(&p), Some(120), "the end of the monitor window");
        let done = [
            copy("a1", 1, false, Health::Ready),
            copy("a2", 2, false, Health::Ready),
            copy("a3", 3, false, Health::Ready),
        ];
        assert!(step(&mut r, &done, &p, 3, 130).is_empty());
        assert_eq!(r.state, RolloutState::Running, "a3 is still watched");
        let acts = step(&mut r, &done, &p, 3, 230);
        assert_eq!(r.state, RolloutState::Done);
        assert_eq!(r.replaced, 3);
        assert!(matches!(&acts[..], [Action::Event(e)] if e.contains("3 instance(s) replaced")));
    }

    #[test]
    fn start_first_waits_for_the_replacement_and_the_old_copy_to_go() {
        let p = policy(1, UpdateOrder::StartFirst);
        let mut r = Rollout::new(2, Some(1), 1, 0);
        let old = [copy("a1", 1, true, Health::Ready)];
        assert_eq!(step(&mut r, &old, &p, 1, 0), [Action::Replace("a1".into())]);
        // Placed: the old copy names its replacement; both run until the old one goes.
        let mut marked = copy("a1", 1, true, Health::Ready);
        marked.replaced_by = Some("b2");
        let both = [marked, copy("b2", 2, false, Health::Ready)];
        assert!(step(&mut r, &both, &p, 1, 10).is_empty());
        assert_eq!(r.batch[0].new.as_deref(), Some("b2"));
        assert!(
            step(&mut r, &both, &p, 1, 500).is_empty(),
            "not done while the old copy runs"
        );
        let after = [copy("b2", 2, false, Health::Ready)];
        step(&mut r, &after, &p, 1, 510);
        assert_eq!(r.replaced, 1);
        step(&mut r, &after, &p, 1, 520);
        assert_eq!(
            r.state,
            RolloutState::Running,
            "watched for its monitor window"
        );
        step(&mut r, &after, &p, 1, 610);
        assert_eq!(r.state, RolloutState::Done);
    }

    #[test]
    fn a_failure_pauses_by_default_and_nothing_more_is_replaced() {
        let p = policy(1, UpdateOrder::StopFirst);
        let mut r = Rollout::new(2, Some(1), 2, 0);
        let copies = [
            copy("a1", 1, true, Health::Ready),
            copy("a2", 2, true, Health::Ready),
        ];
        step(&mut r, &copies, &p, 2, 0);
        let crashed = [
            copy("a1", 1, false, Health::Ready),
            copy("a2", 2, true, Health::Ready),
        ];
        assert_eq!(
            step(&mut r, &crashed, &p, 2, 10),
            [Action::Restamp("a2".into())],
            "the monitor window does not hold the next batch back"
        );
        let crashed = [
            copy("a1", 1, false, Health::Failed),
            copy("a2", 2, true, Health::Ready),
        ];
        let acts = step(&mut r, &crashed, &p, 2, 50);
        assert_eq!(r.state, RolloutState::Paused);
        assert!(
            r.reason
                .as_deref()
                .unwrap()
                .contains("1 of 2 instances failed")
        );
        assert!(
            matches!(&acts[..], [Action::Event(e), ..] if e.contains("within its monitor window"))
        );
        assert!(step(&mut r, &crashed, &p, 2, 1_000).is_empty(), "paused");
    }

    #[test]
    fn a_failure_beyond_the_ratio_rolls_back_when_asked_and_abandons_the_replacement() {
        let p = UpdatePolicy {
            failure_action: FailureAction::Rollback,
            ..policy(1, UpdateOrder::StartFirst)
        };
        let mut r = Rollout::new(3, Some(2), 1, 0);
        step(&mut r, &[copy("a1", 1, true, Health::Ready)], &p, 1, 0);
        let mut marked = copy("a1", 1, true, Health::Ready);
        marked.replaced_by = Some("b2");
        step(
            &mut r,
            &[marked, copy("b2", 2, false, Health::Pending)],
            &p,
            1,
            5,
        );
        let acts = step(
            &mut r,
            &[marked, copy("b2", 2, false, Health::Failed)],
            &p,
            1,
            9,
        );
        assert!(acts.contains(&Action::Abandon("b2".into())));
        assert_eq!(acts.last(), Some(&Action::Rollback));
        assert_eq!(r.state, RolloutState::Failed);
    }

    #[test]
    fn a_tolerated_failure_continues_and_the_delay_spaces_batches() {
        let p = UpdatePolicy {
            max_failure_ratio: 0.5,
            delay: Duration::from_millis(1_000),
            ..policy(1, UpdateOrder::StopFirst)
        };
        let mut r = Rollout::new(2, Some(1), 2, 0);
        let two = [
            copy("a1", 1, true, Health::Ready),
            copy("a2", 2, true, Health::Ready),
        ];
        step(&mut r, &two, &p, 2, 0);
        step(
            &mut r,
            &[copy("a1", 1, false, Health::Ready), two[1]],
            &p,
            2,
            1,
        );
        let failed = [copy("a1", 1, false, Health::Failed), two[1]];
        step(&mut r, &failed, &p, 2, 2);
        assert_eq!((r.state, r.failed), (RolloutState::Running, 1));
        assert!(
            step(&mut r, &failed, &p, 2, 500).is_empty(),
            "the delay holds"
        );
        assert_eq!(r.wake_at(&p), Some(1_001));
        assert_eq!(
            step(&mut r, &failed, &p, 2, 1_002),
            [Action::Restamp("a2".into())]
        );
    }

    #[test]
    fn a_rollout_survives_a_round_trip_through_the_store() {
        let mut r = Rollout::new(4, Some(3), 2, 7);
        r.batch.push(Item {
            old: "a1".into(),
            new: Some("b3".into()),
        });
        r.watching.push(("b2".into(), 9));
        let json = serde_json::to_vec(&r).unwrap();
        assert_eq!(serde_json::from_slice::<Rollout>(&json).unwrap(), r);
    }
}
