//! The CLI's HTTP client for the skiff API (blocking; commands are short-lived).

use serde::Serialize;
use serde::de::DeserializeOwned;
use skiff_client::ErrorBody;

pub struct Client {
    base: String,
    http: ureq::Agent,
}

impl Client {
    pub fn new(addr: &str) -> Client {
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .new_agent();
        Client {
            base: addr.trim_end_matches('/').to_string(),
            http,
        }
    }

    /// The server's address as given.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot reach skiff at {}: {e} (is `skiff dev` running? set --addr or SKIFF_ADDR)",
            self.base
        )
    }

    fn read<T: DeserializeOwned>(
        &self,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<T> {
        Ok(self.read_status(resp)?.0)
    }

    /// The body and the success status it came with.
    fn read_status<T: DeserializeOwned>(
        &self,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<(T, u16)> {
        let mut resp = resp.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok((resp.body_mut().read_json::<T>()?, status.as_u16()));
        }
        match resp.body_mut().read_json::<ErrorBody>() {
            Ok(e) => anyhow::bail!("{} ({})", e.message, e.code),
            Err(_) => anyhow::bail!("skiff answered {status}"),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.read(self.http.get(self.url(path)).call())
    }

    /// A GET with query parameters (percent-encoded by ureq).
    pub fn get_query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> anyhow::Result<T> {
        let req = self
            .http
            .get(self.url(path))
            .query_pairs(query.iter().copied());
        self.read(req.call())
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.read(self.http.post(self.url(path)).send_json(body))
    }

    /// A POST that may create something: the answer, and whether it was created (201)
    /// rather than found as it was (200).
    pub fn post_created<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<(T, bool)> {
        let (t, status) = self.read_status(self.http.post(self.url(path)).send_json(body))?;
        Ok((t, status == 201))
    }

    /// A streaming GET: the body as a reader (for `logs -f`), with no overall timeout.
    pub fn stream(&self, path: &str) -> anyhow::Result<impl std::io::Read + use<>> {
        let mut resp = self
            .http
            .get(self.url(path))
            .config()
            .timeout_global(None)
            .build()
            .call()
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            match resp.body_mut().read_json::<ErrorBody>() {
                Ok(e) => anyhow::bail!("{} ({})", e.message, e.code),
                Err(_) => anyhow::bail!("skiff answered {}", resp.status()),
            }
        }
        Ok(resp.into_body().into_reader())
    }

    /// A POST whose answer has no body (204).
    pub fn post_empty<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<()> {
        let mut resp = self
            .http
            .post(self.url(path))
            .send_json(body)
            .map_err(|e| self.unreachable(e))?;
        if resp.status().is_success() {
            return Ok(());
        }
        match resp.body_mut().read_json::<ErrorBody>() {
            Ok(e) => anyhow::bail!("{} ({})", e.message, e.code),
            Err(_) => anyhow::bail!("skiff answered {}", resp.status()),
        }
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.read(self.http.delete(self.url(path)).call())
    }
}
