//! An in-process fake registry for fault injection, in addition to the real
//! ones: a small in-memory implementation of the distribution API (monolithic
//! uploads, mounts, manifests by tag and digest, optional Bearer tokens)
//! where a test scripts failures — statuses with `Retry-After`, connection
//! resets mid-body, slow bodies, corrupt blobs, expiring tokens, mounts
//! answered with 202 or refused, a destination that does not check blob digests —
//! and counts the requests it served. A request whose body breaks off (the
//! client gave it up) changes nothing, as in a real registry. As a source
//! it stands in for a Harbor: its REST API (artifacts with labels, the
//! listings, webhook policies) and, once it has a robot account, a token
//! service and an API that take only the robot's current secret (rotated
//! in place by a test).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::{stream, StreamExt};

use crate::plain::sha256;

/// Which kind of request a fault or a count is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Ping,
    HeadManifest,
    GetManifest,
    PutManifest,
    HeadBlob,
    GetBlob,
    StartUpload,
    PutUpload,
    /// A chunk of an upload (`PATCH` with `Content-Range`).
    PatchUpload,
    Token,
    /// Harbor's `GET /api/v2.0/projects/{p}/repositories/{r}/artifacts/{d}`.
    HarborArtifact,
    /// Harbor's paginated lists: projects, repositories, artifacts, an
    /// artifact's tags.
    HarborList,
    /// Harbor's webhook policies of a project (list, create, update).
    HarborWebhook,
    /// OCI 1.1 `GET /v2/<name>/referrers/<digest>` (404 unless enabled).
    Referrers,
    Other,
}

/// What to do instead of answering normally.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status, with `Retry-After` if given.
    Status(u16, Option<String>),
    /// Answer this status with this JSON body (a registry's own error).
    Answer(u16, &'static str),
    /// Send half the blob, then break the connection.
    ResetMidBody,
    /// Send the body in 4 KiB pieces with this pause between them.
    Slow(Duration),
    /// Send the headers, then wait this long before the whole body
    /// (however small the blob is).
    Hold(Duration),
    /// Serve other bytes than the digest names (same length).
    Corrupt,
    /// Every token issued so far stops working, and this request gets 401.
    ExpireTokens,
    /// Serve the blob with extra bytes past its descriptor's size, and an
    /// honest `Content-Length` saying so.
    Longer,
    /// The same without `Content-Length`, in one chunk that crosses the
    /// descriptor's end: only counting the bytes as they arrive can tell.
    LongerUnannounced,
    /// A body without Content-Length that never ends (manifest or blob).
    Endless,
    /// Answer 307 to this URL (storage redirects, as S3-backed registries do).
    RedirectTo(String),
    /// For an upload of more than 1 MiB (`PutUpload`): read nothing of its
    /// body for this long, as a destination that has stopped taking bytes.
    /// Smaller uploads pass and leave the fault queued.
    Stall(Duration),
    /// For an upload of more than 1 MiB (`PutUpload`): read its body at
    /// 256 KiB/s for this long, then at full speed, as a destination that
    /// falls behind for a while and keeps taking bytes. Smaller uploads
    /// pass and leave the fault queued.
    Lag(Duration),
    /// For an upload of more than 1 MiB (`PutUpload`): take its whole body,
    /// then answer nothing for this long, as a registry that hangs while
    /// it commits the blob. Smaller uploads pass and leave the fault queued.
    Unanswered(Duration),
}

/// Round trips counted across registries: a request's depth is one more
/// than the deepest request that had finished when it started, so requests
/// sent together share a depth and a chain of dependent ones adds up. Each
/// registry tracking into it holds every request for a while (see
/// [`FakeRegistry::track_rounds`]), so requests sent together do overlap.
#[derive(Clone, Default)]
pub struct Rounds(Arc<Mutex<RoundState>>);

#[derive(Default)]
struct RoundState {
    /// Deepest request finished so far.
    finished: usize,
    /// (depth, registry URL, what) of every request, in order of start.
    seen: Vec<(usize, String, String)>,
}

impl Rounds {
    fn start(&self, registry: &str, what: String) -> usize {
        let mut s = self.0.lock().unwrap();
        let depth = s.finished + 1;
        s.seen.push((depth, registry.to_owned(), what));
        depth
    }

    fn finish(&self, depth: usize) {
        let mut s = self.0.lock().unwrap();
        s.finished = s.finished.max(depth);
    }

    /// The longest chain of requests, each sent after the one before had
    /// its answer.
    pub fn deepest(&self) -> usize {
        self.0.lock().unwrap().seen.iter().map(|(d, _, _)| *d).max().unwrap_or(0)
    }

    /// Every request with its depth, one per line (for a failure message).
    pub fn trace(&self) -> String {
        let s = self.0.lock().unwrap();
        s.seen.iter().map(|(d, r, w)| format!("{d} {r} {w}\n")).collect()
    }
}

#[derive(Default)]
struct Store {
    /// Round trips are tracked into these, each request held this long.
    rounds: Option<(Rounds, Duration)>,
    blobs: HashMap<String, Bytes>,
    /// repo → reference (tag or digest) → (media type, bytes)
    manifests: HashMap<String, HashMap<String, (String, Bytes)>>,
    /// repo → digests of blobs linked into it (for mounts and HEAD)
    links: HashMap<String, std::collections::HashSet<String>>,
    uploads: HashMap<String, String>,
    faults: HashMap<Op, VecDeque<Fault>>,
    counts: HashMap<Op, usize>,
    /// Some(valid tokens) when Bearer auth is on.
    tokens: Option<Vec<String>>,
    mount_202: bool,
    /// Mount requests are refused with this status and body (a registry
    /// that does not mount across repositories).
    mount_refusal: Option<(u16, &'static str)>,
    /// Upload `POST`s that asked to mount a blob.
    mount_requests: usize,
    /// Commit an upload under whatever digest the client names, without
    /// hashing it (a registry that leaves the check to its clients).
    any_digest: bool,
    /// Serve the referrers API and answer `OCI-Subject` on pushes.
    referrers_api: bool,
    /// Bytes received so far per upload session (chunked uploads).
    upload_data: HashMap<String, Vec<u8>>,
    /// Upload requests with a larger body get 413 (a proxy's body limit).
    max_body: Option<usize>,
    /// Announced as `OCI-Chunk-Min-Length` when an upload starts.
    chunk_min: Option<usize>,
    /// Body sizes of the `PATCH` chunks received, in order.
    patch_sizes: Vec<usize>,
    /// (repo, digest) → Harbor labels.
    labels: HashMap<(String, String), Vec<String>>,
    /// Requests that carried an Authorization header.
    authorized: usize,
    /// The token realm its challenges name (default: its own `/token`).
    realm: Option<String>,
    next: u64,
    /// Projects that exist without a repository.
    empty_projects: Vec<String>,
    /// Webhook policies: (project id, policy as Harbor stores it).
    webhook_policies: Vec<(i64, serde_json::Value)>,
    /// Answer Harbor's `GET /api/v2.0/ping` with `Pong`, as a Harbor does.
    pings_as_harbor: bool,
    /// Harbor's robot account (username, password) when one is required:
    /// see [`FakeRegistry::set_robot`].
    robot: Option<(String, String)>,
    /// Requests refused for their credentials, per kind.
    refused: HashMap<Op, usize>,
}

/// The type Harbor's artifact processors give a manifest: `IMAGE` for an
/// index or manifest list and for a manifest with an image config, `CHART`
/// for a Helm chart, else the vendor part of an
/// `application/vnd.<vendor>.<type>.config.<v>+json` config, else `UNKNOWN`.
fn harbor_type((media_type, bytes): &(String, Bytes)) -> String {
    const INDEXES: [&str; 2] =
        ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
    const IMAGE_CONFIGS: [&str; 2] =
        ["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];
    if INDEXES.contains(&media_type.as_str()) {
        return "IMAGE".into();
    }
    let manifest: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let config = manifest["config"]["mediaType"].as_str().unwrap_or_default();
    if IMAGE_CONFIGS.contains(&config) {
        return "IMAGE".into();
    }
    if config == "application/vnd.cncf.helm.config.v1+json" {
        return "CHART".into();
    }
    let vendor_type = config
        .strip_prefix("application/vnd.")
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(_, rest)| rest.split_once(".config."))
        .filter(|(_, version)| version.ends_with("+json"))
        .map(|(kind, _)| kind.to_uppercase());
    vendor_type.unwrap_or_else(|| "UNKNOWN".into())
}

#[derive(Clone)]
pub struct FakeRegistry {
    pub url: String,
    store: Arc<Mutex<Store>>,
}

impl FakeRegistry {
    /// Starts on 127.0.0.1 (port 0). With `bearer`, every /v2 request needs
    /// a token from `/token`.
    pub async fn start(bearer: bool) -> FakeRegistry {
        let store = Arc::new(Mutex::new(Store { tokens: bearer.then(Vec::new), ..Default::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(handle).with_state((store.clone(), url.clone()));
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeRegistry { url, store }
    }

    /// Counts its requests' round trips into `rounds`, holding each for
    /// `hold` before it is answered.
    pub fn track_rounds(&self, rounds: &Rounds, hold: Duration) {
        self.store.lock().unwrap().rounds = Some((rounds.clone(), hold));
    }

    /// Its Bearer challenges name `realm` instead of its own `/token` (a
    /// registry that points clients at another token service).
    pub fn set_realm(&self, realm: &str) {
        self.store.lock().unwrap().realm = Some(realm.to_owned());
    }

    /// The next `times` requests of kind `op` get `fault`.
    pub fn inject(&self, op: Op, fault: Fault, times: usize) {
        let mut s = self.store.lock().unwrap();
        let q = s.faults.entry(op).or_default();
        q.extend(std::iter::repeat_n(fault, times));
    }

    /// Every fault not served yet is dropped: the registry answers normally
    /// again (a maintenance window ends).
    pub fn clear_faults(&self) {
        self.store.lock().unwrap().faults.clear();
    }

    pub fn count(&self, op: Op) -> usize {
        self.store.lock().unwrap().counts.get(&op).copied().unwrap_or(0)
    }

    pub fn reset_counts(&self) {
        self.store.lock().unwrap().counts.clear();
    }

    /// Every token issued so far stops working (as when they expire).
    pub fn expire_tokens(&self) {
        if let Some(t) = &mut self.store.lock().unwrap().tokens {
            t.clear();
        }
    }

    /// Mount requests are declined with an upload session (202).
    pub fn decline_mounts(&self) {
        self.store.lock().unwrap().mount_202 = true;
    }

    /// Mount requests are refused with `status` and `body` (a registry
    /// that does not mount across repositories: 405 with `UNSUPPORTED`).
    pub fn refuse_mounts(&self, status: u16, body: &'static str) {
        self.store.lock().unwrap().mount_refusal = Some((status, body));
    }

    /// Upload `POST`s that asked to mount a blob, refused or not.
    pub fn mount_requests(&self) -> usize {
        self.store.lock().unwrap().mount_requests
    }

    /// Uploads are committed under the digest the final `PUT` names,
    /// unchecked: only the client's own check keeps other bytes out.
    pub fn accept_any_digest(&self) {
        self.store.lock().unwrap().any_digest = true;
    }

    /// Upload sessions started and neither committed nor abandoned.
    pub fn open_uploads(&self) -> usize {
        self.store.lock().unwrap().uploads.len()
    }

    /// Requests that arrived with an Authorization header.
    pub fn authorized_requests(&self) -> usize {
        self.store.lock().unwrap().authorized
    }

    /// Stores a blob directly (any bytes), linked into `repo`.
    pub fn insert_blob(&self, repo: &str, bytes: Bytes) -> String {
        let d = sha256(&bytes);
        let mut s = self.store.lock().unwrap();
        s.blobs.insert(d.clone(), bytes);
        s.links.entry(repo.to_owned()).or_default().insert(d.clone());
        d
    }

    /// Stores a manifest directly (no checks), under `reference` and its digest.
    pub fn insert_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: Bytes) -> String {
        let d = sha256(&bytes);
        let mut s = self.store.lock().unwrap();
        let m = s.manifests.entry(repo.to_owned()).or_default();
        m.insert(reference.to_owned(), (media_type.to_owned(), bytes.clone()));
        m.insert(d.clone(), (media_type.to_owned(), bytes));
        d
    }

    /// Upload requests with a body over `max_body` bytes get 413, as behind
    /// a proxy with a body limit; `chunk_min` is announced as
    /// `OCI-Chunk-Min-Length`.
    pub fn limit_uploads(&self, max_body: usize, chunk_min: Option<usize>) {
        let mut s = self.store.lock().unwrap();
        s.max_body = Some(max_body);
        s.chunk_min = chunk_min;
    }

    /// Body sizes of the chunks received (`PATCH`), in order.
    pub fn patch_sizes(&self) -> Vec<usize> {
        self.store.lock().unwrap().patch_sizes.clone()
    }

    /// Serve OCI 1.1's referrers API (and `OCI-Subject` on manifest pushes).
    /// Adds a project that holds no repository yet.
    pub fn add_project(&self, project: &str) {
        self.store.lock().unwrap().empty_projects.push(project.to_owned());
    }

    /// The webhook policies Harbor holds for `project`.
    pub fn webhook_policies(&self, project: &str) -> Vec<serde_json::Value> {
        let id = project_id(project);
        self.store.lock().unwrap().webhook_policies.iter().filter(|(p, _)| *p == id).map(|(_, v)| v.clone()).collect()
    }

    /// Stores `policy` for `project` as if made in Harbor's UI.
    pub fn insert_webhook_policy(&self, project: &str, mut policy: serde_json::Value) {
        let mut s = self.store.lock().unwrap();
        s.next += 1;
        policy["id"] = s.next.into();
        policy["project_id"] = project_id(project).into();
        s.webhook_policies.push((project_id(project), policy));
    }

    pub fn enable_referrers_api(&self) {
        self.store.lock().unwrap().referrers_api = true;
    }

    /// Answer `GET /api/v2.0/ping` as Harbor does (`Pong`, no account
    /// needed), so a configuration without `harbor_api` detects a Harbor.
    pub fn ping_as_harbor(&self) {
        self.store.lock().unwrap().pings_as_harbor = true;
    }

    /// Requires Harbor's robot account `username`/`password` from now on,
    /// as a Harbor does: the token service (`/token`) issues tokens only
    /// for its Basic credentials, Harbor's API answers only them, and
    /// `/v2/` takes a token or them (Harbor's core accepts Basic too, which
    /// lets a fixture push; the relay's client follows the Bearer
    /// challenge). Anything else is 401, counted in [`FakeRegistry::refused`].
    /// Called again, it rotates the robot's secret in place: the old
    /// password is refused at once. Tokens issued before stay valid, as
    /// Harbor's do until they expire ([`FakeRegistry::expire_tokens`]).
    pub fn set_robot(&self, username: &str, password: &str) {
        let mut s = self.store.lock().unwrap();
        s.robot = Some((username.to_owned(), password.to_owned()));
        s.tokens.get_or_insert_with(Vec::new);
    }

    /// Requests of kind `op` refused for their credentials (a robot set).
    pub fn refused(&self, op: Op) -> usize {
        self.store.lock().unwrap().refused.get(&op).copied().unwrap_or(0)
    }

    /// Deletes `repo@digest` as Harbor deletes an artifact: the manifest,
    /// every tag on it and its labels.
    pub fn delete_artifact(&self, repo: &str, digest: &str) {
        let mut s = self.store.lock().unwrap();
        if let Some(m) = s.manifests.get_mut(repo) {
            m.retain(|reference, (_, bytes)| reference != digest && sha256(bytes) != digest);
        }
        s.labels.remove(&(repo.to_owned(), digest.to_owned()));
    }

    /// Harbor labels of `repo@digest` (what the Harbor API answers).
    pub fn set_labels(&self, repo: &str, digest: &str, labels: &[&str]) {
        let labels = labels.iter().map(|l| (*l).to_owned()).collect();
        self.store.lock().unwrap().labels.insert((repo.to_owned(), digest.to_owned()), labels);
    }

    pub fn has_blob(&self, repo: &str, digest: &str) -> bool {
        self.store.lock().unwrap().links.get(repo).is_some_and(|l| l.contains(digest))
    }

    pub fn has_manifest(&self, repo: &str, reference: &str) -> bool {
        self.store.lock().unwrap().manifests.get(repo).is_some_and(|m| m.contains_key(reference))
    }
}

type Shared = (Arc<Mutex<Store>>, String);

fn status(code: u16) -> Response {
    StatusCode::from_u16(code).unwrap().into_response()
}

/// 401 with a Bearer challenge naming the realm.
fn challenge(s: &Store, base: &str) -> Response {
    let realm = s.realm.clone().unwrap_or_else(|| format!("{base}/token"));
    let challenge = format!("Bearer realm=\"{realm}\",service=\"fake\"");
    (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response()
}

async fn handle(State((store, base)): State<Shared>, req: Request) -> Response {
    let tracking = store.lock().unwrap().rounds.clone();
    let Some((rounds, hold)) = tracking else {
        return answer(store, base, req).await;
    };
    let depth = rounds.start(&base, format!("{} {}", req.method(), req.uri()));
    tokio::time::sleep(hold).await;
    let response = answer(store, base, req).await;
    rounds.finish(depth);
    response
}

/// A request body read at 256 KiB/s for `lag`, then as fast as it comes;
/// `None` if it breaks off.
async fn lagging_read(body: Body, lag: Duration) -> Option<Bytes> {
    const RATE: f64 = 256.0 * 1024.0;
    let started = tokio::time::Instant::now();
    let mut frames = body.into_data_stream();
    let mut got = Vec::new();
    while let Some(frame) = frames.next().await {
        got.extend_from_slice(&frame.ok()?);
        let due = started + Duration::from_secs_f64(got.len() as f64 / RATE);
        if due < started + lag {
            tokio::time::sleep_until(due).await;
        }
    }
    Some(Bytes::from(got))
}

async fn answer(store: Arc<Mutex<Store>>, base: String, req: Request) -> Response {
    let q: HashMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    let (op, repo, rest) = classify(&method, &path);
    let large = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|l| l > 1024 * 1024);
    let slow_read = {
        let mut s = store.lock().unwrap();
        match s.faults.get_mut(&op) {
            Some(q) if large && matches!(q.front(), Some(Fault::Stall(_) | Fault::Lag(_) | Fault::Unanswered(_))) => {
                q.pop_front()
            }
            _ => None,
        }
    };
    // `None`: the body broke off before its end (the client gave the
    // request up), and the request changes nothing.
    let body = match slow_read {
        Some(Fault::Stall(d)) => {
            tokio::time::sleep(d).await;
            axum::body::to_bytes(req.into_body(), usize::MAX).await.ok()
        }
        Some(Fault::Lag(d)) => lagging_read(req.into_body(), d).await,
        Some(Fault::Unanswered(d)) => {
            let body = axum::body::to_bytes(req.into_body(), usize::MAX).await.ok();
            tokio::time::sleep(d).await;
            body
        }
        _ => axum::body::to_bytes(req.into_body(), usize::MAX).await.ok(),
    };
    if path == "/api/v2.0/ping" && method == Method::GET && store.lock().unwrap().pings_as_harbor {
        return ([("content-type", "text/plain")], "\"Pong\"").into_response();
    }

    let fault = {
        let mut s = store.lock().unwrap();
        *s.counts.entry(op).or_default() += 1;
        if headers.contains_key("authorization") {
            s.authorized += 1;
        }
        // With a robot account: whether the request carries its Basic credentials.
        let robot = s.robot.as_ref().map(|(user, password)| {
            use base64::Engine as _;
            let expected =
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
            headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str())
        });
        let harbor_api = matches!(op, Op::HarborArtifact | Op::HarborList | Op::HarborWebhook);
        if robot == Some(false) && (op == Op::Token || harbor_api) {
            *s.refused.entry(op).or_default() += 1;
            let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"unauthorized"}]}"#;
            return (StatusCode::UNAUTHORIZED, [("content-type", "application/json")], body).into_response();
        }
        if op == Op::Token {
            let token = format!("t{}", s.next);
            s.next += 1;
            if let Some(t) = &mut s.tokens {
                t.push(token.clone());
            }
            let json = format!("{{\"token\":\"{token}\",\"expires_in\":300}}");
            return ([("content-type", "application/json")], json).into_response();
        }
        if let Some(valid) = s.tokens.as_ref().filter(|_| robot != Some(true)) {
            let presented = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
            if !valid.iter().any(|t| presented == format!("Bearer {t}")) {
                return challenge(&s, &base);
            }
        }
        s.faults
            .get_mut(&op)
            .filter(|q| !matches!(q.front(), Some(Fault::Stall(_) | Fault::Lag(_) | Fault::Unanswered(_))))
            .and_then(VecDeque::pop_front)
    };
    if let Some(Fault::ExpireTokens) = &fault {
        let mut s = store.lock().unwrap();
        if let Some(t) = &mut s.tokens {
            t.clear();
        }
        return challenge(&s, &base);
    }
    if let Some(Fault::RedirectTo(url)) = &fault {
        return (StatusCode::TEMPORARY_REDIRECT, [("location", url.clone())]).into_response();
    }
    if let Some(Fault::Answer(code, body)) = &fault {
        let code = StatusCode::from_u16(*code).unwrap();
        return (code, [("content-type", "application/json")], *body).into_response();
    }
    if let Some(Fault::Status(code, after)) = &fault {
        let mut r = status(*code);
        if let Some(a) = after {
            r.headers_mut().insert("retry-after", a.parse().unwrap());
        }
        return r;
    }
    let Some(body) = body else { return status(400) };

    let mut s = store.lock().unwrap();
    match op {
        Op::Ping => status(200),
        Op::HeadManifest | Op::GetManifest => match s.manifests.get(&repo).and_then(|m| m.get(&rest)) {
            None => status(404),
            Some((mt, bytes)) => {
                let mut h = HeaderMap::new();
                h.insert("content-type", mt.parse().unwrap());
                h.insert("docker-content-digest", sha256(bytes).parse().unwrap());
                if op == Op::GetManifest && matches!(fault, Some(Fault::Endless)) {
                    return (h, endless()).into_response();
                }
                h.insert("content-length", bytes.len().into());
                let b = if op == Op::GetManifest { Body::from(bytes.clone()) } else { Body::empty() };
                (h, b).into_response()
            }
        },
        Op::PutManifest => {
            let mt = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let digest = sha256(&body);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let refs = std::iter::once(&v["config"]).chain(v["layers"].as_array().into_iter().flatten());
            let linked = s.links.get(&repo).cloned().unwrap_or_default();
            for r in refs.filter(|r| r.is_object()) {
                if !linked.contains(r["digest"].as_str().unwrap_or("")) {
                    return (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").into_response();
                }
            }
            let subject = v["subject"]["digest"].as_str().filter(|_| s.referrers_api).map(str::to_owned);
            let m = s.manifests.entry(repo).or_default();
            m.insert(rest, (mt.clone(), body.clone()));
            m.insert(digest.clone(), (mt, body));
            let mut h = HeaderMap::new();
            h.insert("docker-content-digest", digest.parse().unwrap());
            if let Some(subject) = subject {
                h.insert("oci-subject", subject.parse().unwrap());
            }
            (StatusCode::CREATED, h).into_response()
        }
        Op::Referrers => {
            if !s.referrers_api {
                return status(404);
            }
            let mut found: Vec<serde_json::Value> = s
                .manifests
                .get(&repo)
                .into_iter()
                .flatten()
                .filter(|(r, _)| r.starts_with("sha256:"))
                .filter_map(|(d, (mt, b))| {
                    let v: serde_json::Value = serde_json::from_slice(b).ok()?;
                    (v["subject"]["digest"].as_str() == Some(rest.as_str())).then(|| {
                        let t = v["artifactType"].as_str().or(v["config"]["mediaType"].as_str()).unwrap_or_default();
                        serde_json::json!({"mediaType": mt, "digest": d, "size": b.len(), "artifactType": t})
                    })
                })
                .collect();
            found.sort_by_key(|v| v["digest"].as_str().unwrap_or_default().to_owned());
            let body = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": found});
            ([("content-type", "application/vnd.oci.image.index.v1+json")], body.to_string()).into_response()
        }
        Op::HeadBlob | Op::GetBlob => {
            let Some(bytes) =
                s.links.get(&repo).filter(|l| l.contains(&rest)).and_then(|_| s.blobs.get(&rest)).cloned()
            else {
                return status(404);
            };
            let mut h = HeaderMap::new();
            h.insert("content-length", bytes.len().into());
            h.insert("docker-content-digest", rest.parse().unwrap());
            if op == Op::HeadBlob {
                return (h, Body::empty()).into_response();
            }
            drop(s);
            let from = headers
                .get("range")
                .and_then(|v| v.to_str().ok()?.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok());
            if let Some(from) = from.filter(|&f| f > 0 && f < bytes.len() && fault.is_none()) {
                h.insert("content-length", (bytes.len() - from).into());
                h.insert("content-range", format!("bytes {from}-{}/{}", bytes.len() - 1, bytes.len()).parse().unwrap());
                return (StatusCode::PARTIAL_CONTENT, h, Body::from(bytes.slice(from..))).into_response();
            }
            match fault {
                Some(Fault::ResetMidBody) => {
                    let half = bytes.slice(..bytes.len() / 2);
                    let chunks: Vec<Result<Bytes, std::io::Error>> =
                        vec![Ok(half), Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected reset"))];
                    (h, Body::from_stream(stream::iter(chunks))).into_response()
                }
                Some(Fault::Slow(pause)) => {
                    let pieces: Vec<Bytes> = bytes.chunks(4096).map(Bytes::copy_from_slice).collect();
                    let s = stream::unfold(pieces.into_iter(), move |mut it| async move {
                        let next = it.next()?;
                        tokio::time::sleep(pause).await;
                        Some((Ok::<_, std::io::Error>(next), it))
                    });
                    (h, Body::from_stream(s)).into_response()
                }
                Some(Fault::Hold(pause)) => {
                    let body = stream::once(async move {
                        tokio::time::sleep(pause).await;
                        Ok::<_, std::io::Error>(bytes)
                    });
                    (h, Body::from_stream(body)).into_response()
                }
                Some(Fault::Endless) => {
                    h.remove("content-length");
                    (h, endless()).into_response()
                }
                Some(Fault::Longer) => {
                    let mut v = bytes.to_vec();
                    v.extend_from_slice(b"and some more bytes than the descriptor says");
                    let mut h = HeaderMap::new();
                    h.insert("content-length", v.len().into());
                    (h, Body::from(v)).into_response()
                }
                Some(Fault::LongerUnannounced) => {
                    // One chunk across the descriptor's end: the bytes up to
                    // it are right, so only counting can tell.
                    let mut v = bytes.to_vec();
                    v.extend_from_slice(b"and some more bytes than the descriptor says");
                    let chunks = vec![Ok::<_, std::io::Error>(Bytes::from(v))];
                    (HeaderMap::new(), Body::from_stream(stream::iter(chunks))).into_response()
                }
                Some(Fault::Corrupt) => {
                    let mut v = bytes.to_vec();
                    v[0] ^= 0xff;
                    (h, Body::from(v)).into_response()
                }
                _ => (h, Body::from(bytes)).into_response(),
            }
        }
        Op::StartUpload => {
            if let (Some(d), Some(from)) = (q.get("mount"), q.get("from")) {
                s.mount_requests += 1;
                if let Some((code, body)) = s.mount_refusal {
                    let json = [("content-type", "application/json")];
                    return (StatusCode::from_u16(code).unwrap(), json, body).into_response();
                }
                let known = s.links.get(from).is_some_and(|l| l.contains(d));
                if known && !s.mount_202 {
                    s.links.entry(repo.clone()).or_default().insert(d.clone());
                    return (StatusCode::CREATED, [("location", format!("/v2/{repo}/blobs/{d}"))]).into_response();
                }
            }
            let id = format!("u{}", s.next);
            s.next += 1;
            s.uploads.insert(id.clone(), repo.clone());
            let mut h = HeaderMap::new();
            h.insert("location", format!("/v2/{repo}/blobs/uploads/{id}").parse().unwrap());
            if let Some(min) = s.chunk_min {
                h.insert("oci-chunk-min-length", min.into());
            }
            (StatusCode::ACCEPTED, h).into_response()
        }
        Op::PatchUpload => {
            if s.max_body.is_some_and(|m| body.len() > m) {
                return status(413);
            }
            if !s.uploads.contains_key(&rest) {
                return status(404);
            }
            let have = s.upload_data.get(&rest).map_or(0, Vec::len);
            let range = headers.get("content-range").and_then(|v| v.to_str().ok()).unwrap_or("");
            let expected = format!("{have}-{}", have + body.len() - 1);
            if body.is_empty() || range != expected {
                return (StatusCode::RANGE_NOT_SATISFIABLE, [("range", format!("0-{}", have.saturating_sub(1)))])
                    .into_response();
            }
            s.patch_sizes.push(body.len());
            let data = s.upload_data.entry(rest.clone()).or_default();
            data.extend_from_slice(&body);
            let len = data.len();
            let mut h = HeaderMap::new();
            h.insert("location", format!("/v2/{repo}/blobs/uploads/{rest}").parse().unwrap());
            h.insert("range", format!("0-{}", len - 1).parse().unwrap());
            (StatusCode::ACCEPTED, h).into_response()
        }
        Op::PutUpload => {
            let Some(digest) = q.get("digest") else { return status(400) };
            if s.max_body.is_some_and(|m| body.len() > m) {
                return status(413);
            }
            if s.uploads.remove(&rest).is_none() {
                return status(404);
            }
            let mut data = s.upload_data.remove(&rest).unwrap_or_default();
            data.extend_from_slice(&body);
            let body = Bytes::from(data);
            if !s.any_digest && &sha256(&body) != digest {
                return (StatusCode::BAD_REQUEST, "DIGEST_INVALID").into_response();
            }
            s.blobs.insert(digest.clone(), body);
            s.links.entry(repo).or_default().insert(digest.clone());
            status(201)
        }
        Op::Other => {
            if method == Method::DELETE && rest.starts_with('u') {
                s.uploads.remove(&rest);
                return status(204);
            }
            status(404)
        }
        Op::Token => unreachable!("answered above"),
        Op::HarborArtifact => {
            let Some(m) = s.manifests.get(&repo) else { return status(404) };
            let mut tags: Vec<&String> =
                m.iter().filter(|(r, (_, b))| !r.starts_with("sha256:") && sha256(b) == rest).map(|(r, _)| r).collect();
            if tags.is_empty() && !m.contains_key(&rest) {
                return status(404);
            }
            tags.sort();
            let tags: Vec<_> = tags.iter().map(|t| serde_json::json!({"name": t})).collect();
            let labels = s.labels.get(&(repo.clone(), rest.clone())).cloned().unwrap_or_default();
            let labels: Vec<_> = labels.iter().map(|l| serde_json::json!({"name": l})).collect();
            let kind = m.get(&rest).map(harbor_type);
            let body = serde_json::json!({"digest": rest, "type": kind, "tags": tags, "labels": labels}).to_string();
            ([("content-type", "application/json")], body).into_response()
        }
        Op::HarborList => harbor_list(&s, &path, &q),
        Op::HarborWebhook => harbor_webhook(&mut s, &method, &path, &body, &q),
    }
}

/// Harbor's id of `project` (stable: derived from its name).
pub fn project_id(project: &str) -> i64 {
    i64::from_str_radix(&sha256(project.as_bytes())["sha256:".len()..][..12], 16).unwrap()
}

/// Every project: those holding repositories and the empty ones.
fn projects(s: &Store) -> Vec<String> {
    let mut projects: Vec<String> = s.manifests.keys().filter_map(|r| r.split('/').next()).map(str::to_owned).collect();
    projects.extend(s.empty_projects.iter().cloned());
    projects.sort();
    projects.dedup();
    projects
}

/// `/api/v2.0/projects/{id}/webhook/policies[/{policy id}]`: GET lists,
/// POST creates (201), PUT replaces (200), DELETE removes (200; 404 when
/// absent); a body that does not fit
/// Harbor's `WebhookPolicy` schema (API v2.0) gets 400 with the reasons.
fn harbor_webhook(s: &mut Store, method: &Method, path: &str, body: &[u8], q: &HashMap<String, String>) -> Response {
    let rest = path.trim_start_matches("/api/v2.0/projects/");
    let parts: Vec<&str> = rest.split('/').collect();
    let Some(pid) = parts.first().and_then(|p| p.parse::<i64>().ok()) else { return status(404) };
    if !projects(s).iter().any(|p| project_id(p) == pid) {
        return status(404);
    }
    // The body as JSON, or why Harbor would refuse it.
    let parsed = || -> Result<serde_json::Value, String> {
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let errors = webhook_policy_errors(&v);
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(v)
    };
    match (method.as_str(), &parts[1..]) {
        ("GET", ["webhook", "policies"]) => {
            let items: Vec<&serde_json::Value> =
                s.webhook_policies.iter().filter(|(p, _)| *p == pid).map(|(_, v)| v).collect();
            page_of(items, q)
        }
        ("POST", ["webhook", "policies"]) => {
            let mut v = match parsed() {
                Ok(v) => v,
                Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
            };
            s.next += 1;
            v["id"] = s.next.into();
            v["project_id"] = pid.into();
            v["creator"] = "admin".into();
            s.webhook_policies.push((pid, v));
            status(201)
        }
        ("PUT", ["webhook", "policies", id]) => {
            let mut v = match parsed() {
                Ok(v) => v,
                Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
            };
            let Some(slot) = s
                .webhook_policies
                .iter_mut()
                .find(|(p, old)| *p == pid && old["id"].as_u64().map(|i| i.to_string()).as_deref() == Some(*id))
            else {
                return status(404);
            };
            v["id"] = slot.1["id"].clone();
            v["project_id"] = pid.into();
            slot.1 = v;
            status(200)
        }
        ("DELETE", ["webhook", "policies", id]) => {
            let before = s.webhook_policies.len();
            s.webhook_policies
                .retain(|(p, old)| !(*p == pid && old["id"].as_u64().map(|i| i.to_string()).as_deref() == Some(*id)));
            status(if s.webhook_policies.len() < before { 200 } else { 404 })
        }
        _ => status(405),
    }
}

/// Where `v` departs from Harbor's `WebhookPolicy` (swagger v2.0: property
/// names and types, no others) and from what Harbor then accepts (a name,
/// known event types, an http target with an address, a known format).
pub fn webhook_policy_errors(v: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    let mut errors = Vec::new();
    let Some(o) = v.as_object() else { return vec!["not an object".into()] };
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let policy_types = [
        ("id", "integer"),
        ("name", "string"),
        ("description", "string"),
        ("project_id", "integer"),
        ("targets", "array"),
        ("event_types", "array"),
        ("creator", "string"),
        ("creation_time", "string"),
        ("update_time", "string"),
        ("enabled", "boolean"),
    ];
    for (k, val) in o {
        match policy_types.iter().find(|(n, _)| n == k) {
            None => errors.push(format!("unknown property {k}")),
            Some((_, t)) if kind(val) != *t => errors.push(format!("{k} is {}, not {t}", kind(val))),
            _ => {}
        }
    }
    if o.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
        errors.push("name missing".into());
    }
    const EVENTS: [&str; 13] = [
        "PUSH_ARTIFACT",
        "PULL_ARTIFACT",
        "DELETE_ARTIFACT",
        "SCANNING_FAILED",
        "SCANNING_COMPLETED",
        "SCANNING_STOPPED",
        "QUOTA_EXCEED",
        "QUOTA_WARNING",
        "REPLICATION",
        "TAG_RETENTION",
        "PROJECT_QUOTA",
        "DELETE_REPOSITORY",
        "IMAGE_SCAN",
    ];
    for e in o.get("event_types").and_then(Value::as_array).into_iter().flatten() {
        if !e.as_str().is_some_and(|e| EVENTS.contains(&e)) {
            errors.push(format!("unknown event type {e}"));
        }
    }
    let target_types = [
        ("type", "string"),
        ("address", "string"),
        ("auth_header", "string"),
        ("skip_cert_verify", "boolean"),
        ("payload_format", "string"),
    ];
    for t in o.get("targets").and_then(Value::as_array).into_iter().flatten() {
        let Some(t) = t.as_object() else {
            errors.push("a target is not an object".into());
            continue;
        };
        for (k, val) in t {
            match target_types.iter().find(|(n, _)| n == k) {
                None => errors.push(format!("unknown target property {k}")),
                Some((_, ty)) if kind(val) != *ty => errors.push(format!("target {k} is {}, not {ty}", kind(val))),
                _ => {}
            }
        }
        if !t.get("type").and_then(Value::as_str).is_some_and(|k| ["http", "slack", "teams"].contains(&k)) {
            errors.push("target type must be http, slack or teams".into());
        }
        if t.get("address").and_then(Value::as_str).is_none_or(|a| url::Url::parse(a).is_err()) {
            errors.push("target address is not a URL".into());
        }
        if let Some(f) = t.get("payload_format").and_then(Value::as_str) {
            if !["Default", "CloudEvents"].contains(&f) {
                errors.push(format!("unknown payload format {f}"));
            }
        }
    }
    errors
}

/// 64 KiB pieces forever.
fn endless() -> Body {
    let piece = Bytes::from(vec![b'x'; 64 * 1024]);
    Body::from_stream(stream::repeat_with(move || Ok::<_, std::io::Error>(piece.clone())))
}

/// Harbor's list endpoints over the store, paginated with `page` (from 1)
/// and `page_size` as Harbor does, with the `X-Total-Count` header.
fn harbor_list(s: &Store, path: &str, q: &HashMap<String, String>) -> Response {
    let rest = path.trim_start_matches("/api/v2.0/projects").trim_start_matches('/');
    let parts: Vec<&str> = rest.split('/').collect();
    let named = |n: &str| serde_json::json!({ "name": n });
    let mut repos: Vec<&String> = s.manifests.keys().collect();
    repos.sort();
    let items: Vec<serde_json::Value> = match parts.as_slice() {
        [""] => projects(s).iter().map(|p| serde_json::json!({ "name": p, "project_id": project_id(p) })).collect(),
        [project, "repositories"] => {
            repos.iter().filter(|r| r.split('/').next() == Some(project)).map(|r| named(r)).collect()
        }
        [project, "repositories", name, "artifacts", rest @ ..] => {
            let repo = format!("{project}/{}", name.replace("%252F", "/"));
            let Some(m) = s.manifests.get(&repo) else { return status(404) };
            let tags_of = |digest: &str| {
                let mut t: Vec<&String> = m
                    .iter()
                    .filter(|(r, (_, b))| !r.starts_with("sha256:") && sha256(b) == digest)
                    .map(|(r, _)| r)
                    .collect();
                t.sort();
                t.into_iter().map(|t| named(t)).collect::<Vec<_>>()
            };
            match rest {
                [digest, "tags"] => tags_of(digest),
                [] => {
                    // Top-level artifacts only: Harbor hides an index's children.
                    let children: std::collections::HashSet<String> = m
                        .values()
                        .filter_map(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).ok())
                        .flat_map(|v| v["manifests"].as_array().cloned().unwrap_or_default())
                        .filter_map(|c| c["digest"].as_str().map(str::to_owned))
                        .collect();
                    // Manifests with a `subject` are accessories of it, not artifacts.
                    let subject_of = |d: &String| {
                        let (_, b) = &m[d];
                        let v: serde_json::Value = serde_json::from_slice(b).unwrap_or_default();
                        v["subject"]["digest"].as_str().map(str::to_owned)
                    };
                    let mut digests: Vec<&String> = m
                        .keys()
                        .filter(|r| r.starts_with("sha256:") && !children.contains(*r) && subject_of(r).is_none())
                        .collect();
                    digests.sort();
                    digests
                        .into_iter()
                        .map(|d| {
                            let labels = s.labels.get(&(repo.clone(), d.clone())).cloned().unwrap_or_default();
                            let labels: Vec<_> = labels.iter().map(|l| named(l)).collect();
                            let accessories: Vec<_> = m
                                .keys()
                                .filter(|r| r.starts_with("sha256:") && subject_of(r).as_ref() == Some(d))
                                .map(|a| serde_json::json!({ "digest": a, "type": "signature.cosign" }))
                                .collect();
                            serde_json::json!({ "digest": d, "type": harbor_type(&m[d]), "tags": tags_of(d), "labels": labels, "accessories": accessories })
                        })
                        .collect()
                }
                _ => return status(404),
            }
        }
        _ => return status(404),
    };
    page_of(items, q)
}

/// One page of a Harbor list (`page` from 1, `page_size`), with the
/// `X-Total-Count` header, as Harbor answers.
fn page_of<T: serde::Serialize>(items: Vec<T>, q: &HashMap<String, String>) -> Response {
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    let size: usize = q.get("page_size").and_then(|p| p.parse().ok()).unwrap_or(10).clamp(1, 100);
    let total = items.len();
    let body: Vec<_> = items.into_iter().skip((page - 1) * size).take(size).collect();
    let body = serde_json::to_string(&body).unwrap();
    ([("content-type", "application/json"), ("x-total-count", &total.to_string())], body).into_response()
}

/// (kind, repository, last path element) of a request.
fn classify(method: &Method, path: &str) -> (Op, String, String) {
    if let Some(rest) = path.strip_prefix("/api/v2.0/projects/") {
        // {project}/repositories/{name, '/' encoded twice}/artifacts/{digest}
        let parts: Vec<&str> = rest.split('/').collect();
        if let [project, "repositories", name, "artifacts", digest] = parts.as_slice() {
            return (Op::HarborArtifact, format!("{project}/{}", name.replace("%252F", "/")), (*digest).to_owned());
        }
    }
    if path.starts_with("/api/v2.0/projects") && path.contains("/webhook/policies") {
        return (Op::HarborWebhook, String::new(), String::new());
    }
    if path.starts_with("/api/v2.0/projects") {
        return (Op::HarborList, String::new(), String::new());
    }
    if path == "/token" {
        return (Op::Token, String::new(), String::new());
    }
    if path == "/v2/" || path == "/v2" {
        return (Op::Ping, String::new(), String::new());
    }
    let Some(rest) = path.strip_prefix("/v2/") else { return (Op::Other, String::new(), String::new()) };
    if *method == Method::PATCH {
        if let Some(i) = rest.find("/blobs/uploads/") {
            return (Op::PatchUpload, rest[..i].to_owned(), rest[i + "/blobs/uploads/".len()..].to_owned());
        }
    }
    for (marker, get, head, put, post) in [
        ("/blobs/uploads/", Op::Other, Op::Other, Op::PutUpload, Op::StartUpload),
        ("/manifests/", Op::GetManifest, Op::HeadManifest, Op::PutManifest, Op::Other),
        ("/referrers/", Op::Referrers, Op::Other, Op::Other, Op::Other),
        ("/blobs/", Op::GetBlob, Op::HeadBlob, Op::Other, Op::Other),
    ] {
        if let Some(i) = rest.find(marker) {
            let repo = rest[..i].to_owned();
            let last = rest[i + marker.len()..].to_owned();
            let op = match *method {
                Method::GET => get,
                Method::HEAD => head,
                Method::PUT => put,
                Method::POST => post,
                _ => Op::Other,
            };
            return (op, repo, last);
        }
    }
    (Op::Other, String::new(), String::new())
}
