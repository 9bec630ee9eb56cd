//! Deploy order: services grouped into batches by `depends_on`.
//!
//! Batch 1 holds the services that depend on nothing; batch N+1 those whose dependencies are
//! all in batches 1..=N. Services within a batch can start in parallel. A cycle is returned as
//! its path, starting and ending at the alphabetically first service on it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::model::{Condition, DeployMode, Driver, Project};

/// The deploy order of a project: what `skiff plan` prints and `skiff up` follows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeployPlan {
    pub stack: String,
    pub env: String,
    pub batches: Vec<Vec<PlannedService>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlannedService {
    pub service: String,
    pub driver: Driver,
    /// Instances to run; `None` for global services (one per node).
    pub replicas: Option<u32>,
    pub waits_for: Vec<Wait>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Wait {
    pub service: String,
    pub condition: Condition,
}

/// Orders a validated project's services into batches. A cycle is an error here only if the
/// project was not validated (validation rejects cycles with positions).
pub fn plan(project: &Project, stack: &str, env: &str) -> Result<DeployPlan, Vec<String>> {
    let deps: BTreeMap<String, BTreeSet<String>> = project
        .services
        .iter()
        .map(|(n, s)| (n.clone(), s.depends_on.keys().cloned().collect()))
        .collect();
    let batches = batches(&deps)?
        .into_iter()
        .map(|batch| {
            batch
                .into_iter()
                .map(|name| {
                    let svc = &project.services[&name];
                    let deploy = svc.deploy.as_ref();
                    let global = matches!(
                        deploy.and_then(|d| d.mode),
                        Some(DeployMode::Global | DeployMode::GlobalJob)
                    );
                    PlannedService {
                        driver: svc
                            .x_skiff
                            .as_ref()
                            .and_then(|x| x.driver)
                            .unwrap_or(Driver::Docker),
                        replicas: (!global)
                            .then(|| deploy.and_then(|d| d.replicas).or(svc.scale).unwrap_or(1)),
                        waits_for: svc
                            .depends_on
                            .iter()
                            .map(|(d, dep)| Wait {
                                service: d.clone(),
                                condition: dep.condition,
                            })
                            .collect(),
                        service: name,
                    }
                })
                .collect()
        })
        .collect();
    Ok(DeployPlan {
        stack: stack.to_string(),
        env: env.to_string(),
        batches,
    })
}

/// Groups `deps` (service → the services it depends on) into batches, or returns a cycle.
///
/// Dependencies on names that are not keys of `deps` are ignored (validation reports them).
pub fn batches(deps: &BTreeMap<String, BTreeSet<String>>) -> Result<Vec<Vec<String>>, Vec<String>> {
    // Kahn's algorithm by levels: O(services + edges), so hostile files stay fast.
    let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, ds) in deps {
        let known: Vec<&str> = ds
            .iter()
            .map(String::as_str)
            .filter(|d| deps.contains_key(*d))
            .collect();
        waiting.insert(name, known.len());
        for d in known {
            dependents.entry(d).or_default().push(name);
        }
    }
    let mut ready: Vec<&str> = waiting
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(k, _)| *k)
        .collect();
    let mut placed = 0;
    let mut out = Vec::new();
    while !ready.is_empty() {
        ready.sort_unstable();
        let mut next = Vec::new();
        for s in &ready {
            for d in dependents.get(s).map(Vec::as_slice).unwrap_or_default() {
                let n = waiting.get_mut(d).expect("every dependent is a service");
                *n -= 1;
                if *n == 0 {
                    next.push(*d);
                }
            }
        }
        placed += ready.len();
        out.push(ready.iter().map(|s| s.to_string()).collect());
        ready = next;
    }
    if placed < deps.len() {
        let done: BTreeSet<&str> = waiting
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(k, _)| *k)
            .collect();
        return Err(find_cycle(deps, &done));
    }
    Ok(out)
}

/// Some cycle among the services not yet placed (every one of them waits on another).
fn find_cycle(deps: &BTreeMap<String, BTreeSet<String>>, done: &BTreeSet<&str>) -> Vec<String> {
    let next = |n: &str| -> Option<&str> {
        deps.get(n)?
            .iter()
            .map(String::as_str)
            .find(|d| deps.contains_key(*d) && !done.contains(d))
    };
    let start = deps
        .keys()
        .map(String::as_str)
        .find(|k| !done.contains(k))
        .expect("an unplaced service");
    // Walk until a service repeats; the walk from its first visit is the cycle.
    let mut path: Vec<&str> = vec![start];
    loop {
        let cur = *path.last().expect("non-empty");
        let n = next(cur).expect("every unplaced service waits on another unplaced one");
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut cycle: Vec<&str> = path[i..].to_vec();
            let min = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| **s)
                .map(|(i, _)| i)
                .unwrap_or(0);
            cycle.rotate_left(min);
            let first = cycle[0];
            cycle.push(first);
            return cycle.into_iter().map(str::to_string).collect();
        }
        path.push(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        edges
            .iter()
            .map(|(n, ds)| (n.to_string(), ds.iter().map(|d| d.to_string()).collect()))
            .collect()
    }

    #[test]
    fn independent_services_share_the_first_batch() {
        let g = graph(&[
            ("web", &["db", "cache"]),
            ("db", &[]),
            ("cache", &[]),
            ("worker", &["db"]),
        ]);
        assert_eq!(
            batches(&g).unwrap(),
            vec![vec!["cache", "db"], vec!["web", "worker"]]
        );
    }

    #[test]
    fn a_long_chain_is_ordered_in_linear_time() {
        let n = 50_000;
        let g: BTreeMap<String, BTreeSet<String>> = (0..n)
            .map(|i| {
                let deps = if i + 1 < n {
                    vec![format!("s{:06}", i + 1)]
                } else {
                    vec![]
                };
                (format!("s{i:06}"), deps.into_iter().collect())
            })
            .collect();
        let order = batches(&g).unwrap();
        assert_eq!(order.len(), n);
        assert_eq!(order[0], vec![format!("s{:06}", n - 1)]);
    }

    #[test]
    fn a_chain_gives_one_batch_per_level() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &[])]);
        assert_eq!(batches(&g).unwrap(), vec![vec!["c"], vec!["b"], vec!["a"]]);
    }

    #[test]
    fn a_cycle_is_reported_as_its_path() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &[])]);
        assert_eq!(batches(&g).unwrap_err(), vec!["a", "b", "c", "a"]);
        let g = graph(&[("x", &["x"])]);
        assert_eq!(batches(&g).unwrap_err(), vec!["x", "x"]);
    }

    #[test]
    fn the_cycle_found_need_not_include_the_first_blocked_service() {
        // "a" waits on the cycle b <-> c but is not part of it.
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["b"])]);
        assert_eq!(batches(&g).unwrap_err(), vec!["b", "c", "b"]);
    }

    proptest! {
        /// Every service lands after all of its dependencies, in acyclic graphs (edges only
        /// from higher to lower index).
        #[test]
        fn every_service_comes_after_its_dependencies(
            edges in proptest::collection::vec((0usize..30, 0usize..30), 0..80)
        ) {
            let mut g: BTreeMap<String, BTreeSet<String>> =
                (0..30).map(|i| (format!("s{i:02}"), BTreeSet::new())).collect();
            for (a, b) in edges {
                if a > b {
                    g.get_mut(&format!("s{a:02}")).unwrap().insert(format!("s{b:02}"));
                }
            }
            let order = batches(&g).unwrap();
            let level: BTreeMap<&str, usize> = order.iter().enumerate()
                .flat_map(|(i, b)| b.iter().map(move |s| (s.as_str(), i))).collect();
            prop_assert_eq!(level.len(), 30);
            for (s, ds) in &g {
                for d in ds {
                    prop_assert!(level[d.as_str()] < level[s.as_str()]);
                }
            }
        }

        /// Adding a back edge to a chain always yields a cycle that is a real path of the graph.
        #[test]
        fn reported_cycles_are_real_paths(n in 2usize..15, back in 0usize..15) {
            let back = back % n;
            let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for i in 0..n {
                let deps = if i + 1 < n { vec![format!("s{:02}", i + 1)] } else { vec![format!("s{back:02}")] };
                g.insert(format!("s{i:02}"), deps.into_iter().collect());
            }
            let cycle = batches(&g).unwrap_err();
            prop_assert_eq!(cycle.first(), cycle.last());
            for w in cycle.windows(2) {
                prop_assert!(g[&w[0]].contains(&w[1]));
            }
        }
    }
}
