//! Compose's short syntaxes for ports and volumes, read into the long forms.

use super::{BindOptions, Port, ServiceVolume, VolumeKind, VolumeOptions};
use crate::de::Extensions;

/// A port number or an inclusive range `a-b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PortRange {
    start: u16,
    end: u16,
}

impl PortRange {
    fn parse(s: &str, what: &str) -> Result<Self, String> {
        let one = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
                Ok(n) => Err(format!("{what} port {n} is out of range 1-65535")),
                Err(_) => Err(format!("{what} port {p:?} is not a number")),
            }
        };
        match s.split_once('-') {
            Some((a, b)) => {
                let (start, end) = (one(a)?, one(b)?);
                if start > end {
                    return Err(format!("{what} port range {s:?} ends before it starts"));
                }
                Ok(PortRange { start, end })
            }
            None => {
                let p = one(s)?;
                Ok(PortRange { start: p, end: p })
            }
        }
    }

    fn len(&self) -> u32 {
        u32::from(self.end - self.start) + 1
    }

    fn text(&self) -> String {
        if self.start == self.end {
            self.start.to_string()
        } else {
            format!("{}-{}", self.start, self.end)
        }
    }
}

/// A compose short syntax (`"8080:80/tcp"`, `"data:/var/lib:ro"`) that does not read, with
/// the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(pub String);

/// Reads `[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]` (IPv6 host addresses in brackets) into one
/// long-syntax entry per target port.
pub fn parse_port(spec: &str) -> Result<Vec<Port>, SyntaxError> {
    short_port(spec).map_err(SyntaxError)
}

fn short_port(spec: &str) -> Result<Vec<Port>, String> {
    let context = |e: String| format!("invalid port {spec:?}: {e}");
    let (addr, protocol) = match spec.rsplit_once('/') {
        Some((a, p)) => (a, p.to_string()),
        None => (spec, "tcp".to_string()),
    };
    check_protocol(&protocol).map_err(context)?;
    let (host_ip, rest) = if let Some(after) = addr.strip_prefix('[') {
        let (ip, rest) = after
            .split_once(']')
            .ok_or_else(|| context("unclosed [ in host address".into()))?;
        let rest = rest
            .strip_prefix(':')
            .ok_or_else(|| context("expected : after the host address".into()))?;
        (Some(ip.to_string()), rest)
    } else {
        (None, addr)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, published, target): (Option<String>, Option<&str>, &str) =
        match (host_ip, parts.as_slice()) {
            (None, [t]) => (None, None, t),
            (None, [p, t]) => (None, non_empty(p), t),
            (None, [ip, p, t]) => (Some(ip.to_string()), non_empty(p), t),
            (Some(ip), [t]) => (Some(ip), None, t),
            (Some(ip), [p, t]) => (Some(ip), non_empty(p), t),
            _ => {
                return Err(context(
                    "expected [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]".into(),
                ));
            }
        };
    if let Some(ip) = &host_ip
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        return Err(context(format!("host address {ip:?} is not an IP address")));
    }
    let target = PortRange::parse(target, "target").map_err(context)?;
    let published = published
        .map(|p| PortRange::parse(p, "published"))
        .transpose()
        .map_err(context)?;
    let entry = |target: u16, published: Option<String>| Port {
        name: None,
        target,
        published,
        host_ip: host_ip.clone(),
        protocol: protocol.clone(),
        mode: "ingress".into(),
        app_protocol: None,
        x: Extensions::default(),
    };
    match published {
        Some(p) if target.len() > 1 && p.len() != target.len() && p.len() > 1 => {
            Err(context(format!(
                "published range has {} ports but target range has {}",
                p.len(),
                target.len()
            )))
        }
        Some(p) if target.len() > 1 && p.len() == 1 => Err(context(
            "a target range needs a published range of the same size".into(),
        )),
        Some(p) if target.len() > 1 => Ok((0..target.len())
            .map(|i| {
                entry(
                    target.start + i as u16,
                    Some((u32::from(p.start) + i).to_string()),
                )
            })
            .collect()),
        Some(p) => Ok(vec![entry(target.start, Some(p.text()))]),
        None => Ok((target.start..=target.end)
            .map(|t| entry(t, None))
            .collect()),
    }
}

fn non_empty(s: &str) -> Option<&str> {
    if s.is_empty() { None } else { Some(s) }
}

fn check_protocol(p: &str) -> Result<(), String> {
    match p {
        "tcp" | "udp" | "sctp" => Ok(()),
        other => Err(format!("protocol must be tcp, udp or sctp, got {other:?}")),
    }
}

/// Checks a long-syntax port.
pub(super) fn check_port(p: &Port) -> Result<(), String> {
    if p.target == 0 {
        return Err("target port must be between 1 and 65535".into());
    }
    check_protocol(&p.protocol)?;
    if p.mode != "host" && p.mode != "ingress" {
        return Err(format!("mode must be host or ingress, got {:?}", p.mode));
    }
    if let Some(published) = &p.published {
        PortRange::parse(published, "published")?;
    }
    Ok(())
}

/// Reads `[SOURCE:]TARGET[:MODE]` into a long-syntax mount. A source that starts with `.`, `/`
/// or `~` is a host path (bind mount); any other source names a volume.
pub fn parse_volume(spec: &str) -> Result<ServiceVolume, SyntaxError> {
    short_volume(spec).map_err(SyntaxError)
}

fn short_volume(spec: &str) -> Result<ServiceVolume, String> {
    let context = |e: &str| format!("invalid volume {spec:?}: {e}");
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [t] => (None, *t, None),
        [s, t] => (Some(*s), *t, None),
        [s, t, m] => (Some(*s), *t, Some(*m)),
        _ => return Err(context("expected [SOURCE:]TARGET[:MODE]")),
    };
    if source == Some("") {
        return Err(context("the source is empty"));
    }
    if !target.starts_with('/') {
        return Err(context(
            "the target must be an absolute path in the container",
        ));
    }
    let is_path = |s: &str| s.starts_with('.') || s.starts_with('/') || s.starts_with('~');
    let kind = match source {
        Some(s) if is_path(s) => VolumeKind::Bind,
        _ => VolumeKind::Volume,
    };
    let mut v = ServiceVolume {
        kind,
        source: source.map(str::to_string),
        target: target.to_string(),
        ..ServiceVolume::default()
    };
    if kind == VolumeKind::Bind {
        v.bind = Some(BindOptions {
            create_host_path: Some(true),
            ..BindOptions::default()
        });
    }
    for opt in mode.into_iter().flat_map(|m| m.split(',')) {
        match opt {
            "ro" => v.read_only = true,
            "rw" => v.read_only = false,
            "z" | "Z" => bind_opts(&mut v, &context)?.selinux = Some(opt.to_string()),
            "shared" | "slave" | "private" | "rshared" | "rslave" | "rprivate" => {
                bind_opts(&mut v, &context)?.propagation = Some(opt.to_string())
            }
            "nocopy" => {
                if kind != VolumeKind::Volume {
                    return Err(context("nocopy applies to named volumes only"));
                }
                v.volume.get_or_insert_with(VolumeOptions::default).nocopy = Some(true);
            }
            "consistent" | "cached" | "delegated" => v.consistency = Some(opt.to_string()),
            other => return Err(context(&format!("unknown mode {other:?}"))),
        }
    }
    Ok(v)
}

fn bind_opts<'a>(
    v: &'a mut ServiceVolume,
    context: &dyn Fn(&str) -> String,
) -> Result<&'a mut BindOptions, String> {
    if v.kind != VolumeKind::Bind {
        return Err(context(
            "this mode applies to bind mounts (host paths) only",
        ));
    }
    Ok(v.bind.get_or_insert_with(BindOptions::default))
}

/// Checks a long-syntax mount.
pub(super) fn check_volume(v: &ServiceVolume) -> Result<(), String> {
    if v.target.is_empty() {
        return Err("missing required field \"target\"".into());
    }
    match v.kind {
        VolumeKind::Bind | VolumeKind::Npipe | VolumeKind::Image
            if v.source.as_deref().unwrap_or("").is_empty() =>
        {
            Err(format!(
                "a {:?} mount needs a source",
                format!("{:?}", v.kind).to_lowercase()
            ))
        }
        VolumeKind::Tmpfs if v.source.is_some() => Err("a tmpfs mount takes no source".into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<(Option<String>, Option<String>, u16, String)> {
        parse_port(s)
            .unwrap()
            .into_iter()
            .map(|p| (p.host_ip, p.published, p.target, p.protocol))
            .collect()
    }

    #[test]
    fn short_ports_read_every_documented_form() {
        assert_eq!(p("80"), vec![(None, None, 80, "tcp".into())]);
        assert_eq!(
            p("8080:80"),
            vec![(None, Some("8080".into()), 80, "tcp".into())]
        );
        assert_eq!(
            p("127.0.0.1:8080:80/udp"),
            vec![(
                Some("127.0.0.1".into()),
                Some("8080".into()),
                80,
                "udp".into()
            )]
        );
        assert_eq!(
            p("127.0.0.1::80"),
            vec![(Some("127.0.0.1".into()), None, 80, "tcp".into())]
        );
        assert_eq!(
            p("[::1]:6000:6000"),
            vec![(Some("::1".into()), Some("6000".into()), 6000, "tcp".into())]
        );
        assert_eq!(p("3000-3002").len(), 3);
        assert_eq!(
            p("9090-9091:8080"),
            vec![(None, Some("9090-9091".into()), 8080, "tcp".into())]
        );
        let pairs = p("8000-8001:9000-9001");
        assert_eq!(pairs[1], (None, Some("8001".into()), 9001, "tcp".into()));
    }

    #[test]
    fn bad_short_ports_say_what_is_wrong() {
        for (spec, needle) in [
            ("http", "not a number"),
            ("70000:80", "out of range"),
            ("80/icmp", "protocol"),
            ("8000-8002:9000-9001", "3 ports but target range has 2"),
            ("1.2.3:80:80", "not an IP address"),
            ("5-1", "ends before it starts"),
        ] {
            let e = parse_port(spec).unwrap_err().0;
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn short_volumes_tell_bind_from_named() {
        let v = parse_volume("./init:/docker-entrypoint-initdb.d:ro").unwrap();
        assert_eq!(v.kind, VolumeKind::Bind);
        assert!(v.read_only);
        assert_eq!(v.bind.unwrap().create_host_path, Some(true));
        let v = parse_volume("db-data:/var/lib/mysql:nocopy").unwrap();
        assert_eq!(v.kind, VolumeKind::Volume);
        assert_eq!(v.volume.unwrap().nocopy, Some(true));
        let v = parse_volume("/cache").unwrap();
        assert_eq!((v.kind, v.source), (VolumeKind::Volume, None));
    }

    #[test]
    fn bad_short_volumes_say_what_is_wrong() {
        for (spec, needle) in [
            ("data:relative", "absolute path"),
            ("data:/x:bogus", "unknown mode"),
            ("data:/x:z", "bind mounts"),
            ("a:b:c:d", "expected"),
            (":/x", "source is empty"),
        ] {
            let e = parse_volume(spec).unwrap_err().0;
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }
}
