//! What the catalog answers for one question. No I/O: the UDP fast path, the hickory TCP
//! handler and `skiff dns` (through the API) all answer from here.
//!
//! Names under the zone's origin (default `skiff.`):
//!
//! | name                                           | records                                   |
//! |------------------------------------------------|-------------------------------------------|
//! | `<service>.<stack>.<env>`                      | A/AAAA of ready instances; SRV, first port |
//! | `_<port>._tcp.<service>.<stack>.<env>`         | SRV of that port on every ready instance  |
//! | `<service>-<n>.<service>.<stack>.<env>`        | A/AAAA of that instance (the SRV targets) |
//!
//! A known service without ready instances answers NOERROR with no records; a name nothing
//! lives under is NXDOMAIN; both carry the zone's SOA (negative TTL = the zone TTL). Names
//! outside the zone are REFUSED (skiff is no resolver).

use std::collections::BTreeSet;
use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use skiff_catalog::{Endpoint, ServiceEntry, ServiceKey, Snapshot};

/// The zone skiff serves.
/// Why a domain cannot be the zone.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    #[error("DNS domain {domain:?}: {reason}")]
    Invalid { domain: String, reason: String },
    #[error("the DNS domain must not be the root")]
    Root,
}

#[derive(Clone, Debug)]
pub struct Zone {
    /// Lower case, fully qualified (`skiff.`).
    pub origin: Name,
    /// TTL of every record (0–1 s: answers follow the live catalog).
    pub ttl: u32,
}

impl Zone {
    /// `domain` like `skiff` or `dev.example.test`.
    pub fn new(domain: &str, ttl: u32) -> Result<Zone, ZoneError> {
        let mut origin = Name::from_ascii(domain)
            .map_err(|e| ZoneError::Invalid {
                domain: domain.to_string(),
                reason: e.to_string(),
            })?
            .to_lowercase();
        origin.set_fqdn(true);
        if origin.is_root() {
            return Err(ZoneError::Root);
        }
        Ok(Zone { origin, ttl })
    }

    fn name(&self, labels: &[&str]) -> Name {
        let relative =
            Name::from_labels(labels.iter().map(|l| l.as_bytes())).unwrap_or_else(|_| Name::root());
        let mut n = relative
            .append_domain(&self.origin)
            .unwrap_or_else(|_| self.origin.clone());
        n.set_fqdn(true);
        n
    }

    /// The zone's SOA: in the authority section of negative answers.
    pub fn soa(&self, serial: u64) -> Record {
        let ns = self.name(&["ns"]);
        let mbox = self.name(&["hostmaster"]);
        Record::from_rdata(
            self.origin.clone(),
            self.ttl,
            RData::SOA(SOA::new(ns, mbox, serial as u32, 60, 60, 3600, self.ttl)),
        )
    }
}

/// The answer to one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// The SOA, for negative answers.
    pub authorities: Vec<Record>,
    /// A/AAAA of SRV targets.
    pub additionals: Vec<Record>,
}

impl Answer {
    /// An answer with `rcode` and no records.
    pub fn new(rcode: ResponseCode) -> Answer {
        Answer {
            rcode,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

/// What `name` under `zone` is, in `snap`.
enum Target<'a> {
    Service(&'a ServiceKey, &'a ServiceEntry),
    Port(&'a ServiceKey, &'a ServiceEntry, String),
    Instance(&'a Endpoint),
    /// A name with names below it but no records (`<env>.<domain>`, the apex…).
    Empty,
    Apex,
    Unknown,
}

/// `instance` of the form `<service>-<n>`: the index.
fn instance_index(label: &str, service: &str) -> Option<u32> {
    let n = label.strip_prefix(service)?.strip_prefix('-')?;
    n.parse().ok().filter(|i| *i > 0)
}

fn find<'a>(snap: &'a Snapshot, labels: &[String]) -> Target<'a> {
    // Labels from the left; the service key is the last three (service, stack, env).
    let services = || {
        snap.services
            .iter()
            .filter(|(k, _)| !k.service.contains('.'))
    };
    let matches = |k: &ServiceKey, l: &[String]| {
        k.service.eq_ignore_ascii_case(&l[0])
            && k.stack.eq_ignore_ascii_case(&l[1])
            && k.env.eq_ignore_ascii_case(&l[2])
    };
    match labels.len() {
        0 => Target::Apex,
        1 | 2 => {
            let found = services().any(|(k, _)| {
                k.env.eq_ignore_ascii_case(&labels[labels.len() - 1])
                    && (labels.len() == 1 || k.stack.eq_ignore_ascii_case(&labels[0]))
            });
            if found {
                Target::Empty
            } else {
                Target::Unknown
            }
        }
        3 => services()
            .find(|(k, _)| matches(k, labels))
            .map_or(Target::Unknown, |(k, e)| Target::Service(k, e)),
        4 => {
            let Some((k, e)) = services().find(|(k, _)| matches(k, &labels[1..])) else {
                return Target::Unknown;
            };
            if labels[0] == "_tcp" {
                return Target::Empty;
            }
            match instance_index(&labels[0], &k.service.to_ascii_lowercase())
                .and_then(|i| e.endpoints.get(&i))
            {
                Some(ep) => Target::Instance(ep),
                None => Target::Unknown,
            }
        }
        5 if labels[1] == "_tcp" => {
            let Some((k, e)) = services().find(|(k, _)| matches(k, &labels[2..])) else {
                return Target::Unknown;
            };
            let port = labels[0]
                .strip_prefix('_')
                .and_then(|p| e.ports.iter().find(|x| x.eq_ignore_ascii_case(p)));
            match port {
                Some(port) => Target::Port(k, e, port.clone()),
                None => Target::Unknown,
            }
        }
        _ => Target::Unknown,
    }
}

/// The answer for `name`/`qtype` from the catalog `snap`.
pub fn lookup(snap: &Snapshot, zone: &Zone, name: &Name, qtype: RecordType) -> Answer {
    let name = name.to_lowercase();
    if !zone.origin.zone_of(&name) {
        return Answer::new(ResponseCode::Refused);
    }
    let labels: Vec<String> = name
        .iter()
        .take(usize::from(name.num_labels() - zone.origin.num_labels()))
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let mut out = Answer::new(ResponseCode::NoError);
    let addresses =
        |eps: &mut dyn Iterator<Item = &Endpoint>| -> Vec<Record> {
            let set: BTreeSet<IpAddr> = eps.map(|e| e.address).collect();
            set.into_iter()
                .filter_map(|ip| match (ip, qtype) {
                    (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => {
                        Some(Record::from_rdata(name.clone(), zone.ttl, RData::A(A(v4))))
                    }
                    (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => Some(
                        Record::from_rdata(name.clone(), zone.ttl, RData::AAAA(AAAA(v6))),
                    ),
                    _ => None,
                })
                .collect()
        };
    match find(snap, &labels) {
        Target::Unknown => {
            out.rcode = ResponseCode::NXDomain;
        }
        Target::Apex if qtype == RecordType::SOA => {
            out.answers.push(zone.soa(snap.index));
        }
        Target::Apex | Target::Empty => {}
        Target::Instance(ep) => {
            out.answers = addresses(&mut std::iter::once(ep));
        }
        Target::Service(key, entry) => match qtype {
            RecordType::SRV => {
                let first = entry.ports.first();
                srv(zone, &name, key, entry, first.map(String::as_str), &mut out);
            }
            _ => out.answers = addresses(&mut entry.resolving().into_iter()),
        },
        Target::Port(key, entry, port) => {
            if qtype == RecordType::SRV {
                srv(zone, &name, key, entry, Some(&port), &mut out);
            }
        }
    }
    if out.answers.is_empty() && out.rcode != ResponseCode::Refused {
        out.authorities.push(zone.soa(snap.index));
    }
    out
}

/// SRV records of `port` on every ready instance, with the targets' addresses.
fn srv(
    zone: &Zone,
    owner: &Name,
    key: &ServiceKey,
    entry: &ServiceEntry,
    port: Option<&str>,
    out: &mut Answer,
) {
    let Some(port) = port else { return };
    for ep in entry.resolving() {
        let Some(p) = ep.ports.get(port) else {
            continue;
        };
        let service = key.service.to_ascii_lowercase();
        let target = zone.name(&[
            &format!("{service}-{}", ep.index),
            &service,
            &key.stack.to_ascii_lowercase(),
            &key.env.to_ascii_lowercase(),
        ]);
        out.answers.push(Record::from_rdata(
            owner.clone(),
            zone.ttl,
            RData::SRV(SRV::new(0, 10, *p, target.clone())),
        ));
        let rdata = match ep.address {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        out.additionals
            .push(Record::from_rdata(target, zone.ttl, rdata));
    }
}

/// Every (name, type) with records now: what the fast path prepares answers for.
pub fn names(snap: &Snapshot, zone: &Zone) -> Vec<(Name, RecordType)> {
    let mut out = Vec::new();
    for (k, e) in &snap.services {
        if k.service.contains('.') {
            continue;
        }
        let service = k.service.to_ascii_lowercase();
        let base = [
            service.as_str(),
            &k.stack.to_ascii_lowercase(),
            &k.env.to_ascii_lowercase(),
        ];
        let svc_name = zone.name(&base);
        for t in [RecordType::A, RecordType::AAAA, RecordType::SRV] {
            out.push((svc_name.clone(), t));
        }
        for p in &e.ports {
            let port = format!("_{}", p.to_ascii_lowercase());
            let n = zone.name(&[&port, "_tcp", base[0], base[1], base[2]]);
            out.push((n, RecordType::SRV));
        }
        for ep in e.endpoints.values() {
            let inst = format!("{service}-{}", ep.index);
            let n = zone.name(&[&inst, base[0], base[1], base[2]]);
            out.push((n.clone(), RecordType::A));
            out.push((n, RecordType::AAAA));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use skiff_catalog::{Catalog, ServiceInfo};
    use skiff_model::{InstanceId, StackKey};

    use super::*;

    fn catalog() -> Snapshot {
        let c = Catalog::default();
        let stack = StackKey::new("default", "shop").unwrap();
        c.set_services(BTreeMap::from([
            (
                ServiceKey::new(&stack, "web"),
                ServiceInfo::with_ports(&["http", "9090"]),
            ),
            (
                ServiceKey::new(&stack, "db"),
                ServiceInfo::with_ports(&["5432"]),
            ),
        ]));
        for (i, port) in [(1, 4001), (2, 4002)] {
            c.add(
                &InstanceId {
                    stack: stack.clone(),
                    service: "web".into(),
                    index: i,
                },
                "127.0.0.1".parse().unwrap(),
                BTreeMap::from([("http".into(), port), ("9090".into(), port + 100)]),
            );
        }
        (*c.snapshot()).clone()
    }

    fn ask(name: &str, t: RecordType) -> Answer {
        lookup(
            &catalog(),
            &Zone::new("skiff", 0).unwrap(),
            &Name::from_ascii(name).unwrap(),
            t,
        )
    }

    fn rdata(a: &Answer) -> Vec<String> {
        a.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn a_service_name_lists_each_ready_address_once_case_blind() {
        let a = ask("Web.Shop.Default.Skiff.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(rdata(&a), vec!["127.0.0.1"]);
        assert_eq!(a.answers[0].ttl, 0);
    }

    #[test]
    fn srv_at_the_service_uses_the_first_port_and_named_srv_the_named_one() {
        let a = ask("web.shop.default.skiff.", RecordType::SRV);
        assert_eq!(
            rdata(&a),
            vec![
                "0 10 4001 web-1.web.shop.default.skiff.",
                "0 10 4002 web-2.web.shop.default.skiff."
            ]
        );
        assert_eq!(a.additionals.len(), 2);
        let a = ask("_9090._tcp.web.shop.default.skiff.", RecordType::SRV);
        assert_eq!(
            rdata(&a),
            vec![
                "0 10 4101 web-1.web.shop.default.skiff.",
                "0 10 4102 web-2.web.shop.default.skiff."
            ]
        );
        let a = ask("web-2.web.shop.default.skiff.", RecordType::A);
        assert_eq!(rdata(&a), vec!["127.0.0.1"]);
    }

    #[test]
    fn unknown_names_are_nxdomain_known_empty_ones_nodata_outside_refused() {
        for n in [
            "api.shop.default.skiff.",
            "web.shop.other.skiff.",
            "web-3.web.shop.default.skiff.",
            "_grpc._tcp.web.shop.default.skiff.",
            "x.y.z.web.shop.default.skiff.",
        ] {
            let a = ask(n, RecordType::A);
            assert_eq!(a.rcode, ResponseCode::NXDomain, "{n}");
            assert_eq!(a.authorities.len(), 1, "{n}: SOA for negative caching");
        }
        for n in [
            "db.shop.default.skiff.",
            "shop.default.skiff.",
            "default.skiff.",
            "skiff.",
        ] {
            let a = ask(n, RecordType::A);
            assert_eq!(a.rcode, ResponseCode::NoError, "{n}");
            assert!(a.answers.is_empty(), "{n}");
        }
        assert!(
            ask("web.shop.default.skiff.", RecordType::AAAA)
                .answers
                .is_empty()
        );
        assert_eq!(
            ask("example.com.", RecordType::A).rcode,
            ResponseCode::Refused
        );
    }

    #[test]
    fn instances_on_an_ipv6_node_answer_aaaa_and_srv_targets_resolve_to_it() {
        let c = Catalog::default();
        let stack = StackKey::new("default", "shop").unwrap();
        c.set_services(BTreeMap::from([(
            ServiceKey::new(&stack, "web"),
            ServiceInfo::with_ports(&["http"]),
        )]));
        let id = InstanceId {
            stack,
            service: "web".into(),
            index: 1,
        };
        c.add(
            &id,
            "fd00::7".parse().unwrap(),
            BTreeMap::from([("http".into(), 4001)]),
        );
        let snap = c.snapshot();
        let zone = Zone::new("skiff", 1).unwrap();
        let ask = |n: &str, t| lookup(&snap, &zone, &Name::from_ascii(n).unwrap(), t);
        let aaaa = ask("web.shop.default.skiff.", RecordType::AAAA);
        assert_eq!(rdata(&aaaa), vec!["fd00::7"]);
        assert_eq!(aaaa.answers[0].ttl, 1);
        let a = ask("web.shop.default.skiff.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.answers.is_empty(), "no A for a v6-only service");
        let srv = ask("web.shop.default.skiff.", RecordType::SRV);
        assert_eq!(rdata(&srv), vec!["0 10 4001 web-1.web.shop.default.skiff."]);
        assert_eq!(
            rdata(&ask("web-1.web.shop.default.skiff.", RecordType::AAAA)),
            vec!["fd00::7"]
        );
    }

    #[test]
    fn prepared_names_cover_services_ports_and_instances() {
        let n = names(&catalog(), &Zone::new("skiff", 0).unwrap());
        let s: Vec<String> = n.iter().map(|(n, t)| format!("{n} {t}")).collect();
        assert!(s.contains(&"web.shop.default.skiff. A".to_string()));
        assert!(s.contains(&"_http._tcp.web.shop.default.skiff. SRV".to_string()));
        assert!(s.contains(&"web-2.web.shop.default.skiff. A".to_string()));
        assert!(s.contains(&"db.shop.default.skiff. SRV".to_string()));
    }
}
