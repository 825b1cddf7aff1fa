//! A registry that answers without end: every read of the client is
//! bounded — error bodies, token answers, listing pages — and a `Link` that
//! loops back is refused. A small hostile server on 127.0.0.1; each case
//! must end in an error well within its timeout (without the bound it would
//! read for ever).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use relay::registry::retry::RetryPolicy;
use relay::registry::{ClientOptions, RegistryClient, Role};
use relay::RepositoryPath;

/// An endless body of `{"x": "aaaa…` (never valid, never finished).
fn endless() -> Body {
    let first =
        futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"{\"repositories\": [\"")) });
    let rest = futures_util::stream::repeat_with(|| Ok(Bytes::from(vec![b'a'; 64 * 1024])));
    Body::from_stream(futures_util::StreamExt::chain(first, rest))
}

async fn hostile(req: Request) -> Response {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/v2/" => StatusCode::OK.into_response(),
        "/v2/_catalog" => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], endless()).into_response(),
        "/v2/loop/tags/list" => (
            StatusCode::OK,
            [(header::LINK, "</v2/loop/tags/list?n=1>; rel=\"next\"")],
            "{\"name\": \"loop\", \"tags\": [\"a\"]}",
        )
            .into_response(),
        "/v2/broken/manifests/v1" => (StatusCode::BAD_REQUEST, endless()).into_response(),
        // A valid-looking manifest, one byte every 100 ms: never a silence
        // long enough for a read timeout.
        "/v2/trickle/manifests/v1" => {
            let bytes = futures_util::stream::unfold(0u64, |n| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((Ok::<_, std::io::Error>(Bytes::from_static(if n == 0 { b"{" } else { b" " })), n + 1))
            });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/vnd.oci.image.manifest.v1+json")],
                Body::from_stream(bytes),
            )
                .into_response()
        }
        "/v2/guarded/manifests/v1" => {
            let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
            let challenge = format!("Bearer realm=\"http://{host}/token\",service=\"x\"");
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)]).into_response()
        }
        _ if path.starts_with("/token") => (StatusCode::OK, endless()).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn client() -> RegistryClient {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(hostile)).await });
    let retry = RetryPolicy { attempts: 1, ..RetryPolicy::default() };
    let options = ClientOptions { retry, request_timeout: Duration::from_secs(2), ..Default::default() };
    RegistryClient::new("hostile", url.parse().unwrap(), Role::Source, None, options).unwrap()
}

fn repo(s: &str) -> RepositoryPath {
    s.parse().unwrap()
}

async fn bounded<T: std::fmt::Debug>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, relay::registry::RegistryError>>,
) -> String {
    let result = tokio::time::timeout(Duration::from_secs(20), f).await;
    let err = result.unwrap_or_else(|_| panic!("{what}: still reading after 20 s")).expect_err(what);
    err.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_listing_page_is_refused_at_its_bound() {
    let c = client().await;
    let err = bounded("catalog", c.catalog()).await;
    assert!(err.contains("larger than 4194304 bytes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_loops_back_is_refused() {
    let c = client().await;
    let err = bounded("tags", c.tags(&repo("loop"))).await;
    assert!(err.contains("listing loops"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_error_body_is_cut_and_the_status_reported() {
    let c = client().await;
    let err = bounded("manifest", c.get_manifest(&repo("broken"), "v1", None)).await;
    assert!(err.contains("HTTP 400"), "{err}");
    assert!(err.len() < 1024, "the error carries a short excerpt: {} bytes", err.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_token_answer_is_refused_at_its_bound() {
    let c = client().await;
    let err = bounded("token", c.head_manifest(&repo("guarded"), "v1")).await;
    assert!(err.contains("token response") && err.contains("1048576"), "{err}");
}

/// A body that trickles forever (a byte every 100 ms) is cut by the
/// whole-request bound, not read until the invocation times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_manifest_is_cut_by_the_request_bound() {
    let c = client().await;
    let started = std::time::Instant::now();
    let err = bounded("manifest", c.get_manifest(&repo("trickle"), "v1", None)).await;
    assert!(err.contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}
