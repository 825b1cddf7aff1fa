//! A registry that answers without end: every read of the client is
//! bounded — error bodies, token answers, listing pages, Harbor's API's
//! answers — and a `Link` that loops back is refused. A small hostile server on 127.0.0.1; each case
//! must end in an error well within its timeout (without the bound it would
//! read for ever). Blob streams are bounded by their progress instead (the
//! fake registry, with faults): a slow blob is never cut by the clock, a
//! registry that stops reading or answering is given up.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use relay::registry::chunks::BoxError;
use relay::registry::pace::MinThroughput;
use relay::registry::retry::RetryPolicy;
use relay::registry::{ClientOptions, RegistryClient, Role, UploadStart};
use relay::RepositoryPath;
use relay_tests::fake::{FakeRegistry, Fault, Op};
use relay_tests::plain::sha256;

/// An endless body of `{"x": "aaaa…` (never valid, never finished).
fn endless() -> Body {
    let first =
        futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"{\"repositories\": [\"")) });
    let rest = futures_util::stream::repeat_with(|| Ok(Bytes::from(vec![b'a'; 64 * 1024])));
    Body::from_stream(futures_util::StreamExt::chain(first, rest))
}

/// An endless body of `piece`-byte pieces, one every `every`: paced, so a
/// reader without its bound reads for as long as it is let, and no faster
/// than a test's memory allows.
fn paced_endless(piece: usize, every: Duration) -> Body {
    let pieces = futures_util::stream::unfold((), move |()| async move {
        tokio::time::sleep(every).await;
        Some((Ok::<_, std::io::Error>(Bytes::from(vec![b'a'; piece])), ()))
    });
    Body::from_stream(pieces)
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
        // 1.6 MB/s: the error body's bound (64 KiB) is reached in about
        // 40 ms; without it, the read goes on to the request timeout.
        "/v2/broken/manifests/v1" => {
            (StatusCode::BAD_REQUEST, paced_endless(16 * 1024, Duration::from_millis(10))).into_response()
        }
        // About 64 MB/s: past the 16 MiB bound in a quarter of a second.
        "/api/v2.0/projects" => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            paced_endless(64 * 1024, Duration::from_millis(1)),
        )
            .into_response(),
        // A blob's error answer whose body starts, then never goes on.
        _ if path.starts_with("/v2/silent/blobs/") => {
            let first =
                futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"{\"errors\": [")) });
            (StatusCode::NOT_FOUND, Body::from_stream(first.chain(futures_util::stream::pending()))).into_response()
        }
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
        "/v2/mute/manifests/v1" => {
            let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
            let challenge = format!("Bearer realm=\"http://{host}/mute-token\",service=\"x\"");
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)]).into_response()
        }
        // A token service that never answers.
        "/mute-token" => std::future::pending().await,
        _ if path.starts_with("/token") => (StatusCode::OK, endless()).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The hostile server's URL.
async fn serve_hostile() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(hostile)).await });
    url
}

async fn client() -> RegistryClient {
    let url = serve_hostile().await;
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

/// The error body is read to its bound, not to the request timeout (2 s):
/// the excerpt alone could not tell, it is cut to 300 characters anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_error_body_is_cut_and_the_status_reported() {
    let c = client().await;
    let started = Instant::now();
    let err = bounded("manifest", c.get_manifest(&repo("broken"), "v1", None)).await;
    assert!(err.contains("HTTP 400"), "{err}");
    assert!(err.len() < 1024, "the error carries a short excerpt: {} bytes", err.len());
    assert!(started.elapsed() < Duration::from_secs(1), "read for {:?}: not cut at its bound", started.elapsed());
}

/// Harbor's API answers are read within the same cap as a registry's: an
/// endless listing page is refused at 16 MiB, well within the call's
/// bound, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_harbor_api_answer_is_refused_at_its_bound() {
    let url = serve_hostile().await.parse().unwrap();
    let api = relay::harbor_api::HarborApi::new(url, None, false, None, Duration::from_secs(5)).unwrap();
    let started = Instant::now();
    let err = api.projects().await.expect_err("an endless page").to_string();
    assert!(err.contains("Harbor API") && err.contains("larger than 16777216 bytes"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4), "read for {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_token_answer_is_refused_at_its_bound() {
    let c = client().await;
    let err = bounded("token", c.head_manifest(&repo("guarded"), "v1")).await;
    assert!(err.contains("token response") && err.contains("1048576"), "{err}");
}

/// A token service that never answers is given up at the request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_service_that_never_answers_is_given_up() {
    let c = client().await;
    let started = Instant::now();
    let err = bounded("token", c.head_manifest(&repo("mute"), "v1")).await;
    assert!(err.contains("token") && err.contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

/// A blob's error answer (no whole-request bound: a blob's body takes what
/// its size needs) whose body stops is cut at the request timeout, with
/// the status and what came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_error_body_of_a_blob_read_is_cut_at_the_request_timeout() {
    let c = client().await;
    let digest = sha256(b"x").parse().unwrap();
    let started = Instant::now();
    let err = bounded("blob", c.open_blob(&repo("silent"), &digest, 0)).await;
    assert!(err.contains("HTTP 404") && err.contains("errors"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
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

/// A fake registry, and a client of it whose request timeout and
/// throughput window are a second (with a floor of 1 MiB/s): blob streams
/// must outlast both.
async fn fake_client(role: Role) -> (FakeRegistry, RegistryClient) {
    let fake = FakeRegistry::start(false).await;
    let retry = RetryPolicy { attempts: 1, ..RetryPolicy::default() };
    let second = Duration::from_secs(1);
    let min_throughput = MinThroughput { bytes_per_second: 1024 * 1024, window: second };
    let options = ClientOptions { retry, request_timeout: second, min_throughput, ..Default::default() };
    let client = RegistryClient::new("fake", fake.url.parse().unwrap(), role, None, options).unwrap();
    (fake, client)
}

/// `len` bytes that are not all alike.
fn blob(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

/// Uploads `bytes` whole into `repo` (one `PUT`), in `pieces` pieces with
/// `pause` before each (a source that sends at that pace).
async fn upload(
    c: &RegistryClient,
    repo_name: &str,
    bytes: Bytes,
    pieces: usize,
    pause: Duration,
) -> Result<(), relay::registry::RegistryError> {
    let (repo, digest) = (repo(repo_name), sha256(&bytes).parse().unwrap());
    let UploadStart::Session { url, .. } = c.start_upload(&repo, None).await? else {
        panic!("nothing was asked to mount")
    };
    let len = bytes.len() as u64;
    let size = bytes.len().div_ceil(pieces);
    let parts: Vec<Bytes> = bytes.chunks(size).map(Bytes::copy_from_slice).collect();
    let body = futures_util::stream::iter(parts).then(move |p| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, BoxError>(p)
    });
    c.finish_upload(&repo, url, &digest, len, body.boxed()).await
}

/// A blob whose body takes longer than the request timeout is read to
/// its end: the timeout bounds the wait for the answer, not the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_read_longer_than_the_request_timeout_is_read_whole() {
    let (fake, c) = fake_client(Role::Source).await;
    let bytes = blob(1024 * 1024);
    let digest = fake.insert_blob("slow/read", bytes.clone());
    // 256 pieces of 4 KiB, 10 ms apart: about 2.6 s, at about 400 KB/s.
    fake.inject(Op::GetBlob, Fault::Slow(Duration::from_millis(10)), 1);
    let started = Instant::now();
    let resp = c.open_blob(&repo("slow/read"), &digest.parse().unwrap(), 0).await.unwrap();
    let got = resp.bytes().await.expect("the body was cut");
    assert!(started.elapsed() > Duration::from_secs(2), "the body came in {:?}", started.elapsed());
    assert_eq!(got, bytes);
}

/// An upload whose source sends slowly, pausing longer than the
/// throughput window between pieces, for longer than the request timeout
/// in all, completes: the registry keeps asking, the wait is on our side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_longer_than_the_request_timeout_is_sent_whole() {
    let (fake, c) = fake_client(Role::Destination).await;
    let bytes = blob(4 * 1024 * 1024);
    let started = Instant::now();
    upload(&c, "slow/write", bytes.clone(), 3, Duration::from_millis(1500)).await.expect("the upload was cut");
    assert!(started.elapsed() > Duration::from_secs(4), "the upload took {:?}", started.elapsed());
    assert!(fake.has_blob("slow/write", &sha256(&bytes)));
}

/// A registry that stops reading an upload's body (it never polls the
/// body again, so the body cannot time itself) is given up about a stall
/// window after it last asked, and the error names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_registry_stops_reading_is_given_up() {
    let (fake, c) = fake_client(Role::Destination).await;
    // Far more than the socket buffers between the two hold.
    fake.inject(Op::PutUpload, Fault::Stall(Duration::from_secs(120)), 1);
    let started = Instant::now();
    let err = bounded("upload", upload(&c, "stalled", blob(64 * 1024 * 1024), 1024, Duration::ZERO)).await;
    assert!(err.contains("stopped reading") && err.contains("fake"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "given up after {:?}", started.elapsed());
}

/// A registry that takes the whole body and never answers is given up a
/// request timeout after the last byte, plus the time the bytes in flight
/// then take at the floor's rate (here 1 s and 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_never_answered_is_given_up() {
    let (fake, c) = fake_client(Role::Destination).await;
    fake.inject(Op::PutUpload, Fault::Unanswered(Duration::from_secs(120)), 1);
    let started = Instant::now();
    let err = bounded("upload", upload(&c, "unanswered", blob(2 * 1024 * 1024), 32, Duration::ZERO)).await;
    assert!(err.contains("no answer within 3s after the whole body"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(6), "given up after {:?}", started.elapsed());
}
