//! `skiff routes [HOST[/PATH]]`: the ingress's live route table — every host and path prefix
//! with the instances behind it — or the route one request would take.

use std::process::ExitCode;

use skiff_client::blocking::Client;
use skiff_client::{RouteInfo, RoutesQuery};

use crate::output::{self, OutputArg};

#[derive(clap::Args)]
pub struct Args {
    /// Only the route a request for this host and path takes, e.g.
    /// `web.shop.default.localhost/api/orders` (a scheme and port are ignored).
    request: Option<String>,
    #[command(flatten)]
    output: OutputArg,
}

pub fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    let query = match &args.request {
        None => RoutesQuery::default(),
        Some(request) => {
            let (host, path) = split_request(request);
            RoutesQuery {
                host: Some(host.to_string()),
                path: Some(path.to_string()),
            }
        }
    };
    let routes = client.routes(&query)?;
    output::print(args.output.format, &routes, || {
        let rows = routes.iter().map(row).collect();
        output::print_table(&["HOST", "PATH", "SERVICE", "PORT", "BACKENDS"], rows);
    })?;
    Ok(ExitCode::SUCCESS)
}

fn row(r: &RouteInfo) -> Vec<String> {
    let path = if r.strip_prefix {
        format!("{} (stripped)", r.path)
    } else {
        r.path.clone()
    };
    let backends = if r.backends.is_empty() {
        "none ready (503)".to_string()
    } else {
        r.backends
            .iter()
            .map(|b| {
                let mut s = format!("{}-{} {}", r.service, b.instance, b.addr);
                if b.in_flight > 0 {
                    s.push_str(&format!(" ({} in flight)", b.in_flight));
                }
                if b.ejected {
                    s.push_str(" (ejected)");
                }
                s
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        r.host.clone(),
        path,
        format!("{}/{}/{}", r.env, r.stack, r.service),
        r.port.clone(),
        backends,
    ]
}

/// `http://Host:port/path?q` → (`Host:port`, `/path?q`); the path defaults to `/`.
fn split_request(request: &str) -> (&str, &str) {
    let rest = request
        .strip_prefix("http://")
        .or_else(|| request.strip_prefix("https://"))
        .unwrap_or(request);
    match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_splits_into_host_and_path() {
        assert_eq!(split_request("web.localhost"), ("web.localhost", "/"));
        assert_eq!(
            split_request("http://web.localhost:7780/api?x=1"),
            ("web.localhost:7780", "/api?x=1")
        );
    }
}
