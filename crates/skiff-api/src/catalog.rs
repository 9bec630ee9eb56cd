//! `GET /v1/catalog`: ready instances per service, as a blocking query (Consul-style: pass the
//! last `index` seen and how long to `wait`; the answer comes at the next change or at the
//! deadline). `GET /v1/dns`: what the DNS server answers for a name, without DNS.
//! `GET /v1/routes`: the ingress's live route table, or the route one host and path take.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::{ApiError, ApiQuery, ApiState};
use skiff_client::{
    CatalogQuery, CatalogService, CatalogView, DnsQuery, DnsView, RouteInfo, RoutesQuery,
};

/// Longest a blocking query may wait.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// `30s`, `500ms`, `2m`, or plain seconds.
fn parse_wait(s: &str) -> Option<Duration> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

/// A blocking query's `wait` parameter (`default` when absent), at most `max`.
pub(crate) fn wait_param(
    wait: Option<&str>,
    default: Duration,
    max: Duration,
) -> Result<Duration, ApiError> {
    let wait = match wait {
        Some(w) => parse_wait(w).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("wait: {w:?} is not a duration like 30s, 500ms or 2m"),
            )
        })?,
        None => default,
    };
    Ok(wait.min(max))
}

pub(crate) async fn list(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<CatalogQuery>,
) -> Result<Response, ApiError> {
    let wait = wait_param(q.wait.as_deref(), Duration::from_secs(60), MAX_WAIT)?;
    let (env, stack, service) = (q.env.as_deref(), q.stack.as_deref(), q.service.as_deref());
    let addressed = q.addressed.unwrap_or(false);
    let index_of = |snap: &skiff_catalog::Snapshot| {
        if addressed {
            snap.index_of_addressed()
        } else {
            snap.index_of(env, stack, service)
        }
    };
    let mut snap = s.catalog.snapshot();
    // An index beyond the catalog's own (the server restarted since) answers at once, so
    // the client starts over from the index it gets.
    if let Some(after) = q.index.filter(|i| *i <= snap.index) {
        // Wake on changes of what the query selects, not on every change of the catalog.
        let deadline = tokio::time::Instant::now() + wait;
        while index_of(&snap) <= after {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            snap = s.catalog.wait_past(snap.index, left).await;
        }
    }
    let view = CatalogView {
        index: index_of(&snap),
        services: snap
            .select(env, stack, service)
            .filter(|(_, e)| !addressed || (e.address.is_some() && !e.targets.is_empty()))
            .map(|(k, e)| CatalogService::from_entry(k, e))
            .collect(),
    };
    Ok(([("x-skiff-index", view.index.to_string())], Json(view)).into_response())
}

pub(crate) async fn dns(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<DnsQuery>,
) -> Result<Json<DnsView>, ApiError> {
    use hickory_proto::rr::{Name, RecordType};
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m);
    let mut name = Name::from_ascii(&q.name).map_err(|e| bad(format!("name: {e}")))?;
    name.set_fqdn(true);
    let qtype_text = q.qtype.as_deref().unwrap_or("A").to_ascii_uppercase();
    let qtype: RecordType = qtype_text
        .parse()
        .map_err(|_| bad(format!("type: {qtype_text:?} is not a DNS record type")))?;
    let answer = skiff_dns::lookup(&s.catalog.snapshot(), &s.zone, &name, qtype);
    let text = |rs: &[hickory_proto::rr::Record]| rs.iter().map(|r| r.to_string()).collect();
    Ok(Json(DnsView {
        name: name.to_string(),
        qtype: qtype.to_string(),
        rcode: match answer.rcode {
            hickory_proto::op::ResponseCode::NoError => "NOERROR".into(),
            hickory_proto::op::ResponseCode::NXDomain => "NXDOMAIN".into(),
            hickory_proto::op::ResponseCode::Refused => "REFUSED".into(),
            other => format!("{other:?}").to_uppercase(),
        },
        answers: text(&answer.answers),
        authorities: text(&answer.authorities),
        additionals: text(&answer.additionals),
    }))
}

pub(crate) async fn routes(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<RoutesQuery>,
) -> Result<Json<Vec<RouteInfo>>, ApiError> {
    let Some(routes) = &s.routes else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_ingress",
            "this server runs no ingress",
        ));
    };
    match (q.host, q.path) {
        (None, None) => Ok(Json(routes.list())),
        (None, Some(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "path: only with host",
        )),
        (Some(host), path) => {
            let path = path.unwrap_or_else(|| "/".into());
            match routes.find(&host, &path) {
                Some(route) => Ok(Json(vec![route])),
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "no_route",
                    format!("no route for host {host:?} and path {path:?}"),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_read_as_durations() {
        assert_eq!(parse_wait("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_wait("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_wait("15"), Some(Duration::from_secs(15)));
        assert_eq!(parse_wait("1h"), None);
        assert_eq!(parse_wait(""), None);
        assert_eq!(parse_wait("99999999999999999999m"), None);
    }
}
