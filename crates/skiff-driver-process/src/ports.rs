//! Host ports for instances: each instance port gets a free port on the node's address.
//!
//! A port is found by binding port 0 and is then remembered as taken until released, so two
//! instances never get the same one even before either has bound it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, TcpListener};
use std::sync::Mutex;

#[derive(Debug)]
pub struct PortAllocator {
    addr: IpAddr,
    taken: Mutex<BTreeSet<u16>>,
}

impl PortAllocator {
    pub fn new(addr: IpAddr) -> Self {
        PortAllocator {
            addr,
            taken: Mutex::new(BTreeSet::new()),
        }
    }

    /// Marks ports as taken (ports of adopted instances).
    pub fn reserve(&self, ports: impl IntoIterator<Item = u16>) {
        self.lock().extend(ports);
    }

    /// A free port on the node's address.
    pub fn allocate(&self) -> std::io::Result<u16> {
        for _ in 0..64 {
            let port = TcpListener::bind((self.addr, 0))?.local_addr()?.port();
            if self.lock().insert(port) {
                return Ok(port);
            }
        }
        Err(std::io::Error::other("no free port after 64 tries"))
    }

    pub fn release(&self, ports: impl IntoIterator<Item = u16>) {
        let mut taken = self.lock();
        for p in ports {
            taken.remove(&p);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u16>> {
        self.taken.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `PORT` (the first port) and `SKIFF_PORT_<NAME>` for each port, `<NAME>` upper-cased with
/// every other character than letters and digits turned into `_`.
pub fn port_env(ports: &[(String, u16)]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some((_, first)) = ports.first() {
        env.insert("PORT".to_string(), first.to_string());
    }
    for (name, port) in ports {
        env.insert(format!("SKIFF_PORT_{}", env_name(name)), port.to_string());
    }
    env
}

/// `my-db.x` → `MY_DB_X`.
pub fn env_name(name: &str) -> String {
    skiff_model::env_name_part(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocated_ports_are_distinct_until_released() {
        let a = PortAllocator::new("127.0.0.1".parse().unwrap());
        let ports: BTreeSet<u16> = (0..50).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(ports.len(), 50);
        a.release(ports.iter().copied());
        assert!(a.lock().is_empty());
    }

    #[test]
    fn port_env_names_follow_the_conventions() {
        let env = port_env(&[
            ("http".into(), 4000),
            ("8443".into(), 4001),
            ("my-db".into(), 4002),
        ]);
        assert_eq!(env["PORT"], "4000");
        assert_eq!(env["SKIFF_PORT_HTTP"], "4000");
        assert_eq!(env["SKIFF_PORT_8443"], "4001");
        assert_eq!(env["SKIFF_PORT_MY_DB"], "4002");
    }
}
