//! How Harbor's API is asked: again on a transient failure, with the
//! registry client's retry policy (backoff, `Retry-After`), within the
//! call's time bound; and every answer read within a cap, by the registry
//! client's own capped read.

use std::time::SystemTime;

use reqwest::header::RETRY_AFTER;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use tokio::time::Instant;

use super::{kind_of, Calls, HarborApi, HarborApiError};
use crate::registry::pace;
use crate::registry::retry::{is_retryable, parse_retry_after};
use crate::registry::RegistryClient;

/// An answer of Harbor's API is read this far and no further. A listing
/// page (100 artifacts with their tags, labels, accessories and build
/// attributes) stays well under it; a broken or hostile server's endless
/// body is cut there.
pub(super) const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The answer to `GET /api/v2.0/ping` (`Pong`) is read this far.
pub(super) const MAX_PING_BYTES: usize = 64 * 1024;

impl HarborApi {
    /// Sends the request `build` makes, and again while the failure is
    /// transient (the connection failed, 429, 408, a 5xx), the retry policy
    /// has tries left, and its wait ends within the call's bound (`timeout`,
    /// counted from the first try: the webhook must answer Harbor in 3 s)
    /// and before the task's deadline. A `POST` (it creates something) is
    /// sent again only where it cannot have been acted on: the connection
    /// was never made, or Harbor answered 429 or 503. `path` is for the log.
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, HarborApiError> {
        let Calls { timeout, retry } = *self.calls;
        let until = Instant::now() + timeout;
        let repeatable = method != Method::POST;
        self.refresh_if_due();
        let mut attempt = 0;
        let mut reread = false;
        loop {
            attempt += 1;
            let left = until.saturating_duration_since(Instant::now());
            let outcome = build().timeout(left).send().await;
            // `Some(Retry-After)` when another try may help.
            let again = match &outcome {
                Ok(resp) if worth_retrying(resp.status(), repeatable) => Some(
                    resp.headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, SystemTime::now())),
                ),
                Ok(_) => None,
                Err(e) => (e.is_connect() || (repeatable && !e.is_timeout())).then_some(None),
            };
            let wait = again.map(|after| retry.delay(attempt, after));
            match wait {
                Some(wait) if attempt < retry.attempts && Instant::now() + wait < until && pace::wait_fits(wait) => {
                    let failure = match &outcome {
                        Ok(resp) => format!("HTTP {}", resp.status().as_u16()),
                        Err(e) => kind_of(e),
                    };
                    tracing::warn!(%method, path, %failure, attempt, wait_ms = wait.as_millis() as u64, "Harbor API: retrying");
                    tokio::time::sleep(wait).await;
                }
                _ => {
                    // Refused: the robot's secret may have been rotated
                    // since it was read. Read it again, and ask once more.
                    let denied = matches!(&outcome, Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED);
                    if denied && !reread && self.reread_after_denial().await {
                        reread = true;
                        continue;
                    }
                    return outcome.map_err(|e| HarborApiError::Request(kind_of(&e)));
                }
            }
        }
    }
}

/// Whether an answer says to come back: throttling, a timeout, a server
/// error — for a `POST` only those that say nothing was done.
fn worth_retrying(status: StatusCode, repeatable: bool) -> bool {
    if repeatable {
        return is_retryable(status);
    }
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

/// The whole body of `resp`, cut past `limit` bytes (see
/// [`RegistryClient::read_body_capped`]); `what` names it in the error.
pub(super) async fn read_body(resp: Response, limit: usize, what: &str) -> Result<Vec<u8>, HarborApiError> {
    RegistryClient::read_body_capped("Harbor API", resp, limit, what)
        .await
        .map_err(|e| HarborApiError::Body(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::extract::Request;
    use axum::response::{IntoResponse, Response as Answer};
    use url::Url;

    use super::*;
    use crate::registry::retry::RetryPolicy;

    /// An answer: status, headers, body.
    type Scripted = (u16, Vec<(&'static str, &'static str)>, &'static str);

    /// A Harbor on 127.0.0.1 answering `script` in turn, then 200 with an
    /// empty list; counts the requests.
    async fn harbor(script: Vec<Scripted>) -> (Url, Arc<AtomicUsize>) {
        let script = Arc::new(Mutex::new(script.into_iter()));
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        let handler = move |_: Request| {
            let (script, counter) = (script.clone(), counter.clone());
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let next = script.lock().unwrap().next();
                let (status, headers, body) = next.unwrap_or((200, vec![], "[]"));
                let mut answer: Answer = (StatusCode::from_u16(status).unwrap(), body).into_response();
                for (k, v) in headers {
                    answer.headers_mut().insert(k, v.parse().unwrap());
                }
                answer
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
        (url, asked)
    }

    fn api(base: Url, timeout: Duration) -> HarborApi {
        let fast = RetryPolicy { base: Duration::from_millis(10), ..RetryPolicy::default() };
        HarborApi::new(base, None, false, None, timeout).unwrap().with_retry(fast)
    }

    const PATIENT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_503_then_200_succeeds() {
        let (base, asked) = harbor(vec![(503, vec![], ""), (502, vec![], "")]).await;
        assert_eq!(api(base, PATIENT).projects().await.unwrap(), Vec::<String>::new());
        assert_eq!(asked.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_429_is_retried_after_its_retry_after() {
        let (base, asked) = harbor(vec![(429, vec![("retry-after", "1")], "")]).await;
        let started = std::time::Instant::now();
        api(base, PATIENT).projects().await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        assert!(started.elapsed() >= Duration::from_secs(1), "waited {:?}", started.elapsed());
    }

    /// A wait past the call's bound is not taken: the answer goes back at once.
    #[tokio::test]
    async fn a_retry_after_past_the_call_bound_is_not_waited_for() {
        let (base, asked) = harbor(vec![(429, vec![("retry-after", "30")], "")]).await;
        let started = std::time::Instant::now();
        let err = api(base, Duration::from_secs(2)).projects().await.unwrap_err();
        assert!(matches!(err, HarborApiError::Status(429)), "{err}");
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn retries_stop_with_the_policy() {
        let (base, asked) = harbor(vec![(500, vec![], ""); 10]).await;
        let err = api(base, PATIENT).projects().await.unwrap_err();
        assert!(matches!(err, HarborApiError::Status(500)), "{err}");
        assert_eq!(asked.load(Ordering::SeqCst), RetryPolicy::default().attempts as usize);
    }

    /// A creation answered 500 may have happened: it is not sent again
    /// (a 503 says it did not, and is).
    #[tokio::test]
    async fn a_post_is_sent_again_only_when_nothing_was_done() {
        let head = (404, vec![], "");
        let (base, asked) = harbor(vec![head.clone(), (500, vec![], "")]).await;
        let err = api(base, PATIENT).ensure_project("p", None).await.unwrap_err();
        assert!(matches!(err, HarborApiError::Status(500)), "{err}");
        assert_eq!(asked.load(Ordering::SeqCst), 2, "HEAD, one POST");

        let (base, asked) = harbor(vec![head, (503, vec![], ""), (201, vec![], "")]).await;
        assert!(api(base, PATIENT).ensure_project("p", None).await.unwrap());
        assert_eq!(asked.load(Ordering::SeqCst), 3, "HEAD, POST, POST");
    }

    #[tokio::test]
    async fn an_answer_announced_larger_than_the_cap_is_refused_unread() {
        let (base, _) = harbor(vec![]).await;
        let resp = reqwest::get(base.join("/api/v2.0/projects").unwrap()).await.unwrap();
        let err = read_body(resp, 1, "/api/v2.0/projects").await.unwrap_err();
        assert_eq!(err.to_string(), "Harbor API: /api/v2.0/projects is larger than 1 bytes");
    }
}
