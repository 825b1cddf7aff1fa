//! Sending requests: authentication on demand, redirects followed here
//! (checked, credentials only to the registry's own origin), retries with
//! backoff and `Retry-After` (never past the task's deadline), bounded
//! reads, errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, AUTHORIZATION, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use tokio::time::Instant;
use url::{Host, Url};

use super::super::auth::Challenge;
use super::super::chunks::BoxError;
use super::super::pace;
use super::super::retry::{is_retryable, may_send_again, parse_retry_after};
use super::authorize::same_origin;
use super::error::{is_certificate, oci_errors, redact};
use super::{header_str, RegistryClient, RegistryError};

mod redirects;

/// An error body is read this far and no further (a hostile or broken
/// registry must not hold a worker's memory; token answers and listing
/// pages have their own bounds, refused past them).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// What [`RegistryClient::request_timeout`](super::ClientOptions::request_timeout)
/// bounds in a request with a re-sendable body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bound {
    /// The whole exchange, answer and body: a manifest, a HEAD, a listing.
    Whole,
    /// The wait for the answer only: a blob's body takes as long as its
    /// size needs, and its pace is the copy's to judge ([`pace::Paced`]).
    Answer,
}

/// An `Authorization` value and the one origin it may go to: the redirects
/// of a request are followed here, hop by hop, and a hop elsewhere goes
/// without it (reqwest, which would strip it on its own, never follows).
pub(super) struct Credential<'a> {
    pub(super) origin: &'a Url,
    pub(super) value: &'a str,
}

/// How one exchange (a request and its redirects) ended.
pub(super) enum Exchange {
    /// The last hop's answer, and whether the credential went with it.
    Answer { response: Response, credential_sent: bool },
    /// The connection or the request failed.
    Failed(reqwest::Error),
    /// No answer within the request timeout (see [`Bound`]).
    NoAnswer,
}

/// The request a hop sends.
pub(super) struct Outgoing<'a> {
    pub(super) method: Method,
    pub(super) url: Url,
    pub(super) headers: HeaderMap,
    pub(super) body: Option<&'a Bytes>,
    pub(super) bound: Bound,
}

impl RegistryClient {
    /// Sends a request whose body can be re-sent, with authentication and
    /// retries, bounded as a whole. Returns any final response (404
    /// included) for the caller to interpret.
    pub(super) async fn execute(
        &self,
        method: Method,
        url: Url,
        scope: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response, RegistryError> {
        self.execute_bounded(method, url, scope, headers, body, Bound::Whole).await
    }

    /// [`execute`](Self::execute), with `bound` saying what the request
    /// timeout covers.
    pub(super) async fn execute_bounded(
        &self,
        method: Method,
        url: Url,
        scope: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
        bound: Bound,
    ) -> Result<Response, RegistryError> {
        let mut retry = 0;
        let mut reauthenticated = false;
        loop {
            let first = self.first_exchange().await;
            let authorization = if self.same_origin(&url) { self.authorization(scope).await? } else { None };
            let credential = authorization.as_deref().map(|value| Credential { origin: &self.base, value });
            let outgoing = Outgoing {
                method: method.clone(),
                url: url.clone(),
                headers: headers.clone(),
                body: body.as_ref(),
                bound,
            };
            let exchanged = self.exchange(outgoing, credential, Some(&self.requests)).await;
            if first.is_some() {
                self.exchanged.store(true, std::sync::atomic::Ordering::Release);
            }
            let outcome = match exchanged? {
                Exchange::Answer { response, credential_sent } => {
                    Ok((response, authorization.filter(|_| credential_sent)))
                }
                Exchange::Failed(e) if is_certificate(&e) => return Err(self.transport(&method, url.path(), &e)),
                Exchange::Failed(e) => Err(self.transport(&method, url.path(), &e)),
                Exchange::NoAnswer => Err(self.no_answer(&method, url.path())),
            };
            retry += 1;
            let (resp, sent) = match outcome {
                Ok(answered) => answered,
                Err(e) if pace::wait_fits(self.retry.delay(retry, None)) && may_send_again(&self.retry, retry) => {
                    drop(first);
                    tracing::warn!(registry = %self.name, %method, path = url.path(), error = %e, retry, "request failed, retrying");
                    tokio::time::sleep(self.retry.delay(retry, None)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED
                && !reauthenticated
                && self.learn_challenge(&resp, scope, sent.as_deref())
            {
                reauthenticated = true;
                retry -= 1;
                continue;
            }
            // The challenge, if any, is learnt: the requests waiting for the
            // first answer go on.
            drop(first);
            if is_retryable(status) && retry < self.retry.attempts {
                let after =
                    header_str(resp.headers(), RETRY_AFTER).and_then(|v| parse_retry_after(v, SystemTime::now()));
                let wait = self.retry.delay(retry, after);
                // A wait past the task's deadline is not taken: the answer
                // goes back, and its Retry-After to the message's backoff.
                // Nor is a send past the blob's budget.
                if !pace::wait_fits(wait) || !may_send_again(&self.retry, retry) {
                    return Ok(resp);
                }
                tracing::warn!(registry = %self.name, %method, path = url.path(), status = status.as_u16(), wait_ms = wait.as_millis() as u64, retry, "registry asked to retry");
                tokio::time::sleep(wait).await;
                continue;
            }
            return Ok(resp);
        }
    }

    /// The client's first request waits for nothing; the others that come
    /// before its answer wait for it (one 401 teaches the challenge, not
    /// one per request in flight). Held until that answer: `Some` for the
    /// first.
    async fn first_exchange(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        use std::sync::atomic::Ordering;
        if self.exchanged.load(Ordering::Acquire) {
            return None;
        }
        let gate = self.first_exchange.lock().await;
        (!self.exchanged.load(Ordering::Acquire)).then_some(gate)
    }

    /// Sends `outgoing`, following its redirects by hand: each hop is
    /// checked first ([`redirects::check`]: never from https to http, never
    /// to a loopback or link-local address the configuration does not name)
    /// and `credential` goes only to hops on its origin. One request timeout
    /// covers the whole chain. Each hop is counted in `count` when given
    /// (token requests are not counted).
    pub(super) async fn exchange(
        &self,
        outgoing: Outgoing<'_>,
        credential: Option<Credential<'_>>,
        count: Option<&AtomicU64>,
    ) -> Result<Exchange, RegistryError> {
        let Outgoing { mut method, mut url, mut headers, mut body, bound } = outgoing;
        let until = Instant::now() + self.request_timeout;
        let start = url.clone();
        let named: Vec<Host<&str>> =
            std::iter::once(&self.base).chain(&self.token_realms).chain([&start]).filter_map(Url::host).collect();
        let mut hops = 0;
        loop {
            let mut req = self.http.request(method.clone(), url.clone()).headers(headers.clone());
            if bound == Bound::Whole {
                req = req.timeout(until.saturating_duration_since(Instant::now()));
            }
            if let Some(b) = body {
                req = req.body(b.clone());
            }
            let credential_sent = credential.as_ref().is_some_and(|c| same_origin(c.origin, &url));
            if let (true, Some(c)) = (credential_sent, &credential) {
                req = req.header(AUTHORIZATION, c.value);
            }
            if let Some(count) = count {
                count.fetch_add(1, Ordering::Relaxed);
            }
            let response = match tokio::time::timeout_at(until, req.send()).await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => return Ok(Exchange::Failed(e)),
                Err(_) => return Ok(Exchange::NoAnswer),
            };
            let status = response.status();
            let location = header_str(response.headers(), LOCATION);
            let (true, Some(location)) = (redirects::is_redirect(status), location) else {
                return Ok(Exchange::Answer { response, credential_sent });
            };
            let refused = |reason: String| RegistryError::Redirect {
                registry: self.name.clone(),
                path: start.path().to_owned(),
                reason,
            };
            if hops == redirects::MAX_REDIRECTS {
                return Err(refused(format!("after {} redirects", redirects::MAX_REDIRECTS)));
            }
            hops += 1;
            let mut next = url.join(location).map_err(|e| refused(format!("to a bad Location ({e})")))?;
            next.set_fragment(None);
            redirects::check(&url, &next, &named).await.map_err(|e| refused(e.to_string()))?;
            let keeps_body;
            (method, keeps_body) = redirects::next_request(status, &method, &mut headers);
            if !keeps_body {
                body = None;
            }
            url = next;
        }
    }

    /// Sends a one-shot (streaming) body of `len` bytes once,
    /// authenticated. The caller retries the whole operation, re-opening
    /// its source stream. A redirect is not followed (the body cannot be
    /// sent twice): it is the answer. No fixed bound covers the request (a large blob
    /// takes as long as it takes): it is given up when the registry stops
    /// asking for the body's bytes for a throughput window, or does not
    /// answer in time after the last one ([`pace::watched`]).
    pub(super) async fn send_once(
        &self,
        method: Method,
        url: Url,
        scope: &str,
        headers: HeaderMap,
        body: BoxStream<'static, Result<Bytes, BoxError>>,
        len: u64,
    ) -> Result<Response, RegistryError> {
        let (body, watch) = pace::watched(body, len, self.min_throughput, self.request_timeout);
        let req =
            self.http.request(method.clone(), url.clone()).headers(headers).body(reqwest::Body::wrap_stream(body));
        let (req, sent) = self.authorized(req, &url, scope).await?;
        let resp = tokio::select! {
            resp = req.send() => resp.map_err(|e| self.transport(&method, url.path(), &e))?,
            stopped = watch => return Err(self.stopped(&method, url.path(), stopped)),
        };
        let bearer = header_str(resp.headers(), WWW_AUTHENTICATE).and_then(Challenge::parse);
        if resp.status() == StatusCode::UNAUTHORIZED && matches!(bearer, Some(Challenge::Bearer { .. })) {
            // A token that expired mid-copy (possibly renewed meanwhile by a
            // concurrent request): forget it, so the retry gets a fresh one.
            self.learn_challenge(&resp, scope, sent.as_deref());
            return Err(RegistryError::Reauthenticate { registry: self.name.clone(), path: url.path().to_owned() });
        }
        Ok(resp)
    }

    /// `req` with this registry's credentials for `scope` when it goes to
    /// the registry's own origin, counted as one request; the
    /// `Authorization` value sent, for a 401's challenge.
    async fn authorized(
        &self,
        mut req: reqwest::RequestBuilder,
        url: &Url,
        scope: &str,
    ) -> Result<(reqwest::RequestBuilder, Option<String>), RegistryError> {
        let mut sent = None;
        if self.same_origin(url) {
            sent = self.authorization(scope).await?;
            if let Some(auth) = &sent {
                req = req.header(AUTHORIZATION, auth);
            }
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok((req, sent))
    }

    pub(super) async fn expect(&self, resp: Response, ok: &[StatusCode]) -> Result<Response, RegistryError> {
        let status = resp.status();
        if ok.contains(&status) {
            return Ok(resp);
        }
        let path = resp.url().path().to_owned();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(RegistryError::Denied { registry: self.name.clone(), path, status });
        }
        let retry_after = header_str(resp.headers(), RETRY_AFTER).and_then(|v| parse_retry_after(v, SystemTime::now()));
        // The registry's error code tells an operator most; keep it short,
        // and read no more than that of a body that may never end.
        let text = self.read_prefix(resp, MAX_ERROR_BODY_BYTES).await;
        let detail = if text.is_empty() {
            String::new()
        } else {
            format!(": {}", text.chars().take(300).collect::<String>().trim())
        };
        let errors = oci_errors(&text);
        Err(RegistryError::Status { registry: self.name.clone(), path, status, detail, retry_after, errors })
    }

    /// The whole body, refused past `limit` bytes (announced or sent).
    pub(super) async fn read_capped(&self, resp: Response, limit: usize, what: &str) -> Result<Vec<u8>, RegistryError> {
        Self::read_body_capped(&self.name, resp, limit, what).await
    }

    /// The cap every whole body the relay reads is read within — a
    /// registry's manifests, listing pages and token answers, and Harbor's
    /// API's answers (the crate `relay`'s `harbor_api`): refused past `limit` bytes,
    /// announced by `Content-Length` or counted as they come, so a broken
    /// or hostile server's endless body holds no more memory than that.
    /// `registry` names the server in the error, `what` the body.
    pub async fn read_body_capped(
        registry: &str,
        resp: Response,
        limit: usize,
        what: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let too_large = || RegistryError::TooLarge { registry: registry.to_owned(), reference: what.to_owned(), limit };
        if resp.content_length().is_some_and(|l| l > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| transport_error(registry, &Method::GET, what, &e))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// At most `limit` bytes of the body, as text; the rest is not read.
    /// Up to `limit` bytes of an error body, for the message: what came
    /// within the request timeout (a blob's or an upload's answer has no
    /// whole-request bound, and its error body must not hold the task).
    pub(super) async fn read_prefix(&self, resp: Response, limit: usize) -> String {
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        let until = tokio::time::Instant::now() + self.request_timeout;
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(until, stream.next()).await {
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= limit {
                break;
            }
        }
        String::from_utf8_lossy(&body).into_owned()
    }

    fn transport(&self, method: &Method, path: &str, e: &reqwest::Error) -> RegistryError {
        transport_error(&self.name, method, path, e)
    }

    /// No answer within the request timeout (headers; see [`Bound`]).
    fn no_answer(&self, method: &Method, path: &str) -> RegistryError {
        let reason = format!("no answer within {:?}", self.request_timeout);
        RegistryError::Transport { registry: self.name.clone(), method: method.clone(), path: path.to_owned(), reason }
    }

    /// A streamed request given up by its watch.
    fn stopped(&self, method: &Method, path: &str, stopped: pace::Stopped) -> RegistryError {
        let reason = stopped.to_string();
        RegistryError::Transport { registry: self.name.clone(), method: method.clone(), path: path.to_owned(), reason }
    }
}

/// A failed exchange with `registry`: its certificate, or the connection.
fn transport_error(registry: &str, method: &Method, path: &str, e: &reqwest::Error) -> RegistryError {
    if is_certificate(e) {
        return RegistryError::Certificate { registry: registry.to_owned(), reason: redact(e) };
    }
    RegistryError::Transport {
        registry: registry.to_owned(),
        method: method.clone(),
        path: path.to_owned(),
        reason: redact(e),
    }
}
