//! The CLI's face of [`crate::Client`]: the same typed calls, blocking, on a current-thread
//! runtime the client owns. A command runs once and exits, so there is no thread pool to
//! start: the runtime costs an epoll descriptor and a timer, built on the first request.
//! Its errors ([`Error`]) read as the CLI shows them.
//!
//! Several threads may call one client at once (`skiff logs` follows each instance on its own
//! thread): tokio lets concurrent `block_on`s share a current-thread runtime.
//!
//! # Example
//! ```no_run
//! let client = skiff_client::blocking::Client::new("http://127.0.0.1:7700")?;
//! for stack in client.stacks()? {
//!     println!("{}/{}: {:?}", stack.env, stack.stack, stack.current);
//! }
//! # Ok::<(), skiff_client::blocking::Error>(())
//! ```

use std::fmt;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use skiff_model::{Allocation, Event, Instance, InstanceId, Node, OverrideFile, Release, StackKey};
use tokio::runtime::Runtime;

use crate::ClientError;
use crate::wire::*;

/// Longest a request may take (a log stream may take as long as it runs).
pub const TIMEOUT: Duration = Duration::from_secs(30);

pub type Result<T> = std::result::Result<T, Error>;

/// A [`ClientError`] in the words a person at a terminal reads: the server's own message and
/// code, or that it cannot be reached and how to point the CLI at it.
#[derive(Debug)]
pub struct Error(Box<Failed>);

#[derive(Debug)]
struct Failed {
    base: String,
    error: ClientError,
}

impl Error {
    /// What went wrong, typed.
    pub fn client_error(&self) -> &ClientError {
        &self.0.error
    }

    /// The server's error code (`stack_not_found`…), if it answered with one.
    pub fn code(&self) -> Option<&str> {
        self.0.error.code()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = &self.0.base;
        match &self.0.error {
            ClientError::Transport { reason, .. } => write!(
                f,
                "cannot reach skiff at {base}: {reason} (is `skiff dev` running? set --addr or \
                 SKIFF_ADDR)"
            ),
            ClientError::Api { status, code, .. } if code == ClientError::NO_CODE => {
                write!(f, "skiff answered {status}")
            }
            ClientError::Api { code, message, .. } => write!(f, "{message} ({code})"),
            ClientError::Decode { reason, .. } => {
                write!(f, "unreadable answer from skiff at {base}: {reason}")
            }
            other => write!(f, "{other}"),
        }
    }
}

/// No `source()`: the message says it all, and `anyhow`'s `{:#}` would print it twice.
impl std::error::Error for Error {}

/// A blocking client of one server.
#[derive(Debug)]
pub struct Client {
    inner: crate::Client,
    runtime: OnceLock<std::result::Result<Runtime, String>>,
}

impl Client {
    /// `base` is the server's URL, `http://HOST:PORT`. Nothing is started until the first
    /// request.
    pub fn new(base: &str) -> Result<Client> {
        let inner = crate::Client::new(base)
            .map_err(|error| {
                Error(Box::new(Failed {
                    base: base.to_string(),
                    error,
                }))
            })?
            .with_timeout(TIMEOUT);
        Ok(Client {
            inner,
            runtime: OnceLock::new(),
        })
    }

    /// The server's address as given (without a trailing `/`).
    pub fn base(&self) -> &str {
        self.inner.base()
    }

    fn error(&self, error: ClientError) -> Error {
        Error(Box::new(Failed {
            base: self.inner.base().to_string(),
            error,
        }))
    }

    fn runtime(&self) -> Result<&Runtime> {
        let rt = self.runtime.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|e| e.to_string())
        });
        rt.as_ref()
            .map_err(|e| self.error(ClientError::Runtime(e.clone())))
    }

    fn run<T>(&self, call: impl Future<Output = crate::Result<T>>) -> Result<T> {
        self.runtime()?.block_on(call).map_err(|e| self.error(e))
    }

    pub fn envs(&self) -> Result<Vec<EnvView>> {
        self.run(self.inner.envs())
    }

    pub fn env(&self, env: &str) -> Result<Option<EnvView>> {
        self.run(self.inner.env(env))
    }

    pub fn create_env(&self, env: &str, new: &NewEnv) -> Result<EnvView> {
        self.run(self.inner.create_env(env, new))
    }

    pub fn change_values(&self, env: &str, change: &ValuesChange) -> Result<EnvView> {
        self.run(self.inner.change_values(env, change))
    }

    pub fn put_overrides(&self, env: &str, files: &[OverrideFile]) -> Result<EnvView> {
        self.run(self.inner.put_overrides(env, files))
    }

    pub fn down_env(&self, env: &str) -> Result<EnvView> {
        self.run(self.inner.down_env(env))
    }

    pub fn remove_env(&self, env: &str) -> Result<()> {
        self.run(self.inner.remove_env(env))
    }

    pub fn clone_env(&self, env: &str, req: &CloneEnv) -> Result<CloneResult> {
        self.run(self.inner.clone_env(env, req))
    }

    pub fn stacks(&self) -> Result<Vec<StackView>> {
        self.run(self.inner.stacks())
    }

    /// The release, and whether it is new (`false`: the current one, unchanged).
    pub fn create_release(
        &self,
        stack: &StackKey,
        release: &NewRelease,
    ) -> Result<(Release, bool)> {
        self.run(self.inner.create_release(stack, release))
    }

    pub fn preview_placement(
        &self,
        stack: &StackKey,
        release: &NewRelease,
    ) -> Result<PlacementPreview> {
        self.run(self.inner.preview_placement(stack, release))
    }

    pub fn release(&self, stack: &StackKey, number: u64) -> Result<Release> {
        self.run(self.inner.release(stack, number))
    }

    pub fn rollback(&self, stack: &StackKey, req: &RollbackRequest) -> Result<Release> {
        self.run(self.inner.rollback(stack, req))
    }

    pub fn steer_rollout(
        &self,
        stack: &StackKey,
        service: &str,
        action: &str,
    ) -> Result<RolloutView> {
        self.run(self.inner.steer_rollout(stack, service, action))
    }

    pub fn rollouts(&self, stack: &StackKey) -> Result<Vec<RolloutView>> {
        self.run(self.inner.rollouts(stack))
    }

    pub fn releases(&self, stack: &StackKey) -> Result<Vec<ReleaseSummary>> {
        self.run(self.inner.releases(stack))
    }

    pub fn down(&self, stack: &StackKey) -> Result<StackView> {
        self.run(self.inner.down(stack))
    }

    /// The release, and whether it is new.
    pub fn scale(&self, stack: &StackKey, req: &ScaleRequest) -> Result<(Release, bool)> {
        self.run(self.inner.scale(stack, req))
    }

    pub fn control_service(
        &self,
        stack: &StackKey,
        service: &str,
        action: ServiceAction,
    ) -> Result<ServiceControlView> {
        self.run(self.inner.control_service(stack, service, action))
    }

    pub fn service_status(&self, stack: &StackKey, service: &str) -> Result<ServiceStatus> {
        self.run(self.inner.service_status(stack, service))
    }

    pub fn instances(&self, filter: &StackFilter) -> Result<Vec<Instance>> {
        self.run(self.inner.instances(filter))
    }

    pub fn unplaced(&self, filter: &StackFilter) -> Result<Vec<UnplacedView>> {
        self.run(self.inner.unplaced(filter))
    }

    pub fn events(&self, query: &EventQuery) -> Result<Vec<Event>> {
        self.run(self.inner.events(query))
    }

    pub fn exec(&self, id: &InstanceId, cmd: &[String]) -> Result<Exec> {
        self.run(self.inner.exec(id, cmd))
    }

    pub fn signal(&self, id: &InstanceId, signal: &str) -> Result<()> {
        self.run(self.inner.signal(id, signal))
    }

    /// An instance's log lines as an iterator that blocks for each line as it arrives.
    pub fn logs(&self, id: &InstanceId, query: &LogQuery) -> Result<LogLines<'_>> {
        let lines = self.run(self.inner.logs(id, query))?;
        Ok(LogLines {
            client: self,
            lines,
        })
    }

    pub fn nodes(&self) -> Result<Vec<Node>> {
        self.run(self.inner.nodes())
    }

    /// A node by id or name.
    pub fn node(&self, node: &str) -> Result<Node> {
        self.run(self.inner.node(node))
    }

    pub fn drain_node(&self, node: &str) -> Result<Node> {
        self.run(self.inner.drain_node(node))
    }

    pub fn undrain_node(&self, node: &str) -> Result<Node> {
        self.run(self.inner.undrain_node(node))
    }

    pub fn label_node(&self, node: &str, change: &LabelChange) -> Result<Node> {
        self.run(self.inner.label_node(node, change))
    }

    pub fn all_allocations(&self) -> Result<Vec<Allocation>> {
        self.run(self.inner.all_allocations())
    }

    pub fn dns(&self, query: &DnsQuery) -> Result<DnsView> {
        self.run(self.inner.dns(query))
    }

    pub fn routes(&self, query: &RoutesQuery) -> Result<Vec<RouteInfo>> {
        self.run(self.inner.routes(query))
    }

    pub fn catalog(&self, stack: Option<&StackKey>) -> Result<CatalogView> {
        self.run(self.inner.catalog(stack))
    }
}

/// An instance's log lines ([`Client::logs`]); each `next` blocks until a line is whole.
pub struct LogLines<'a> {
    client: &'a Client,
    lines: crate::LogLines,
}

impl Iterator for LogLines<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        self.client.run(self.lines.next_line()).transpose()
    }
}

#[cfg(test)]
mod tests {
    use hyper::{Method, StatusCode};

    use super::*;

    fn error(e: ClientError) -> String {
        Error(Box::new(Failed {
            base: "http://127.0.0.1:7700".into(),
            error: e,
        }))
        .to_string()
    }

    #[test]
    fn errors_read_as_the_cli_shows_them() {
        let url = "http://127.0.0.1:7700/v1/stacks".to_string();
        assert_eq!(
            error(ClientError::Transport {
                method: Method::GET,
                url: url.clone(),
                reason: "tcp connect error: Connection refused (os error 111)".into(),
            }),
            "cannot reach skiff at http://127.0.0.1:7700: tcp connect error: Connection refused \
             (os error 111) (is `skiff dev` running? set --addr or SKIFF_ADDR)"
        );
        assert_eq!(
            error(crate::api_error(
                Method::GET,
                url.clone(),
                StatusCode::NOT_FOUND,
                br#"{"code":"stack_not_found","message":"no stack default/x"}"#,
            )),
            "no stack default/x (stack_not_found)"
        );
        assert_eq!(
            error(crate::api_error(
                Method::GET,
                url,
                StatusCode::BAD_GATEWAY,
                b"<html>bad gateway</html>",
            )),
            "skiff answered 502 Bad Gateway"
        );
    }

    #[test]
    fn a_bad_address_fails_at_once() {
        let e = Client::new("127.0.0.1:7700").unwrap_err();
        assert!(matches!(e.client_error(), ClientError::Address(_)), "{e}");
    }

    #[test]
    fn an_unreachable_server_is_a_transport_error_with_the_hint() {
        // A port nothing listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let e = client.stacks().unwrap_err();
        assert!(
            matches!(e.client_error(), ClientError::Transport { .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("is `skiff dev` running?"), "{e}");
        assert_eq!(e.code(), None);
    }
}
