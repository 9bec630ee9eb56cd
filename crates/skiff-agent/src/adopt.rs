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
        let mut adopted_containers = std::collections::HashSet::new();
        for (id, dir) in dirs {
            let Some(meta) = read_meta(&dir) else {
                continue;
            };
            let handle = match (&meta.container, &self.cfg.docker) {
                (Some(cid), Ok(engine)) => {
                    // A container that is gone was removed behind our back: not adopted, its
                    // directory is replaced by the next start.
                    match engine.state(cid).await {
                        Ok(skiff_driver_docker::State::Missing) | Err(_) => continue,
                        Ok(_) => {}
                    }
                    adopted_containers.insert(cid.clone());
                    let pid = engine
                        .list()
                        .await
                        .ok()
                        .and_then(|l| l.into_iter().find(|c| &c.id == cid).and_then(|c| c.pid));
                    Handle::Container(Container::watch(engine.clone(), cid.clone(), pid, &dir))
                }
                // Its containers cannot be managed without the engine: leave them alone.
                (Some(_), Err(_)) => continue,
                (None, _) => match driver::Instance::adopt(&dir) {
                    Ok(h) => Handle::Process(h),
                    Err(_) => continue,
                },
            };
            self.ports.reserve(meta.ports.iter().map(|(_, p)| *p));
            let observed = Arc::new(Mutex::new(Observed {
                state: InstanceState::Starting,
                exit: None,
                restarts: meta.restarts,
                restart_at: None,
                started: Instant::now(),
                reason: None,
            }));
            let running = handle.status().await == Status::Running;
            let mut live = Live {
                release: meta.release,
                generation: meta.generation,
                spec: meta.spec,
                handle: Some(handle),
                ports: meta.ports,
                env: meta.env,
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
                        live.handle.as_ref().and_then(Handle::pid).unwrap_or(0)
                    ),
                );
            }
            live.monitor = Some(self.spawn_monitor(id.clone(), &live));
            self.live().insert(id, live);
        }
        // Containers of this cluster that no instance directory names: created by an agent that
        // died before recording them, or left by a crash during `down`. Nothing owns them.
        if let Ok(engine) = &self.cfg.docker
            && let Ok(all) = engine.list().await
        {
            for c in all {
                if !adopted_containers.contains(&c.id) {
                    tracing::info!(container = %c.name, "removing an orphaned container");
                    let _ = engine.remove(&c.id).await;
                }
            }
        }
    }
}

fn read_meta(dir: &Path) -> Option<Meta> {
    serde_json::from_slice(&std::fs::read(dir.join(META)).ok()?).ok()
}

/// `<root>/<env>/<stack>/<service>-<index>` directories.
fn instance_dirs(root: &Path) -> Vec<(InstanceId, PathBuf)> {
    let mut out = Vec::new();
    let list = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|r| {
                r.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    for env in list(root) {
        for stack in list(&env) {
            for inst in list(&stack) {
                let text = format!(
                    "{}/{}/{}",
                    env.file_name().unwrap_or_default().to_string_lossy(),
                    stack.file_name().unwrap_or_default().to_string_lossy(),
                    inst.file_name().unwrap_or_default().to_string_lossy()
                );
                if let Ok(id) = text.parse::<InstanceId>() {
                    out.push((id, inst));
                }
            }
        }
    }
    out
}
