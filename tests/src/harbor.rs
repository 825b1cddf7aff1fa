//! A Harbor for destination tests: Harbor's project API (`HEAD`, `GET` and
//! `POST /api/v2.0/projects`, a project's immutable tag rules, its tag
//! retention policy) answered here, everything under `/v2/` passed through
//! to a real registry behind it, streaming, as Harbor's core passes it to
//! its distribution — except the push of a manifest onto an existing tag an
//! immutable rule covers, which Harbor's immutable middleware refuses with
//! 412 `PRECONDITION`. Records the requests in order, so a test can check a
//! project was created before the first push and what the creation asked
//! for.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;

#[derive(Default)]
struct Inner {
    projects: HashSet<String>,
    /// `METHOD path` of every request, in arrival order.
    log: Vec<String>,
    /// Bodies of the project creations.
    created: Vec<serde_json::Value>,
    /// Whether the account may create projects (else 403, as Harbor).
    may_create: bool,
    /// Per project: the tag pattern of an immutable rule (`*` ends a
    /// prefix, else the exact tag), as Harbor lists it.
    immutable: HashMap<String, String>,
    /// Per project: a retention policy (Harbor's `RetentionPolicy`).
    retention: HashMap<String, serde_json::Value>,
}

#[derive(Clone)]
pub struct FakeHarbor {
    pub url: String,
    upstream: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeHarbor {
    /// In front of the registry at `upstream`; `may_create`: whether the
    /// account is allowed to create projects.
    pub async fn start(upstream: &str, may_create: bool) -> FakeHarbor {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let inner = Inner { may_create, ..Default::default() };
        let harbor =
            FakeHarbor { url, upstream: upstream.trim_end_matches('/').to_owned(), inner: Arc::new(Mutex::new(inner)) };
        let app = axum::Router::new().fallback(handle).with_state(harbor.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        harbor
    }

    pub fn log(&self) -> Vec<String> {
        self.inner.lock().unwrap().log.clone()
    }

    pub fn created(&self) -> Vec<serde_json::Value> {
        self.inner.lock().unwrap().created.clone()
    }

    pub fn has_project(&self, name: &str) -> bool {
        self.inner.lock().unwrap().projects.contains(name)
    }

    pub fn add_project(&self, name: &str) {
        self.inner.lock().unwrap().projects.insert(name.to_owned());
    }

    /// An immutable tag rule in `project` over every repository and the
    /// tags `pattern` selects (`v*`: a prefix; else one tag).
    pub fn make_immutable(&self, project: &str, pattern: &str) {
        self.inner.lock().unwrap().immutable.insert(project.to_owned(), pattern.to_owned());
    }

    /// A tag retention policy (Harbor's `RetentionPolicy` body) on `project`.
    pub fn set_retention(&self, project: &str, policy: serde_json::Value) {
        self.inner.lock().unwrap().retention.insert(project.to_owned(), policy);
    }
}

/// Project ids as Harbor numbers them: stable, from the name's order of
/// creation is not needed here, so from its position in a sorted list.
fn id_of(s: &Inner, project: &str) -> i64 {
    let mut names: Vec<&String> = s.projects.iter().collect();
    names.sort();
    names.iter().position(|n| *n == project).map_or(0, |i| i as i64 + 1)
}

/// `GET /api/v2.0/projects[/{name}[/immutabletagrules]]` and
/// `GET /api/v2.0/retentions/{id}`, as Harbor answers them.
fn harbor_get(h: &FakeHarbor, path: &str) -> Response {
    let s = h.inner.lock().unwrap();
    let json = |v: serde_json::Value| ([("content-type", "application/json")], v.to_string()).into_response();
    let parts: Vec<&str> = path.trim_start_matches("/api/v2.0/").split('/').collect();
    match parts.as_slice() {
        ["projects"] => {
            let mut names: Vec<&String> = s.projects.iter().collect();
            names.sort();
            json(serde_json::json!(names
                .iter()
                .map(|n| serde_json::json!({ "project_id": id_of(&s, n), "name": n }))
                .collect::<Vec<_>>()))
        }
        ["projects", name] if s.projects.contains(*name) => {
            let mut metadata = serde_json::json!({ "public": "false" });
            if s.retention.contains_key(*name) {
                metadata["retention_id"] = (100 + id_of(&s, name)).to_string().into();
            }
            json(serde_json::json!({ "project_id": id_of(&s, name), "name": name, "metadata": metadata }))
        }
        ["projects", name, "immutabletagrules"] if s.projects.contains(*name) => {
            json(serde_json::json!(s.immutable.get(*name).map(|pattern| serde_json::json!({
                "id": 1, "priority": 0, "disabled": false, "action": "immutable", "template": "immutable_template",
                "tag_selectors": [{ "kind": "doublestar", "decoration": "matches", "pattern": pattern }],
                "scope_selectors": { "repository": [{ "kind": "doublestar", "decoration": "repoMatches", "pattern": "**" }] }
            })).into_iter().collect::<Vec<_>>()))
        }
        ["retentions", id] => {
            let found = s.retention.iter().find(|(name, _)| (100 + id_of(&s, name)).to_string() == *id);
            match found {
                Some((_, policy)) => json(policy.clone()),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Harbor's immutable middleware: a manifest `PUT` onto a tag an
/// immutable rule covers is refused when the tag exists already.
async fn refused_as_immutable(
    h: &FakeHarbor,
    method: &axum::http::Method,
    path: &str,
    authorization: Option<HeaderValue>,
) -> Option<Response> {
    if method != axum::http::Method::PUT {
        return None;
    }
    let path = path.trim_start_matches("/v2/");
    let (repo, tag) = path.split_once("/manifests/")?;
    let project = repo.split('/').next()?;
    let pattern = h.inner.lock().unwrap().immutable.get(project).cloned()?;
    let covered = match pattern.strip_suffix('*') {
        Some(prefix) => tag.starts_with(prefix),
        None => tag == pattern,
    };
    if !covered || tag.contains(':') {
        return None;
    }
    let existing = format!("{}/v2/{repo}/manifests/{tag}", h.upstream);
    let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
    let mut head = reqwest::Client::new().head(existing).header("accept", accept);
    if let Some(a) = authorization {
        head = head.header("authorization", a);
    }
    let found = head.send().await.ok()?;
    if !found.status().is_success() {
        return None;
    }
    let name = repo.split_once('/').map_or(repo, |(_, rest)| rest);
    let body = format!(
        r#"{{"errors":[{{"code":"PRECONDITION","message":"Failed to process request due to '{name}:{tag}' configured as immutable."}}]}}"#
    );
    Some((StatusCode::PRECONDITION_FAILED, [("content-type", "application/json")], body).into_response())
}

async fn handle(State(h): State<FakeHarbor>, req: Request) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    h.inner.lock().unwrap().log.push(format!("{method} {path}"));
    if path == "/api/v2.0/projects" && method != axum::http::Method::GET {
        return projects(&h, req).await;
    }
    if method == axum::http::Method::GET && path.starts_with("/api/v2.0/") {
        if req.headers().get("authorization").is_none() {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        return harbor_get(&h, &path);
    }
    if path.starts_with("/v2/") {
        let authorization = req.headers().get("authorization").cloned();
        if let Some(refused) = refused_as_immutable(&h, &method, &path, authorization).await {
            return refused;
        }
        return forward(&h, req).await;
    }
    StatusCode::NOT_FOUND.into_response()
}

async fn projects(h: &FakeHarbor, req: Request) -> Response {
    if req.headers().get("authorization").is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let query = req.uri().query().unwrap_or_default().to_owned();
    if req.method() == axum::http::Method::HEAD {
        let name = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "project_name")
            .map(|(_, v)| v.into_owned());
        let known = name.is_some_and(|n| h.inner.lock().unwrap().projects.contains(&n));
        return if known { StatusCode::OK } else { StatusCode::NOT_FOUND }.into_response();
    }
    let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut s = h.inner.lock().unwrap();
    if !s.may_create {
        return (StatusCode::FORBIDDEN, r#"{"errors":[{"code":"FORBIDDEN","message":"forbidden"}]}"#).into_response();
    }
    let Some(name) = v["project_name"].as_str().map(str::to_owned) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    s.created.push(v);
    if !s.projects.insert(name) {
        return StatusCode::CONFLICT.into_response();
    }
    StatusCode::CREATED.into_response()
}

/// Passes the request to the registry (Host kept, so the `Location` it
/// builds points back here) and streams the answer back.
async fn forward(h: &FakeHarbor, req: Request) -> Response {
    let project = req.uri().path().trim_start_matches("/v2/").split('/').next().unwrap_or_default().to_owned();
    let writes = !matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    if writes && !project.is_empty() && !h.inner.lock().unwrap().projects.contains(&project) {
        // Harbor refuses a push into a project that does not exist.
        return (StatusCode::NOT_FOUND, r#"{"errors":[{"code":"NOT_FOUND","message":"project not found"}]}"#)
            .into_response();
    }
    let uri = format!("{}{}", h.upstream, req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let (parts, body) = req.into_parts();
    let mut out = http.request(parts.method.clone(), uri);
    for (k, v) in parts.headers.iter() {
        out = out.header(k, v);
    }
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    let resp = match out.body(body).send().await {
        Ok(r) => r,
        Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
    };
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        builder = builder.header(k.as_str(), HeaderValue::from_bytes(v.as_bytes()).unwrap());
    }
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    builder.body(Body::from_stream(stream)).unwrap()
}
