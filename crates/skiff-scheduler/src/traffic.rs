//! Canary and blue-green releases, decided: how many instances of the new release run beside
//! the old ones, what share of requests they get, when a step is passed, and when the old set
//! goes. Pure, like [`crate::rollout`]: the control plane keeps the [`Rollout`] (with its
//! [`Traffic`]) in its store, calls [`step`] on every pass with the service's copies and the
//! ingress's figures of the new release, places `extra` instances beside the replicas, splits
//! the traffic by [`Traffic::weight`] and carries out the [`Action`]s.
//!
//! **Canary**: each step (`weight`, `pause`) first runs `ceil(replicas × weight %)` new
//! instances (at least one) beside all the old ones; once they are ready the step's weight
//! applies, and the step holds for its `pause` (none: until `skiff rollout promote`) — with an
//! `analysis`, until a judgement passes after the pause, or it fails and aborts. After the last
//! step the new release runs at full size, gets every request, and the old instances go.
//!
//! **Blue-green**: the new release starts at full size beside the old one with no traffic;
//! once all of it is ready, traffic switches at once (`switch: auto`) or on `promote`. The old
//! set stays warm for `keep_previous` (a rollback in that time switches straight back to it),
//! then goes. An analysis after the switch that fails switches back.
//!
//! **Abort** (asked for, a failed judgement, or a new instance that failed when
//! `failure_action` is `rollback`): the weight returns to 0 — the stable release takes every
//! request — in the same pass that stops the new instances, and the release is rolled back.
//!
//! **Invariants:** the weight is never above 0 before the new instances of the step are ready;
//! old instances go only after the new release has every request; an abort never stops an
//! old instance.

use serde::{Deserialize, Serialize};
use skiff_model::{FailureAction, NoTraffic, ReleasePolicy, ReleaseStrategy};

use crate::rollout::{Action, Copy, Health, Rollout, RolloutState};

/// The traffic half of a canary or blue-green rollout, kept in its [`Rollout`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// Canary: the step being taken (`steps.len()` and beyond: the full release). Blue-green:
    /// 0 before the switch, 1 after.
    pub step: u32,
    /// Percent of requests to the new release now.
    pub weight: u32,
    /// When the step's weight applied (0: not yet; its instances are starting).
    #[serde(default)]
    pub since_ms: u64,
    /// When the figures are judged next.
    #[serde(default)]
    pub next_check_ms: u64,
    /// `skiff rollout promote`: pass the current step now (blue-green: switch, or after the
    /// switch stop the old set now).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promote: bool,
    /// `skiff rollout abort`: traffic back to the stable release, new instances stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abort: bool,
    /// The last judgement, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
}

/// The ingress's figures of the new release over the current step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Judged {
    pub requests: u64,
    pub errors: u64,
    pub p99_ms: Option<u64>,
}

/// What the control plane does with the service this pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Instances of the new release to run beside the replicas (the old ones count as those).
    pub extra: u32,
    /// Abandons (new instances of an abort, old ones once the release has every request),
    /// events and a rollback.
    pub actions: Vec<Action>,
}

/// Whether this policy moves traffic by weight (else rolling replaces instances).
pub fn manages_traffic(policy: &ReleasePolicy) -> bool {
    policy.strategy != ReleaseStrategy::Rolling
}

/// A canary's steps as (weight, pause ms), ending at 100 %.
fn steps(policy: &ReleasePolicy) -> Vec<(u32, Option<u64>)> {
    let mut s: Vec<(u32, Option<u64>)> = policy
        .steps
        .iter()
        .map(|s| (s.weight.min(100), s.pause.map(|p| p.as_millis() as u64)))
        .collect();
    if s.last().is_none_or(|l| l.0 < 100) {
        s.push((100, Some(0)));
    }
    s
}

/// How many steps a release under `policy` takes, as `rollout status` counts them: a
/// canary's steps and its full release; blue-green's switch and its warm period.
pub fn step_count(policy: &ReleasePolicy) -> u32 {
    match policy.strategy {
        ReleaseStrategy::BlueGreen => 2,
        _ => steps(policy).len() as u32,
    }
}

/// New instances a canary step at `weight` runs: its share of the replicas, at least one.
fn canary_size(weight: u32, replicas: u32) -> u32 {
    (replicas * weight).div_ceil(100).clamp(1, replicas.max(1))
}

/// Advances the traffic rollout `r` of a service over its `copies` by `policy`;
/// `failure_action` is the update policy's, `judged` the new release's figures over the
/// current step (`None` when nobody counts them).
pub fn step(
    r: &mut Rollout,
    copies: &[Copy<'_>],
    policy: &ReleasePolicy,
    failure_action: FailureAction,
    replicas: u32,
    judged: Option<Judged>,
    now_ms: u64,
) -> Step {
    let mut out = Step::default();
    let mut t = r.traffic.take().unwrap_or_default();
    let blue_green = policy.strategy == ReleaseStrategy::BlueGreen;
    let steps = steps(policy);
    let full = steps.len() as u32 - 1;
    // (instances of the new release wanted, the weight they get once ready)
    let target = |step: u32| -> (u32, u32) {
        if blue_green {
            (replicas, if step == 0 { 0 } else { 100 })
        } else {
            let (w, _) = steps[step.min(full) as usize];
            if step >= full {
                (replicas, 100)
            } else {
                (canary_size(w, replicas), w)
            }
        }
    };
    let new: Vec<&Copy<'_>> = copies.iter().filter(|c| !c.outdated).collect();
    let old: Vec<&Copy<'_>> = copies.iter().filter(|c| c.outdated).collect();
    let ready = new.iter().filter(|c| c.health == Health::Ready).count() as u32;
    let failed = new.iter().filter(|c| c.health == Health::Failed).count() as u32;
    // Progress as `rollout status` shows it: new instances ready, of the replicas.
    r.replaced = ready.min(replicas);

    match r.state {
        RolloutState::Done | RolloutState::Failed => {
            r.traffic = Some(t);
            return out;
        }
        RolloutState::Paused => {
            out.extra = target(t.step).0;
            if t.abort {
                abort(r, &mut t, &new, "aborted", &mut out);
            }
            r.traffic = Some(t);
            return out;
        }
        RolloutState::Running => {}
    }
    if t.abort {
        abort(r, &mut t, &new, "aborted", &mut out);
        r.traffic = Some(t);
        return out;
    }
    if failed > 0 {
        let why = format!("{failed} instance(s) of release {} failed", r.release);
        match failure_action {
            FailureAction::Pause => {
                hold(r, &mut out, why);
                out.extra = target(t.step).0;
                r.traffic = Some(t);
                return out;
            }
            FailureAction::Rollback => {
                abort(r, &mut t, &new, &why, &mut out);
                r.traffic = Some(t);
                return out;
            }
            FailureAction::Continue => {}
        }
    }

    let analysis = policy.analysis.as_ref();
    // At most one step passed per pass, and the next one's weight applies only once its
    // instances are ready.
    for _ in 0..2 {
        let (want, weight) = target(t.step);
        out.extra = want;
        if t.since_ms == 0 {
            if ready < want {
                // Starting the step's instances; the weight stays where it was.
                break;
            }
            if blue_green && t.step == 0 {
                // Full size, ready, no traffic yet: switch now or on promote.
                if policy.switch == skiff_model::Switch::Manual && !t.promote {
                    r.reason = Some(format!(
                        "release {} is ready beside the old one; `skiff rollout promote` switches",
                        r.release
                    ));
                    break;
                }
                t.promote = false;
                r.reason = None;
                t.step = 1;
                continue;
            }
            t.weight = weight;
            t.since_ms = now_ms.max(1);
            t.next_check_ms = now_ms + analysis.map_or(0, |a| a.interval.as_millis() as u64);
            t.verdict = None;
            out.actions.push(Action::Event(if blue_green {
                format!(
                    "release {}: switched, every request goes to its {want} instance(s); the old set stays warm for {}s",
                    r.release,
                    policy.keep_previous.as_secs()
                )
            } else {
                format!(
                    "release {}: step {} of {}: {weight}% of requests to {want} new instance(s)",
                    r.release,
                    t.step + 1,
                    full + 1
                )
            }));
            r.reason = None;
        }
        // The step holds. Last: the old set goes (blue-green: after keep_previous).
        let last = if blue_green {
            t.step >= 1
        } else {
            t.step >= full
        };
        if last {
            let keep = if blue_green {
                policy.keep_previous.as_millis() as u64
            } else {
                steps[full as usize].1.unwrap_or(0)
            };
            if let Some(a) = analysis
                && blue_green
                && let Some(verdict) = judge(&mut t, a, judged, now_ms)
                && let Err(why) = verdict
            {
                abort(r, &mut t, &new, &why, &mut out);
                break;
            }
            if now_ms >= t.since_ms + keep || t.promote {
                t.promote = false;
                for c in &old {
                    out.actions.push(Action::Abandon(c.alloc.to_string()));
                }
                r.state = RolloutState::Done;
                out.extra = 0;
                out.actions.push(Action::Event(format!(
                    "release {}: done, {} old instance(s) stopped",
                    r.release,
                    old.len()
                )));
            }
            break;
        }
        let pause = steps[t.step as usize].1;
        let paused_enough = pause.is_some_and(|p| now_ms >= t.since_ms + p);
        let passed = if t.promote {
            t.promote = false;
            Some("promoted".to_string())
        } else if let Some(a) = analysis {
            match judge(&mut t, a, judged, now_ms) {
                Some(Err(why)) => {
                    abort(r, &mut t, &new, &why, &mut out);
                    break;
                }
                Some(Ok(why)) if paused_enough || pause.is_none() => Some(why),
                Some(Ok(_)) => None,
                None if now_ms >= t.since_ms + a.max_wait.as_millis() as u64 => {
                    let n = judged.map_or(0, |j| j.requests);
                    let why = format!(
                        "{n} request(s) in {}s, fewer than min_requests {}",
                        a.max_wait.as_secs(),
                        a.min_requests
                    );
                    match a.on_no_traffic {
                        NoTraffic::Pause => {
                            hold(r, &mut out, format!("{why} (on_no_traffic: pause)"));
                            break;
                        }
                        NoTraffic::Abort => {
                            abort(
                                r,
                                &mut t,
                                &new,
                                &format!("{why} (on_no_traffic: abort)"),
                                &mut out,
                            );
                            break;
                        }
                        NoTraffic::Promote => Some(format!("{why} (on_no_traffic: promote)")),
                    }
                }
                None => None,
            }
        } else if paused_enough {
            Some(format!("held {}s", pause.unwrap_or(0) / 1000))
        } else {
            if pause.is_none() {
                r.reason = Some("waiting for `skiff rollout promote`".into());
            }
            None
        };
        let Some(why) = passed else { break };
        out.actions.push(Action::Event(format!(
            "release {}: step {} passed ({why})",
            r.release,
            t.step + 1
        )));
        r.reason = None;
        t.step += 1;
        t.since_ms = 0;
    }
    r.traffic = Some(t);
    out
}

/// Judges the figures when a judgement is due: `Some(Ok)` passed, `Some(Err)` failed, `None`
/// not due or too few requests to judge.
fn judge(
    t: &mut Traffic,
    a: &skiff_model::Analysis,
    judged: Option<Judged>,
    now_ms: u64,
) -> Option<Result<String, String>> {
    if now_ms < t.next_check_ms {
        return None;
    }
    t.next_check_ms = now_ms + a.interval.as_millis().max(1) as u64;
    let j = judged.unwrap_or_default();
    let rate = if j.requests == 0 {
        0.0
    } else {
        j.errors as f64 / j.requests as f64
    };
    let figures = format!(
        "{} requests, {:.2}% errors, p99 {}",
        j.requests,
        rate * 100.0,
        j.p99_ms.map_or("-".into(), |p| format!("≤{p}ms"))
    );
    if j.requests < a.min_requests.max(1) {
        t.verdict = Some(format!("{figures}: too few to judge"));
        return None;
    }
    let verdict = if let Some(max) = a.max_error_rate
        && rate > max
    {
        Err(format!("{figures}: error rate over {:.2}%", max * 100.0))
    } else if let (Some(max), Some(p99)) = (a.max_p99, j.p99_ms)
        && p99 > max.as_millis() as u64
    {
        Err(format!("{figures}: p99 over {}ms", max.as_millis()))
    } else {
        Ok(format!("{figures}: within limits"))
    };
    t.verdict = Some(match &verdict {
        Ok(v) | Err(v) => v.clone(),
    });
    Some(verdict)
}

fn hold(r: &mut Rollout, out: &mut Step, why: String) {
    r.state = RolloutState::Paused;
    out.actions.push(Action::Event(format!(
        "release {} paused: {why}; `skiff rollout resume`, `promote` or `abort`",
        r.release
    )));
    r.reason = Some(why);
}

/// Every request back to the stable release and the new instances stopped, in one pass;
/// then the rollback to the release before.
fn abort(r: &mut Rollout, t: &mut Traffic, new: &[&Copy<'_>], why: &str, out: &mut Step) {
    t.weight = 0;
    t.abort = false;
    t.promote = false;
    for c in new {
        out.actions.push(Action::Abandon(c.alloc.to_string()));
    }
    out.extra = 0;
    r.state = RolloutState::Failed;
    r.reason = Some(why.to_string());
    out.actions.push(Action::Event(format!(
        "release {} aborted: {why}; every request goes to release {} again",
        r.release,
        r.from.map_or("before".into(), |f| f.to_string())
    )));
    if r.from.is_some() {
        out.actions.push(Action::Rollback);
    }
}

/// When a later pass has something to do even if nothing is reported: the end of a pause, a
/// judgement, `max_wait`, or `keep_previous`.
pub fn wake_at(r: &Rollout, policy: &ReleasePolicy) -> Option<u64> {
    let t = r.traffic.as_ref()?;
    if r.state != RolloutState::Running || t.since_ms == 0 {
        return None;
    }
    let steps = steps(policy);
    let mut at: Vec<u64> = Vec::new();
    if policy.strategy == ReleaseStrategy::BlueGreen {
        at.push(t.since_ms + policy.keep_previous.as_millis() as u64);
    } else if let Some((_, Some(p))) = steps.get(t.step as usize) {
        at.push(t.since_ms + p);
    }
    if let Some(a) = &policy.analysis {
        at.push(t.next_check_ms);
        at.push(t.since_ms + a.max_wait.as_millis() as u64);
    }
    at.into_iter().min()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use skiff_model::{Analysis, CanaryStep, Switch};

    use super::*;

    struct Copies {
        ids: Vec<String>,
        /// (outdated, health) per copy, by position in `ids`.
        state: Vec<(bool, Health)>,
    }

    impl Copies {
        /// `old` ready copies of the old release.
        fn new(old: u32) -> Copies {
            Copies {
                ids: (1..=old).map(|i| format!("old-{i}")).collect(),
                state: vec![(true, Health::Ready); old as usize],
            }
        }
        /// Brings the new release's copies to `n`, each in `health`.
        fn new_release(&mut self, n: usize, health: Health) {
            let have = self.state.iter().filter(|s| !s.0).count();
            for i in have..n {
                self.ids.push(format!("new-{i}"));
                self.state.push((false, health));
            }
            for s in self.state.iter_mut().filter(|s| !s.0) {
                s.1 = health;
            }
        }
        fn view(&self) -> Vec<Copy<'_>> {
            self.ids
                .iter()
                .zip(&self.state)
                .enumerate()
                .map(|(i, (id, (outdated, health)))| Copy {
                    alloc: id,
                    index: i as u32 + 1,
                    outdated: *outdated,
                    replaced_by: None,
                    health: *health,
                })
                .collect()
        }
        fn abandon(&mut self, actions: &[Action]) {
            for a in actions {
                if let Action::Abandon(id) = a
                    && let Some(i) = self.ids.iter().position(|x| x == id)
                {
                    self.ids.remove(i);
                    self.state.remove(i);
                }
            }
        }
    }

    fn canary(steps: &[(u32, Option<u64>)]) -> ReleasePolicy {
        ReleasePolicy {
            strategy: ReleaseStrategy::Canary,
            steps: steps
                .iter()
                .map(|(w, p)| CanaryStep {
                    weight: *w,
                    pause: p.map(Duration::from_millis),
                })
                .collect(),
            ..ReleasePolicy::default()
        }
    }

    fn abandoned(s: &Step) -> Vec<&str> {
        s.actions
            .iter()
            .filter_map(|a| match a {
                Action::Abandon(id) => Some(id.as_str()),
                _ => None,
            })
            .collect()
    }

    fn run(
        r: &mut Rollout,
        c: &Copies,
        p: &ReleasePolicy,
        judged: Option<Judged>,
        now: u64,
    ) -> Step {
        // Times are milliseconds since the epoch, never 0 (0 means "not yet").
        step(
            r,
            &c.view(),
            p,
            FailureAction::Rollback,
            10,
            judged,
            1_000_000 + now,
        )
    }

    #[test]
    fn a_canary_weighs_each_step_only_once_its_instances_are_ready_and_stops_old_ones_at_full() {
        let p = canary(&[(10, Some(1_000)), (50, Some(1_000))]);
        let mut r = Rollout::new(2, Some(1), 10, 0);
        let mut c = Copies::new(10);
        let s = run(&mut r, &c, &p, None, 0);
        assert_eq!((s.extra, r.traffic.as_ref().unwrap().weight), (1, 0));
        c.new_release(1, Health::Pending);
        run(&mut r, &c, &p, None, 10);
        assert_eq!(
            r.traffic.as_ref().unwrap().weight,
            0,
            "not before it is ready"
        );
        c.new_release(1, Health::Ready);
        let s = run(&mut r, &c, &p, None, 20);
        assert_eq!((s.extra, r.traffic.as_ref().unwrap().weight), (1, 10));
        assert!(abandoned(&s).is_empty());
        // Held for its pause, then the next step asks for 5 instances; 10 % until they are ready.
        let s = run(&mut r, &c, &p, None, 500);
        assert_eq!(s.extra, 1);
        let s = run(&mut r, &c, &p, None, 1_020);
        assert_eq!((s.extra, r.traffic.as_ref().unwrap().weight), (5, 10));
        c.new_release(5, Health::Ready);
        let s = run(&mut r, &c, &p, None, 1_030);
        assert_eq!((s.extra, r.traffic.as_ref().unwrap().weight), (5, 50));
        let s = run(&mut r, &c, &p, None, 2_030);
        assert_eq!((s.extra, r.traffic.as_ref().unwrap().weight), (10, 50));
        c.new_release(10, Health::Ready);
        let s = run(&mut r, &c, &p, None, 2_040);
        assert_eq!(r.traffic.as_ref().unwrap().weight, 100);
        assert_eq!(
            abandoned(&s).len(),
            10,
            "the old ones go once the new has all traffic"
        );
        assert!(abandoned(&s).iter().all(|id| id.starts_with("old-")));
        assert_eq!((r.state, s.extra), (RolloutState::Done, 0));
    }

    #[test]
    fn a_step_without_a_pause_waits_for_promote() {
        let p = canary(&[(20, None)]);
        let mut r = Rollout::new(2, Some(1), 10, 0);
        let mut c = Copies::new(10);
        c.new_release(2, Health::Ready);
        run(&mut r, &c, &p, None, 0);
        run(&mut r, &c, &p, None, 3_600_000);
        assert_eq!(r.traffic.as_ref().unwrap().weight, 20);
        assert!(r.reason.as_deref().unwrap().contains("promote"));
        r.traffic.as_mut().unwrap().promote = true;
        let s = run(&mut r, &c, &p, None, 3_600_001);
        assert_eq!(s.extra, 10, "promoted: the full release starts");
    }

    #[test]
    fn a_failed_judgement_aborts_weight_first_and_stops_only_new_instances() {
        let mut p = canary(&[(10, Some(60_000))]);
        p.analysis = Some(Analysis {
            max_error_rate: Some(0.01),
            min_requests: 100,
            interval: Duration::from_secs(1),
            ..Analysis::default()
        });
        let mut r = Rollout::new(2, Some(1), 10, 0);
        let mut c = Copies::new(10);
        c.new_release(1, Health::Ready);
        run(&mut r, &c, &p, None, 0);
        let bad = Judged {
            requests: 50,
            errors: 50,
            p99_ms: Some(5),
        };
        let s = run(&mut r, &c, &p, Some(bad), 1_000);
        assert_eq!(
            r.state,
            RolloutState::Running,
            "50 requests: too few to judge"
        );
        assert!(abandoned(&s).is_empty());
        let bad = Judged {
            requests: 200,
            ..bad
        };
        let s = run(&mut r, &c, &p, Some(bad), 2_000);
        assert_eq!(r.state, RolloutState::Failed);
        assert_eq!(r.traffic.as_ref().unwrap().weight, 0);
        assert_eq!(abandoned(&s), ["new-0"]);
        assert!(s.actions.contains(&Action::Rollback));
        assert!(
            r.reason.as_deref().unwrap().contains("error rate"),
            "{:?}",
            r.reason
        );
    }

    #[test]
    fn passing_judgements_promote_after_the_pause_and_slow_ones_abort() {
        let mut p = canary(&[(10, Some(2_000))]);
        p.analysis = Some(Analysis {
            max_p99: Some(Duration::from_millis(300)),
            min_requests: 10,
            interval: Duration::from_secs(1),
            ..Analysis::default()
        });
        let good = Judged {
            requests: 100,
            errors: 0,
            p99_ms: Some(20),
        };
        let mut r = Rollout::new(2, Some(1), 10, 0);
        let mut c = Copies::new(10);
        c.new_release(1, Health::Ready);
        run(&mut r, &c, &p, Some(good), 0);
        let s = run(&mut r, &c, &p, Some(good), 1_000);
        assert_eq!(s.extra, 1, "passed, but its pause is not over");
        let s = run(&mut r, &c, &p, Some(good), 2_000);
        assert_eq!(s.extra, 10, "passed after the pause: the full release");
        let mut r = Rollout::new(2, Some(1), 10, 0);
        run(&mut r, &c, &p, None, 0);
        let slow = Judged {
            p99_ms: Some(500),
            ..good
        };
        run(&mut r, &c, &p, Some(slow), 1_000);
        assert_eq!(r.state, RolloutState::Failed);
        assert!(r.reason.as_deref().unwrap().contains("p99"));
    }

    #[test]
    fn a_canary_without_traffic_does_what_on_no_traffic_says_after_max_wait() {
        for (action, state, extra) in [
            (NoTraffic::Pause, RolloutState::Paused, 1),
            (NoTraffic::Promote, RolloutState::Running, 10),
            (NoTraffic::Abort, RolloutState::Failed, 0),
        ] {
            let mut p = canary(&[(10, None)]);
            p.analysis = Some(Analysis {
                min_requests: 100,
                interval: Duration::from_secs(1),
                max_wait: Duration::from_secs(5),
                on_no_traffic: action,
                ..Analysis::default()
            });
            let mut r = Rollout::new(2, Some(1), 10, 0);
            let mut c = Copies::new(10);
            c.new_release(1, Health::Ready);
            run(&mut r, &c, &p, None, 0);
            for now in [1_000, 2_000, 3_000, 4_000] {
                run(&mut r, &c, &p, Some(Judged::default()), now);
                assert_eq!(r.state, RolloutState::Running, "{action:?} at {now}");
            }
            let s = run(&mut r, &c, &p, Some(Judged::default()), 5_000);
            assert_eq!((r.state, s.extra), (state, extra), "{action:?}");
            assert!(
                s.actions
                    .iter()
                    .any(|a| matches!(a, Action::Event(e) if e.contains("on_no_traffic"))),
                "{action:?} says so: {:?}",
                s.actions
            );
        }
    }

    #[test]
    fn blue_green_switches_all_at_once_when_the_new_set_is_ready_and_keeps_the_old_one_warm() {
        let p = ReleasePolicy {
            strategy: ReleaseStrategy::BlueGreen,
            keep_previous: Duration::from_secs(30),
            ..ReleasePolicy::default()
        };
        let mut r = Rollout::new(2, Some(1), 10, 0);
        let mut c = Copies::new(10);
        let s = run(&mut r, &c, &p, None, 0);
        assert_eq!(s.extra, 10, "the whole new set beside the old");
        c.new_release(10, Health::Pending);
        c.state[10].1 = Health::Ready;
        run(&mut r, &c, &p, None, 10);
        assert_eq!(
            r.traffic.as_ref().unwrap().weight,
            0,
            "not all ready: no traffic"
        );
        c.new_release(10, Health::Ready);
        let s = run(&mut r, &c, &p, None, 20);
        assert_eq!(r.traffic.as_ref().unwrap().weight, 100);
        assert!(abandoned(&s).is_empty(), "the old set stays warm");
        let s = run(&mut r, &c, &p, None, 29_999);
        assert!(abandoned(&s).is_empty());
        let s = run(&mut r, &c, &p, None, 30_020);
        assert_eq!(abandoned(&s).len(), 10);
        assert_eq!(r.state, RolloutState::Done);
        c.abandon(&s.actions);
        assert!(c.state.iter().all(|s| !s.0));
    }

    #[test]
    fn a_manual_blue_green_switch_waits_for_promote_and_an_abort_stops_only_the_new_set() {
        let p = ReleasePolicy {
            strategy: ReleaseStrategy::BlueGreen,
            switch: Switch::Manual,
            ..ReleasePolicy::default()
        };
        let mut r = Rollout::new(2, Some(1), 10, 0);
        let mut c = Copies::new(10);
        c.new_release(10, Health::Ready);
        run(&mut r, &c, &p, None, 0);
        run(&mut r, &c, &p, None, 60_000);
        assert_eq!(r.traffic.as_ref().unwrap().weight, 0);
        assert!(r.reason.as_deref().unwrap().contains("promote"));
        r.traffic.as_mut().unwrap().abort = true;
        let s = run(&mut r, &c, &p, None, 60_001);
        assert_eq!(abandoned(&s).len(), 10);
        assert!(abandoned(&s).iter().all(|id| id.starts_with("new-")));
        assert_eq!(r.state, RolloutState::Failed);
    }

    #[test]
    fn a_blue_green_release_that_fails_its_analysis_after_the_switch_switches_back() {
        let p = ReleasePolicy {
            strategy: ReleaseStrategy::BlueGreen,
            keep_previous: Duration::from_secs(60),
            analysis: Some(Analysis {
                max_error_rate: Some(0.01),
                min_requests: 10,
                interval: Duration::from_secs(1),
                ..Analysis::default()
            }),
            ..ReleasePolicy::default()
        };
        let mut r = Rollout::new(2, Some(1), 10, 0);
        let mut c = Copies::new(10);
        c.new_release(10, Health::Ready);
        run(&mut r, &c, &p, None, 0);
        assert_eq!((r.traffic.as_ref().unwrap().weight, r.replaced), (100, 10));
        let bad = Judged {
            requests: 100,
            errors: 10,
            p99_ms: Some(3),
        };
        let s = run(&mut r, &c, &p, Some(bad), 1_000);
        assert_eq!(r.traffic.as_ref().unwrap().weight, 0, "switched back");
        assert_eq!(abandoned(&s).len(), 10);
        assert!(
            abandoned(&s).iter().all(|id| id.starts_with("new-")),
            "the warm set stays"
        );
        assert!(s.actions.contains(&Action::Rollback));
    }

    #[test]
    fn canary_sizes_are_a_share_of_the_replicas_and_never_zero() {
        assert_eq!(canary_size(10, 10), 1);
        assert_eq!(canary_size(10, 3), 1);
        assert_eq!(canary_size(50, 3), 2);
        assert_eq!(canary_size(1, 100), 1);
        assert_eq!(canary_size(100, 7), 7);
    }
}
