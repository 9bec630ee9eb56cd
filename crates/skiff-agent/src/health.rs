//! Readiness probes.
//!
//! An instance with a compose `healthcheck` is ready when its test passes (`CMD` runs the
//! program, `CMD-SHELL` runs `sh -c`), in the instance's environment; without one, when its
//! first port accepts a TCP connection; without ports, as soon as it runs.
//!
//! The first probe runs right after start and retries fast (from ~10 ms, doubling) until the
//! first success; then probes settle to the interval (compose#12782: no waiting a full
//! interval before the first probe).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use skiff_model::HealthSpec;
use tokio::process::Command;

/// What to probe for one instance.
#[derive(Clone, Debug)]
pub enum Probe {
    Command {
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        timeout: Duration,
    },
    Tcp(SocketAddr),
    /// A compose health check run inside a container.
    Exec {
        engine: skiff_driver_docker::Engine,
        container: String,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        timeout: Duration,
    },
    /// No health check and no port: running is ready.
    Running,
}

impl Probe {
    pub fn for_instance(
        health: Option<&HealthSpec>,
        first_port: Option<SocketAddr>,
        env: &BTreeMap<String, String>,
        container: Option<(skiff_driver_docker::Engine, String)>,
    ) -> Probe {
        match health {
            Some(h) => {
                let argv = match h.test.split_first() {
                    Some((kind, rest)) if kind == "CMD-SHELL" => {
                        vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
                    }
                    Some((_, rest)) => rest.to_vec(),
                    None => Vec::new(),
                };
                if let Some((engine, container)) = container {
                    return Probe::Exec {
                        engine,
                        container,
                        argv,
                        // The container has its environment already.
                        env: BTreeMap::new(),
                        timeout: h.timeout,
                    };
                }
                Probe::Command {
                    argv,
                    env: env.clone(),
                    timeout: h.timeout,
                }
            }
            None => match first_port {
                Some(addr) => Probe::Tcp(addr),
                None => Probe::Running,
            },
        }
    }

    /// Runs the probe once: `Ok(())` when ready, else why not.
    pub async fn check(&self) -> Result<(), String> {
        match self {
            Probe::Running => Ok(()),
            Probe::Tcp(addr) => {
                match tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
                    Err(_) => Err(format!("connect {addr}: timed out")),
                }
            }
            Probe::Exec {
                engine,
                container,
                argv,
                env,
                timeout,
            } => {
                let run = engine.exec(container, argv, env);
                match tokio::time::timeout(*timeout, run).await {
                    Ok(Ok((0, _))) => Ok(()),
                    Ok(Ok((code, out))) => Err(format!(
                        "health check exited {code}: {}",
                        out.lines().last().unwrap_or("").trim()
                    )),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("health check timed out after {timeout:?}")),
                }
            }
            Probe::Command { argv, env, timeout } => {
                let Some((program, args)) = argv.split_first() else {
                    return Err("empty health check command".into());
                };
                let mut cmd = Command::new(program);
                cmd.args(args)
                    .envs(env)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true);
                let run = async {
                    let out = cmd.output().await.map_err(|e| format!("{program}: {e}"))?;
                    if out.status.success() {
                        Ok(())
                    } else {
                        let err = String::from_utf8_lossy(&out.stderr);
                        Err(format!(
                            "health check {}: {}",
                            out.status,
                            err.lines().last().unwrap_or("").trim()
                        ))
                    }
                };
                tokio::time::timeout(*timeout, run)
                    .await
                    .unwrap_or_else(|_| Err(format!("health check timed out after {timeout:?}")))
            }
        }
    }
}

/// Delays between probes before the first success: 10 ms, doubling, capped at `cap`.
pub fn first_probe_delays(cap: Duration) -> impl Iterator<Item = Duration> {
    let cap = cap.max(Duration::from_millis(10));
    std::iter::successors(Some(Duration::from_millis(10)), move |d| {
        Some((*d * 2).min(cap))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_probe_passes_once_the_port_listens() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(Probe::Tcp(addr).check().await.is_ok());
        // A freed port may be reused at once by anything on the machine; port 1 never listens.
        let closed: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(
            Probe::Tcp(closed)
                .check()
                .await
                .unwrap_err()
                .contains("connect")
        );
    }

    #[tokio::test]
    async fn command_probes_use_cmd_and_cmd_shell_with_the_instance_env() {
        let env = BTreeMap::from([("PORT".to_string(), "1234".to_string())]);
        let h = |test: &[&str]| HealthSpec {
            test: test.iter().map(|s| s.to_string()).collect(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            retries: 3,
            start_period: Duration::ZERO,
            start_interval: Duration::from_millis(100),
        };
        let p = Probe::for_instance(
            Some(&h(&["CMD-SHELL", "test $PORT = 1234"])),
            None,
            &env,
            None,
        );
        assert!(p.check().await.is_ok());
        let p = Probe::for_instance(Some(&h(&["CMD", "false"])), None, &env, None);
        assert!(p.check().await.is_err());
        let p = Probe::for_instance(Some(&h(&["CMD-SHELL", "sleep 5"])), None, &env, None);
        let mut slow = p.clone();
        if let Probe::Command { timeout, .. } = &mut slow {
            *timeout = Duration::from_millis(100);
        }
        assert!(slow.check().await.unwrap_err().contains("timed out"));
    }

    #[test]
    fn first_probes_start_at_ten_milliseconds_and_back_off() {
        let d: Vec<u64> = first_probe_delays(Duration::from_millis(100))
            .take(6)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(d, vec![10, 20, 40, 80, 100, 100]);
    }
}
