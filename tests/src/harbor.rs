//! A Harbor for destination tests: Harbor's project API (`HEAD` and `POST
//! /api/v2.0/projects`) answered here, everything under `/v2/` passed
//! through to a real registry behind it, streaming, as Harbor's core passes
//! it to its distribution. Records the requests in order, so a test can
//! check a project was created before the first push and what the creation
//! asked for.

use std::collections::HashSet;
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
}

async fn handle(State(h): State<FakeHarbor>, req: Request) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    h.inner.lock().unwrap().log.push(format!("{method} {path}"));
    if path == "/api/v2.0/projects" {
        return projects(&h, req).await;
    }
    if path.starts_with("/v2/") {
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
