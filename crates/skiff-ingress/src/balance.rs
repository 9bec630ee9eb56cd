//! Choosing a backend: a pool by weight, then the power of two choices on requests in flight
//! among the backends that are neither ejected nor already tried for this request.
//!
//! Passive ejection: a backend whose requests failed to connect or broke before a response
//! `EJECT_AFTER` times in a row is left out for `EJECT_FOR` (unless nothing else is left).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::routes::{Backend, Target};

pub const EJECT_AFTER: u32 = 3;
pub const EJECT_FOR: Duration = Duration::from_secs(10);

/// Passive health of one backend, kept across route table rebuilds.
#[derive(Debug, Default)]
pub struct Health {
    failures: AtomicU32,
    /// Milliseconds since [`epoch`] until which the backend is ejected.
    ejected_until: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Health {
    pub fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failure; `true` when it ejected the backend.
    pub fn failure(&self) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= EJECT_AFTER {
            self.failures.store(0, Ordering::Relaxed);
            self.ejected_until
                .store(now_ms() + EJECT_FOR.as_millis() as u64, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }
}

/// A backend for the next attempt of a request, skipping those in `tried`
/// (`(pool, backend)` positions). Ejected backends only when no other is left. Allocates
/// nothing: it runs for every request.
pub fn pick(
    target: &Target,
    tried: &[(usize, usize)],
    rng: &mut fastrand::Rng,
) -> Option<(usize, usize)> {
    let pools = &target.pools;
    // Weighted pools first; a pool of weight 0 (a release that gets no traffic yet or any
    // more) only when no weighted one has a backend left, rather than failing the request.
    for (allow_ejected, unweighted) in [(false, false), (false, true), (true, false), (true, true)]
    {
        let weight = |p: usize| if unweighted { 1 } else { pools[p].weight };
        let usable = |p: usize, i: usize, b: &Backend| {
            !tried.contains(&(p, i))
                && !b.traffic.is_withdrawn()
                && (allow_ejected || !b.health.is_ejected())
        };
        let count = |p: usize| {
            pools[p]
                .backends
                .iter()
                .enumerate()
                .filter(|(i, b)| usable(p, *i, b))
                .count()
        };
        // A pool by weight among those with a usable backend.
        let (p, n) = if pools.len() == 1 {
            (0, count(0))
        } else {
            let total: u64 = (0..pools.len())
                .filter(|&p| count(p) > 0)
                .map(|p| u64::from(weight(p)))
                .sum();
            if total == 0 {
                continue;
            }
            let mut ticket = rng.u64(..total);
            let mut chosen = None;
            for p in 0..pools.len() {
                let w = u64::from(weight(p));
                if w == 0 {
                    continue;
                }
                let c = count(p);
                if c == 0 {
                    continue;
                }
                if ticket < w {
                    chosen = Some((p, c));
                    break;
                }
                ticket -= w;
            }
            match chosen {
                Some(x) => x,
                None => continue,
            }
        };
        if n == 0 {
            continue;
        }
        let backends = &pools[p].backends;
        // The usable backend of rank `r`.
        let nth = |r: usize| {
            backends
                .iter()
                .enumerate()
                .filter(|(i, b)| usable(p, *i, b))
                .nth(r)
                .map(|(i, _)| i)
                .expect("rank below the usable count")
        };
        // Two random usable backends; the one with fewer requests in flight.
        let chosen = if n == 1 {
            nth(0)
        } else {
            let ra = rng.usize(..n);
            let mut rb = rng.usize(..n - 1);
            if rb >= ra {
                rb += 1;
            }
            let (a, b) = (nth(ra), nth(rb));
            if backends[b].traffic.in_flight() < backends[a].traffic.in_flight() {
                b
            } else {
                a
            }
        };
        return Some((p, chosen));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use skiff_catalog::{ServiceKey, Traffic};
    use skiff_model::StackKey;

    use super::*;
    use crate::routes::Pool;

    fn backend(port: u16) -> Backend {
        Backend {
            index: u32::from(port),
            addr: ([127, 0, 0, 1], port).into(),
            traffic: Arc::new(Traffic::default()),
            health: Arc::default(),
        }
    }

    fn target(pools: Vec<(u32, Vec<u16>)>) -> Target {
        Target {
            service: ServiceKey::new(&StackKey::new("default", "shop").unwrap(), "web"),
            port: "http".into(),
            pools: pools
                .into_iter()
                .map(|(weight, ports)| Pool {
                    weight,
                    backends: ports.into_iter().map(backend).collect(),
                    stats: None,
                })
                .collect(),
            seen: Arc::default(),
        }
    }

    fn port(t: &Target, (p, b): (usize, usize)) -> u16 {
        t.pools[p].backends[b].addr.port()
    }

    #[test]
    fn two_choices_prefer_the_backend_with_fewer_requests_in_flight() {
        let t = target(vec![(1, vec![1, 2])]);
        for _ in 0..5 {
            assert!(t.pools[0].backends[0].traffic.begin());
        }
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..50 {
            assert_eq!(port(&t, pick(&t, &[], &mut rng).unwrap()), 2);
        }
    }

    #[test]
    fn tried_withdrawn_and_ejected_backends_are_skipped_ejected_only_as_a_last_resort() {
        let t = target(vec![(1, vec![1, 2, 3])]);
        let mut rng = fastrand::Rng::with_seed(2);
        for _ in 0..EJECT_AFTER {
            t.pools[0].backends[0].health.failure();
        }
        assert!(t.pools[0].backends[0].health.is_ejected());
        for _ in 0..50 {
            let got = port(&t, pick(&t, &[(0, 1)], &mut rng).unwrap());
            assert_eq!(got, 3);
        }
        // Nothing else left: the ejected one still serves rather than a 503.
        assert_eq!(port(&t, pick(&t, &[(0, 1), (0, 2)], &mut rng).unwrap()), 1);
        assert!(pick(&t, &[(0, 0), (0, 1), (0, 2)], &mut rng).is_none());
        t.pools[0].backends[0].health.success();
    }

    #[test]
    fn pools_get_traffic_in_proportion_to_their_weights() {
        let t = target(vec![(9, vec![1, 2]), (1, vec![3])]);
        let mut rng = fastrand::Rng::with_seed(3);
        let canary = (0..10_000)
            .filter(|_| port(&t, pick(&t, &[], &mut rng).unwrap()) == 3)
            .count();
        assert!(
            (800..1200).contains(&canary),
            "{canary} of 10000 for weight 1 of 10"
        );
        // A pool without usable backends gives its share to the others.
        let t = target(vec![(9, vec![]), (1, vec![3])]);
        assert_eq!(port(&t, pick(&t, &[], &mut rng).unwrap()), 3);
    }
}
