//! Adoption: instances a previous agent left running are re-attached from their
//! directories; containers no directory names are removed.

use super::*;

impl Agent {
    /// Re-attaches to the instances a previous agent left running.
    pub(crate) async fn adopt(self: &Arc<Self>) {
        let root = self.cfg.data_dir.join("instances");
        let dirs = tokio::task::spawn_blocking(move || instance_dirs(&root))
            .await
            .unwrap_or_default();
        let mut adopted_ids = std::collections::HashSet::new();
        let mut adopted_dirs = std::collections::HashSet::new();
        for (id, dir) in dirs {
            let Some(meta) = read_meta(&dir) else {
                continue;
            };
            // Its workloads cannot be managed without their driver: leave them alone.
            let Ok(driver) = self.driver(meta.spec.driver) else {
                continue;
            };
            let request = skiff_driver::AdoptRequest {
                instance: id.clone(),
                spec: meta.spec.clone(),
                dir: dir.clone(),
                id: meta.workload_id.clone(),
                env: meta.env.clone(),
                ports: meta.ports.clone(),
            };
            // Gone (a container removed behind our back, a directory without a started
            // workload): not adopted, its directory is replaced by the next start.
            let Ok(handle) = driver.adopt(request).await else {
                continue;
            };
            if let Some(wid) = handle.id() {
                adopted_ids.insert(wid.to_string());
            }
            adopted_dirs.insert(dir.clone());
            let observed = Arc::new(Mutex::new(Observed {
                state: InstanceState::Starting,
                exit: None,
                restarts: meta.restarts,
                restart_at: None,
                started: Instant::now(),
                reason: None,
            }));
            let running = handle.status().await == skiff_driver::State::Running;
            let mut live = Live {
                release: meta.release,
                generation: meta.generation,
                spec: meta.spec,
                handle: Some(handle),
                ports: meta.ports,
                observed,
                busy: false,
                monitor: None,
            };
            if running {
                self.event(
                    &id.stack,
                    Some(&id),
                    "adopted",
                    format!(
                        "re-attached to pid {}",
                        live.handle.as_ref().and_then(|h| h.pid()).unwrap_or(0)
                    ),
                );
            }
            live.monitor = Some(self.spawn_monitor(id.clone(), &live));
            self.live().insert(id, live);
        }
        // Workloads of this scope that no instance directory names (containers created by an
        // agent that died before recording them, or left by a crash during `down`): nothing
        // owns them.
        for driver in &self.drivers {
            let Ok(all) = driver.list().await else {
                continue;
            };
            for found in all {
                let adopted = adopted_ids.contains(&found.id)
                    || found.dir.as_ref().is_some_and(|d| adopted_dirs.contains(d));
                if !adopted {
                    tracing::info!(workload = %found.id, "removing an orphaned workload");
                    let _ = driver.remove(&found.id).await;
                }
            }
        }
    }
}

pub(crate) fn read_meta(dir: &Path) -> Option<Meta> {
    serde_json::from_slice(&std::fs::read(dir.join(META)).ok()?).ok()
}

/// `<root>/<env>/<stack>/<service>-<index>` directories with the instance each names.
fn instance_dirs(root: &Path) -> Vec<(InstanceId, PathBuf)> {
    skiff_driver::instance_dirs(root)
        .into_iter()
        .filter_map(|inst| {
            let name = |p: Option<&Path>| {
                p.and_then(Path::file_name)
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            };
            let stack = inst.parent();
            let env = stack.and_then(Path::parent);
            let text = format!("{}/{}/{}", name(env), name(stack), name(Some(&inst)));
            Some((text.parse::<InstanceId>().ok()?, inst))
        })
        .collect()
}
