//! `skiff-demo`: the workload of skiff's examples, tests and benchmarks.
//!
//! An HTTP service whose behaviour can be steered: health that can be told to fail, slow
//! start, added latency, crash and memory-hog endpoints, graceful or stubborn shutdown. Its
//! `probe` subcommand is a health check command (`CMD skiff-demo probe /health`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(name = "skiff-demo", about = "A demo HTTP service for skiff", version)]
struct Cli {
    /// Service name shown in responses (default: $SKIFF_SERVICE or "demo").
    #[arg(long, env = "SKIFF_SERVICE", default_value = "demo")]
    name: String,
    /// Version shown in responses.
    #[arg(long = "app-version", env = "DEMO_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    app_version: String,
    /// Address to listen on (0.0.0.0 in a container image; default: $SKIFF_HOST, the node
    /// address skiff gives processes, else 127.0.0.1).
    #[arg(long, env = "DEMO_HOST")]
    host: Option<String>,
    /// Port (default: $PORT, else 8080; 0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Wait this long before listening (slow start), e.g. 500ms.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    start_delay: Duration,
    /// Added to every request on /, e.g. 20ms.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    latency: Duration,
    /// Percent of requests on / answered 500 (a bad release, for canary analysis).
    #[arg(long, env = "DEMO_ERROR_RATE", default_value_t = 0)]
    error_rate: u64,
    /// Start with /health failing.
    #[arg(long)]
    fail_health: bool,
    /// Keep running on SIGTERM (to exercise SIGKILL after the grace period).
    #[arg(long)]
    ignore_sigterm: bool,
    /// A file served at GET /config, read again on SIGHUP.
    #[arg(long, env = "DEMO_CONFIG", conflicts_with = "config_from")]
    config: Option<std::path::PathBuf>,
    /// The environment variable holding the path of the file served at GET /config (e.g.
    /// SKIFF_CONFIG_APP, which skiff sets for a compose config named app).
    #[arg(long, value_name = "VAR")]
    config_from: Option<String>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Subcommand)]
enum Sub {
    /// GET a URL (or a path on $SKIFF_HOST:$PORT, else 127.0.0.1:$PORT); exit 0 on 2xx/3xx,
    /// 1 otherwise.
    Probe {
        target: String,
        /// Variable holding the port when TARGET is a path.
        #[arg(long, default_value = "PORT")]
        port_env: String,
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        timeout: Duration,
    },
}

/// `250ms`, `2s`, `1m`, or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| Duration::from_secs_f64(v * mult))
        .ok_or_else(|| format!("expected a duration such as 500ms or 2s, got {s:?}"))
}

struct App {
    name: String,
    version: String,
    instance: String,
    latency: Duration,
    healthy: AtomicBool,
    hog: std::sync::Mutex<Vec<Vec<u8>>>,
    error_rate: u64,
    served: std::sync::atomic::AtomicU64,
    /// The file served at /config and its content as last read (at start, on SIGHUP).
    config: Option<std::path::PathBuf>,
    config_text: std::sync::RwLock<String>,
}

impl App {
    /// Reads the config file again; a file that cannot be read keeps the last content.
    fn read_config(&self) {
        let Some(path) = &self.config else { return };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                *self.config_text.write().unwrap_or_else(|p| p.into_inner()) = text;
                println!("config {} read", path.display());
            }
            Err(e) => eprintln!("skiff-demo: reading {}: {e}", path.display()),
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.command {
        Some(Sub::Probe {
            ref target,
            ref port_env,
            timeout,
        }) => rt.block_on(probe(target, port_env, timeout)),
        None => rt.block_on(serve(cli)),
    }
}

async fn serve(cli: Cli) -> std::process::ExitCode {
    tokio::time::sleep(cli.start_delay).await;
    let app = Arc::new(App {
        name: cli.name.clone(),
        version: cli.app_version.clone(),
        instance: std::env::var("SKIFF_INSTANCE").unwrap_or_default(),
        latency: cli.latency,
        healthy: AtomicBool::new(!cli.fail_health),
        hog: Default::default(),
        error_rate: cli.error_rate.min(100),
        served: Default::default(),
        config: match (&cli.config, &cli.config_from) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(var)) => match std::env::var_os(var) {
                Some(p) => Some(p.into()),
                None => {
                    eprintln!("skiff-demo: --config-from {var}: the variable is not set");
                    return std::process::ExitCode::from(2);
                }
            },
            (None, None) => None,
        },
        config_text: Default::default(),
    });
    app.read_config();
    let router = Router::new()
        .route("/", get(root))
        .route("/version", get(version))
        .route("/health", get(health))
        .route("/health/fail", post(|s| set_health(s, false)))
        .route("/health/ok", post(|s| set_health(s, true)))
        .route("/env", get(env))
        .route("/echo", get(echo_headers).post(echo_body))
        .route("/upgrade", get(upgrade))
        .route("/crash", get(crash))
        .route("/alloc", get(alloc))
        .route("/config", get(config))
        .with_state(app.clone());
    let host = listen_host(cli.host.as_deref());
    let listener = match tokio::net::TcpListener::bind((host.as_str(), cli.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skiff-demo: cannot listen on {}:{}: {e}", host, cli.port);
            return std::process::ExitCode::from(2);
        }
    };
    // Handlers first, then the announcement: a signal sent right after "listening on" must
    // find them installed.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let addr: SocketAddr = listener.local_addr().expect("bound address");
    println!("{} {} listening on {addr}", cli.name, cli.app_version);
    let ignore_term = cli.ignore_sigterm;
    let shutdown = async move {
        loop {
            tokio::select! {
                _ = term.recv() => if ignore_term { println!("ignoring SIGTERM") } else { break },
                _ = int.recv() => break,
                _ = hup.recv() => {
                    app.read_config();
                    println!("reloaded");
                }
            }
        }
        println!("shutting down");
    };
    match axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-demo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

type Shared = State<Arc<App>>;

async fn root(
    State(app): Shared,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> (axum::http::StatusCode, String) {
    let delay = q
        .get("latency")
        .and_then(|l| parse_duration(l).ok())
        .unwrap_or(app.latency);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let n = app.served.fetch_add(1, Ordering::Relaxed);
    let status = if n % 100 < app.error_rate {
        axum::http::StatusCode::INTERNAL_SERVER_ERROR
    } else {
        axum::http::StatusCode::OK
    };
    (
        status,
        format!("{} {} instance={}\n", app.name, app.version, app.instance),
    )
}

async fn version(State(app): Shared) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "name": app.name, "version": app.version, "instance": app.instance, "pid": std::process::id(),
    }))
}

async fn health(State(app): Shared) -> impl IntoResponse {
    if app.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
    }
}

async fn set_health(State(app): Shared, ok: bool) -> &'static str {
    app.healthy.store(ok, Ordering::Relaxed);
    if ok { "healthy\n" } else { "failing\n" }
}

async fn env() -> Json<std::collections::BTreeMap<String, String>> {
    Json(std::env::vars().collect())
}

async fn echo_headers(headers: HeaderMap) -> Json<std::collections::BTreeMap<String, String>> {
    Json(
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("<binary>").to_string()))
            .collect(),
    )
}

async fn echo_body(body: String) -> String {
    body
}

/// `Upgrade: echo`: switches protocols, then sends back every byte it receives (the way a
/// websocket or any upgraded connection goes through a proxy).
async fn upgrade(mut req: axum::extract::Request) -> axum::response::Response {
    let wants_echo = req
        .headers()
        .get(axum::http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"echo"));
    if !wants_echo {
        return (StatusCode::UPGRADE_REQUIRED, "send Upgrade: echo\n").into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let (mut r, mut w) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    axum::response::Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::UPGRADE, "echo")
        .header(axum::http::header::CONNECTION, "upgrade")
        .body(axum::body::Body::empty())
        .expect("a valid response")
}

/// The config file's content as last read (404 without `--config`).
async fn config(State(app): Shared) -> impl IntoResponse {
    if app.config.is_none() {
        return (StatusCode::NOT_FOUND, "no --config given\n".to_string());
    }
    let text = app
        .config_text
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    (StatusCode::OK, text)
}

async fn crash() -> &'static str {
    println!("crashing on request");
    std::process::exit(3)
}

async fn alloc(
    State(app): Shared,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> String {
    let mb: usize = q.get("mb").and_then(|m| m.parse().ok()).unwrap_or(1);
    let mut held = app.hog.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..mb {
        held.push(vec![1u8; 1 << 20]);
    }
    format!("holding {} MiB\n", held.len())
}

/// Where the demo listens: `--host`/`DEMO_HOST`, else `SKIFF_HOST` (the node address skiff
/// gives processes), else loopback.
fn listen_host(given: Option<&str>) -> String {
    given.map_or_else(
        || std::env::var("SKIFF_HOST").unwrap_or_else(|_| "127.0.0.1".to_string()),
        str::to_string,
    )
}

/// A minimal HTTP/1.1 GET, so the probe needs no client library.
async fn probe(target: &str, port_env: &str, timeout: Duration) -> std::process::ExitCode {
    let url = if target.starts_with('/') {
        match std::env::var(port_env) {
            Ok(p) => format!("http://{}:{p}{target}", listen_host(None)),
            Err(_) => {
                eprintln!("probe: ${port_env} is not set");
                return std::process::ExitCode::FAILURE;
            }
        }
    } else {
        target.to_string()
    };
    let Some(rest) = url.strip_prefix("http://") else {
        eprintln!("probe: only http:// URLs are supported, got {url}");
        return std::process::ExitCode::FAILURE;
    };
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(host).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(buf)) => {
            let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
            let code: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if (200..400).contains(&code) {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("probe: {url} answered {code}");
                std::process::ExitCode::FAILURE
            }
        }
        Ok(Err(e)) => {
            eprintln!("probe: {url}: {e}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("probe: {url}: no answer within {timeout:?}");
            std::process::ExitCode::FAILURE
        }
    }
}
