//! The route table (pure): which service port serves a host and path, and its ready backends.
//! Built from one catalog snapshot; the ingress swaps in a new table on every change.
//!
//! Every service with a port is reachable at `<service>.<stack>.<env>.<domain>` (its first
//! port); `x-skiff.routes` add hosts (exact or `*.` wildcards) and path prefixes. A path
//! prefix matches whole segments: `/api` matches `/api`, `/api/x` and `/api?q`, not `/apix`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use skiff_catalog::{
    BackendInfo, ReleaseStats, RouteInfo, Seen, ServiceEntry, ServiceKey, Snapshot, Traffic,
};

use crate::balance::Health;

/// A ready instance's port, with the counters every request to it goes through.
#[derive(Clone, Debug)]
pub struct Backend {
    pub index: u32,
    pub addr: SocketAddr,
    pub traffic: Arc<Traffic>,
    pub health: Arc<Health>,
}

/// Backends that share a weight: all of a service's, or under a canary or blue-green
/// release one release's (with the counters its requests are judged by).
#[derive(Clone, Debug)]
pub struct Pool {
    pub weight: u32,
    pub backends: Vec<Backend>,
    /// Counted only while traffic is split between releases.
    pub stats: Option<Arc<ReleaseStats>>,
}

/// Where a route sends requests.
#[derive(Debug)]
pub struct Target {
    pub service: ServiceKey,
    pub port: String,
    pub pools: Vec<Pool>,
    /// Touched by every request or connection: the environment is not idle.
    pub seen: Arc<Seen>,
}

#[derive(Clone, Debug)]
pub struct Route {
    /// Path prefix (`/` matches everything).
    pub path: String,
    pub strip_prefix: bool,
    pub target: Arc<Target>,
}

/// Routes by host; within a host, the longest path prefix first.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Vec<Route>>,
    /// `(suffix with its leading dot, routes)`, longest suffix first.
    wildcard: Vec<(String, Vec<Route>)>,
}

impl Route {
    pub fn info(&self, host: &str) -> RouteInfo {
        let t = &self.target;
        RouteInfo {
            host: host.to_string(),
            path: self.path.clone(),
            strip_prefix: self.strip_prefix,
            env: t.service.env.clone(),
            stack: t.service.stack.clone(),
            service: t.service.service.clone(),
            port: t.port.clone(),
            backends: t
                .pools
                .iter()
                .flat_map(|pool| {
                    pool.backends.iter().map(|b| BackendInfo {
                        instance: b.index,
                        addr: b.addr,
                        weight: pool.weight,
                        in_flight: b.traffic.in_flight(),
                        ejected: b.health.is_ejected(),
                    })
                })
                .collect(),
        }
    }
}

/// Where the counters of a backend come from (the catalog and the ingress's ejection state).
pub trait Counters {
    /// `None`: not ready any more (withdrawn between the snapshot and now).
    fn traffic(&self, service: &ServiceKey, index: u32) -> Option<Arc<Traffic>>;
    fn health(&self, service: &ServiceKey, index: u32, port: &str) -> Arc<Health>;
    /// The request counters of one release of a service.
    fn stats(&self, service: &ServiceKey, release: u64) -> Arc<ReleaseStats>;
    /// The flag requests to `env` set (the idle reaper's last request).
    fn seen(&self, env: &str) -> Arc<Seen>;
}

/// `<service>.<stack>.<env>.<domain>`, the default host of a service.
pub fn default_host(service: &ServiceKey, domain: &str) -> String {
    format!(
        "{}.{}.{}.{}",
        service.service, service.stack, service.env, domain
    )
    .to_ascii_lowercase()
}

/// Where an `x-skiff.routes` host is served in `env`: as written in the default environment,
/// else under the environment's zone (`shop.com` → `shop.com.<env>.<domain>`, `*.shop.com`
/// → `*.shop.com.<env>.<domain>`) unless it is in that zone already, so that the same stack
/// in two environments never claims one host twice.
pub fn env_host(host: &str, env: &str, domain: &str) -> String {
    let host = host.to_ascii_lowercase();
    if env == skiff_model::DEFAULT_ENV {
        return host;
    }
    let zone = format!(".{env}.{domain}").to_ascii_lowercase();
    if host.ends_with(&zone) {
        host
    } else {
        format!("{host}{zone}")
    }
}

impl RouteTable {
    pub fn build(snap: &Snapshot, domain: &str, counters: &impl Counters) -> RouteTable {
        let mut table = RouteTable::default();
        for (key, entry) in &snap.services {
            let Some(first) = entry.ports.first() else {
                continue;
            };
            let own_host = default_host(key, domain);
            let mut targets: HashMap<String, Arc<Target>> = HashMap::new();
            let mut target = |port: &str| -> Arc<Target> {
                let port = if entry.ports.iter().any(|p| p == port) {
                    port
                } else {
                    first.as_str()
                };
                targets
                    .entry(port.to_string())
                    .or_insert_with(|| target(key, entry, port, counters))
                    .clone()
            };
            table.add(
                &own_host,
                Route {
                    path: "/".into(),
                    strip_prefix: false,
                    target: target(first),
                },
            );
            for r in &entry.routes {
                let host = r
                    .host
                    .as_deref()
                    .map_or_else(|| own_host.clone(), |h| env_host(h, &key.env, domain));
                table.add(
                    &host,
                    Route {
                        path: r.path.clone(),
                        strip_prefix: r.strip_prefix,
                        target: target(&r.port),
                    },
                );
            }
        }
        for routes in table.exact.values_mut() {
            sort(routes);
        }
        for (_, routes) in table.wildcard.iter_mut() {
            sort(routes);
        }
        table
            .wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        table
    }

    fn add(&mut self, host: &str, route: Route) {
        let host = host.to_ascii_lowercase();
        let routes = match host.strip_prefix('*') {
            Some(suffix) => match self.wildcard.iter().position(|(s, _)| s == suffix) {
                Some(i) => &mut self.wildcard[i].1,
                None => {
                    self.wildcard.push((suffix.to_string(), Vec::new()));
                    &mut self.wildcard.last_mut().expect("just pushed").1
                }
            },
            None => self.exact.entry(host).or_default(),
        };
        // The first route declared for a host and path wins (the default route is first).
        if !routes.iter().any(|r| r.path == route.path) {
            routes.push(route);
        }
    }

    /// Every route, by host (exact ones, then wildcards, each sorted), then as matched.
    pub fn list(&self) -> Vec<RouteInfo> {
        let mut exact: Vec<(String, &[Route])> = self
            .exact
            .iter()
            .map(|(host, routes)| (host.clone(), routes.as_slice()))
            .collect();
        let mut wild: Vec<(String, &[Route])> = self
            .wildcard
            .iter()
            .map(|(s, routes)| (HostPattern::Wildcard(s).to_string(), routes.as_slice()))
            .collect();
        exact.sort_by(|a, b| a.0.cmp(&b.0));
        wild.sort_by(|a, b| a.0.cmp(&b.0));
        exact
            .into_iter()
            .chain(wild)
            .flat_map(|(host, routes)| routes.iter().map(move |r| r.info(&host)))
            .collect()
    }

    /// The route for a request to `host` (as in the Host header: any port and trailing dot
    /// are ignored, case too) and `path`.
    pub fn find(&self, host: &str, path: &str) -> Option<&Route> {
        let (_, routes) = self.host_routes(host)?;
        routes.iter().find(|r| prefix_matches(&r.path, path))
    }

    /// [`find`](Self::find), told with the host pattern that matched.
    pub fn explain(&self, host: &str, path: &str) -> Option<RouteInfo> {
        let (pattern, routes) = self.host_routes(host)?;
        let route = routes.iter().find(|r| prefix_matches(&r.path, path))?;
        Some(route.info(&pattern.to_string()))
    }

    /// The routes of `host`, with the pattern that matched it.
    fn host_routes(&self, host: &str) -> Option<(HostPattern<'_>, &[Route])> {
        let host = strip_port(host).trim_end_matches('.');
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        if let Some((exact, routes)) = self.exact.get_key_value(host) {
            return Some((HostPattern::Exact(exact), routes));
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(suffix, routes)| (HostPattern::Wildcard(suffix), routes.as_slice()))
    }
}

/// A host as routes name it.
enum HostPattern<'a> {
    Exact(&'a str),
    /// `*` and this suffix (with its leading dot).
    Wildcard(&'a str),
}

impl std::fmt::Display for HostPattern<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// The ready backends of one port of a service, in a pool per release when traffic is split.
pub fn target(
    key: &ServiceKey,
    entry: &ServiceEntry,
    port: &str,
    counters: &impl Counters,
) -> Arc<Target> {
    let pools = entry
        .pools()
        .into_iter()
        .map(|(release, weight, endpoints)| Pool {
            weight,
            backends: endpoints
                .into_iter()
                .filter_map(|e| {
                    Some(Backend {
                        index: e.index,
                        addr: SocketAddr::new(e.address, *e.ports.get(port)?),
                        traffic: counters.traffic(key, e.index)?,
                        health: counters.health(key, e.index, port),
                    })
                })
                .collect(),
            stats: entry.split.is_some().then(|| counters.stats(key, release)),
        })
        .collect();
    Arc::new(Target {
        service: key.clone(),
        port: port.to_string(),
        pools,
        seen: counters.seen(&key.env),
    })
}

/// Service ports (compose `ports: "8080:80"`): published port → its service port's backends.
/// When two services publish one port, the first (by env, stack, service) has it.
pub fn service_ports(snap: &Snapshot, counters: &impl Counters) -> BTreeMap<u16, Arc<Target>> {
    let mut out = BTreeMap::new();
    for (key, entry) in &snap.services {
        for (port, published) in &entry.published {
            out.entry(*published)
                .or_insert_with(|| target(key, entry, port, counters));
        }
    }
    out
}

/// Stable addresses: `address:target` → the service's ready instances on that port.
pub fn stable_addresses(
    snap: &Snapshot,
    counters: &impl Counters,
) -> BTreeMap<std::net::SocketAddr, Arc<Target>> {
    let mut out = BTreeMap::new();
    for (key, entry) in &snap.services {
        let Some(ip) = entry.address else { continue };
        for (port, listen) in &entry.targets {
            out.entry(std::net::SocketAddr::new(ip, *listen))
                .or_insert_with(|| target(key, entry, port, counters));
        }
    }
    out
}

fn sort(routes: &mut [Route]) {
    routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split(']')
            .next()
            .map_or(host, |h| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Whether `prefix` matches `path` on whole segments.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix_trimmed = prefix.trim_end_matches('/');
    if prefix_trimmed.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix_trimmed) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

/// The path to forward under a `strip_prefix` route: `path` without `prefix`, never empty.
pub fn strip(prefix: &str, path_and_query: &str) -> String {
    let rest = path_and_query
        .strip_prefix(prefix.trim_end_matches('/'))
        .unwrap_or(path_and_query);
    if rest.is_empty() || rest.starts_with('?') {
        format!("/{rest}")
    } else {
        rest.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use skiff_catalog::{Catalog, ServiceInfo};
    use skiff_model::{InstanceId, RouteSpec, StackKey};

    use super::*;

    struct FromCatalog<'a>(&'a Catalog);

    impl Counters for FromCatalog<'_> {
        fn traffic(&self, service: &ServiceKey, index: u32) -> Option<Arc<Traffic>> {
            self.0.traffic(service, index)
        }
        fn health(&self, _: &ServiceKey, _: u32, _: &str) -> Arc<Health> {
            Arc::default()
        }
        fn stats(&self, service: &ServiceKey, release: u64) -> Arc<ReleaseStats> {
            self.0.release_stats(service, release)
        }
        fn seen(&self, env: &str) -> Arc<Seen> {
            self.0.seen(env)
        }
    }

    fn route(host: Option<&str>, path: &str, port: &str, strip: bool) -> RouteSpec {
        RouteSpec {
            host: host.map(str::to_string),
            path: path.into(),
            port: port.into(),
            strip_prefix: strip,
        }
    }

    /// A ready instance: service, index, (port name, port).
    type Ready<'a> = (&'a str, u32, &'a [(&'a str, u16)]);

    /// A catalog of stack `shop` with these services and ready instances.
    fn shop(services: Vec<(&str, ServiceInfo)>, ready: &[Ready]) -> Catalog {
        let c = Catalog::default();
        let stack = StackKey::new("default", "shop").unwrap();
        c.set_services(
            services
                .into_iter()
                .map(|(name, info)| (ServiceKey::new(&stack, name), info))
                .collect(),
        );
        for (svc, index, ports) in ready {
            c.add(
                &InstanceId {
                    stack: stack.clone(),
                    service: svc.to_string(),
                    index: *index,
                },
                "127.0.0.1".parse().unwrap(),
                ports.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
            );
        }
        c
    }

    fn table() -> RouteTable {
        let c = example();
        RouteTable::build(&c.snapshot(), "localhost", &FromCatalog(&c))
    }

    fn example() -> Catalog {
        shop(
            vec![
                (
                    "web",
                    ServiceInfo {
                        ports: vec!["http".into(), "admin".into()],
                        routes: vec![
                            route(Some("shop.example.test"), "/", "http", false),
                            route(None, "/admin", "admin", true),
                            route(Some("*.cdn.example.test"), "/", "http", false),
                        ],
                        published: BTreeMap::from([
                            ("http".to_string(), 8000),
                            ("admin".to_string(), 9000),
                        ]),
                        ..ServiceInfo::default()
                    },
                ),
                (
                    "api",
                    ServiceInfo {
                        ports: vec!["8080".into()],
                        routes: vec![route(Some("shop.example.test"), "/api", "8080", true)],
                        published: BTreeMap::from([("8080".to_string(), 8000)]),
                        ..ServiceInfo::default()
                    },
                ),
                ("worker", ServiceInfo::default()),
            ],
            &[
                ("web", 1, &[("http", 4001), ("admin", 5001)]),
                ("web", 2, &[("http", 4002), ("admin", 5002)]),
                ("api", 1, &[("8080", 6001)]),
            ],
        )
    }

    #[test]
    fn published_ports_map_to_their_service_port_and_the_first_publisher_keeps_a_port() {
        let c = example();
        let ports = service_ports(&c.snapshot(), &FromCatalog(&c));
        assert_eq!(ports.keys().copied().collect::<Vec<_>>(), vec![8000, 9000]);
        // api sorts before web: it has 8000.
        assert_eq!(ports[&8000].service.service, "api");
        assert_eq!(ports[&8000].pools[0].backends[0].addr.port(), 6001);
        let admin: Vec<u16> = ports[&9000].pools[0]
            .backends
            .iter()
            .map(|b| b.addr.port())
            .collect();
        assert_eq!(admin, vec![5001, 5002]);
    }

    #[test]
    fn route_hosts_outside_the_default_env_are_served_under_its_zone() {
        assert_eq!(env_host("Shop.com", "default", "localhost"), "shop.com");
        assert_eq!(
            env_host("shop.com", "alice", "localhost"),
            "shop.com.alice.localhost"
        );
        assert_eq!(
            env_host("*.shop.com", "alice", "localhost"),
            "*.shop.com.alice.localhost"
        );
        // Already in the zone: as written.
        assert_eq!(
            env_host("api.alice.localhost", "alice", "localhost"),
            "api.alice.localhost"
        );
        // Another env's zone is not this one's.
        assert_eq!(
            env_host("api.bob.localhost", "alice", "localhost"),
            "api.bob.localhost.alice.localhost"
        );
    }

    fn ports(r: &Route) -> Vec<u16> {
        r.target.pools[0]
            .backends
            .iter()
            .map(|b| b.addr.port())
            .collect()
    }

    #[test]
    fn the_default_host_serves_the_first_port_of_every_service_with_one() {
        let t = table();
        let r = t.find("web.shop.default.localhost", "/").unwrap();
        assert_eq!(r.target.service.service, "web");
        assert_eq!(ports(r), vec![4001, 4002]);
        let r = t.find("API.Shop.Default.Localhost:7780", "/x").unwrap();
        assert_eq!(ports(r), vec![6001]);
        assert!(t.find("worker.shop.default.localhost", "/").is_none());
        assert!(t.find("nope.shop.default.localhost", "/").is_none());
    }

    #[test]
    fn x_skiff_routes_add_hosts_paths_and_wildcards_longest_prefix_first() {
        let t = table();
        let api = t.find("shop.example.test", "/api/orders?id=1").unwrap();
        assert_eq!(api.target.service.service, "api");
        assert!(api.strip_prefix);
        let web = t.find("shop.example.test", "/apiary").unwrap();
        assert_eq!(
            web.target.service.service, "web",
            "prefixes match whole segments"
        );
        let admin = t
            .find("web.shop.default.localhost", "/admin/users")
            .unwrap();
        assert_eq!(ports(admin), vec![5001, 5002]);
        let cdn = t.find("img.eu.cdn.example.test", "/a.png").unwrap();
        assert_eq!(cdn.target.service.service, "web");
        let told = t.explain("IMG.cdn.example.test:7780", "/a.png").unwrap();
        assert_eq!(
            (told.host.as_str(), told.path.as_str()),
            ("*.cdn.example.test", "/")
        );
        assert!(
            t.find("cdn.example.test", "/").is_none(),
            "*. needs a label"
        );
        assert!(t.find("shop.example.test.", "/").is_some(), "trailing dot");
    }

    #[test]
    fn the_listing_names_every_host_and_prefix_with_its_backends() {
        let listed: Vec<(String, String, String, Vec<u16>)> = table()
            .list()
            .into_iter()
            .map(|r| {
                let ports = r.backends.iter().map(|b| b.addr.port()).collect();
                (r.host, r.path, format!("{}:{}", r.service, r.port), ports)
            })
            .collect();
        let row = |h: &str, p: &str, t: &str, ports: &[u16]| {
            (h.to_string(), p.to_string(), t.to_string(), ports.to_vec())
        };
        assert_eq!(
            listed,
            vec![
                row("api.shop.default.localhost", "/", "api:8080", &[6001]),
                row("shop.example.test", "/api", "api:8080", &[6001]),
                row("shop.example.test", "/", "web:http", &[4001, 4002]),
                row(
                    "web.shop.default.localhost",
                    "/admin",
                    "web:admin",
                    &[5001, 5002]
                ),
                row("web.shop.default.localhost", "/", "web:http", &[4001, 4002]),
                row("*.cdn.example.test", "/", "web:http", &[4001, 4002]),
            ]
        );
        let web = &table().list()[4];
        assert_eq!((web.env.as_str(), web.stack.as_str()), ("default", "shop"));
        assert_eq!(web.backends[1].instance, 2);
        assert!(!web.backends[0].ejected && web.backends[0].in_flight == 0);
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash_and_the_query() {
        assert_eq!(strip("/api", "/api/orders?id=1"), "/orders?id=1");
        assert_eq!(strip("/api", "/api"), "/");
        assert_eq!(strip("/api/", "/api?x=1"), "/?x=1");
        assert_eq!(strip("/", "/x"), "/x");
        assert!(prefix_matches("/", "/anything"));
        assert!(!prefix_matches("/api", "/"));
    }

    #[test]
    fn withdrawn_instances_are_left_out_of_a_table_built_later() {
        let c = shop(
            vec![("web", ServiceInfo::with_ports(&["http"]))],
            &[("web", 1, &[("http", 4001)])],
        );
        let id = InstanceId {
            stack: StackKey::new("default", "shop").unwrap(),
            service: "web".into(),
            index: 1,
        };
        let snap = c.snapshot();
        c.remove(&id);
        // A table built from the older snapshot still cannot reach it: no counter.
        let t = RouteTable::build(&snap, "localhost", &FromCatalog(&c));
        assert!(ports(t.find("web.shop.default.localhost", "/").unwrap()).is_empty());
    }
}
