//! Starting a workload through the driver its service names: ports and environment from the
//! agent, everything driver-specific (cgroups, shims, images, networks) behind
//! `skiff_driver::Driver::start`. The instance is recorded in its directory right before the
//! workload starts (the driver's `before_start` hook), so a crash from then on leaves a record.

use skiff_driver::ConfigPlace;
use skiff_model::ConfigFile;

use super::*;

impl Agent {
    /// Starts the workload of `id`; returns it (with its host ports).
    pub(crate) async fn launch(
        &self,
        id: &InstanceId,
        rel: &Release,
        spec: &ServiceSpec,
        generation: u64,
        restarts: u32,
    ) -> Result<Launched, String> {
        let driver = self.driver(spec.driver).map_err(|why| {
            format!(
                "service {} runs on {} ({why}); x-skiff: {{driver: process}} runs it as a \
                 process instead",
                id.service, spec.driver
            )
        })?;
        // Boxed: rare, and a large future (an HTTP call) would otherwise sit in every start's
        // state machine (1,000 starts in flight hold 1,000 of them).
        Box::pin(self.learn_addresses(&id.stack, spec)).await;
        // Named volumes as directories on this node (seeded before the first start), before
        // ports are taken: a failed seed holds nothing.
        // Boxed for the same reason: a seed may download.
        let volumes = if driver.host_volumes() {
            Box::pin(self.prepare_volumes(id, spec)).await?
        } else {
            Vec::new()
        };
        let listen = driver.listen_ports(spec).map_err(|e| e.to_string())?;
        let dir = self.instance_dir(id);
        // Each config's path reaches the workload as SKIFF_CONFIG_<NAME>.
        let prepared = config_places(driver.as_ref(), &dir, spec).and_then(|mut configs| {
            let container = driver.own_network();
            let mut env = self.instance_env(id, rel, spec, &listen, container)?;
            for (c, place) in &configs {
                env.insert(c.env_var(), place.seen.clone());
            }
            env.extend(volumes);
            // Templates are rendered here, per instance, and written with the other files.
            for (c, _) in configs.iter_mut().filter(|(c, _)| c.template) {
                c.content = self.render_config(id, rel, c, &env, &listen, container)?;
            }
            Ok((env, configs))
        });
        let (env, config_files) = match prepared {
            Ok(p) => p,
            Err(e) => {
                driver.return_ports(&listen);
                return Err(e);
            }
        };
        let mut meta = Meta {
            id: id.to_string(),
            release: rel.number,
            generation,
            spec: spec.clone(),
            ports: listen.clone(),
            env: env.clone(),
            restarts,
            workload_id: None,
        };
        let json = serde_json::to_vec(&meta).expect("meta serializes");
        let record_dir = dir.clone();
        // The config files are in place before the workload starts, and before the record
        // that adoption trusts to say which release's files they are.
        let before_start: skiff_driver::BeforeStart = Box::new(move || {
            std::fs::create_dir_all(&record_dir)?;
            // A crashed earlier copy's files go: only this release's configs are there.
            let _ = std::fs::remove_dir_all(record_dir.join(skiff_driver::configs::CONFIG_DIR));
            for (c, place) in &config_files {
                skiff_driver::configs::write(place, c)?;
            }
            driver::write_atomic(&record_dir.join(META), &json).map_err(std::io::Error::other)?;
            skiff_store::crash_point("instance-dir-written");
            Ok(())
        });
        let request = skiff_driver::StartRequest {
            instance: id.clone(),
            release: rel.number,
            spec: spec.clone(),
            dir: dir.clone(),
            env,
            listen_ports: listen,
            events: self.events.clone(),
            before_start: Some(before_start),
        };
        // Boxed: a container start (image build, engine calls) is a large future; process
        // starts should not carry its size.
        let workload = Box::pin(driver.start(request))
            .await
            .map_err(|e| e.to_string())?;
        // Recorded again only when the start learned something adoption needs (a container's
        // id, host ports the engine picked): a process start writes one file.
        if workload.id().is_some() || workload.ports() != meta.ports.as_slice() {
            meta.workload_id = workload.id().map(str::to_string);
            meta.ports = workload.ports().to_vec();
            if let Err(e) = write_meta(&dir, &meta).await {
                let _ = workload.stop(Signal::SIGKILL, Duration::ZERO).await;
                let _ = workload.release().await;
                return Err(e);
            }
        }
        skiff_store::crash_point("instance-started");
        self.event(
            &id.stack,
            Some(id),
            "started",
            format!("{} release {}", workload.describe(), rel.number),
        );
        Ok(workload)
    }
}

/// Each config of `spec` with where `driver` puts it for the instance in `dir`.
pub(crate) fn config_places(
    driver: &dyn Driver,
    dir: &Path,
    spec: &ServiceSpec,
) -> Result<Vec<(ConfigFile, ConfigPlace)>, String> {
    spec.configs
        .iter()
        .map(|c| {
            driver
                .config_place(dir, c)
                .map(|p| (c.clone(), p))
                .ok_or_else(|| format!("config {}: target {:?} names no file", c.name, c.target))
        })
        .collect()
}
