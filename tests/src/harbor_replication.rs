//! Harbor's replication set-up behind its REST API, for `relay harbor
//! import`: `GET /api/v2.0/registries` and `GET /api/v2.0/replication/policies`
//! answered from a version's recorded bodies (`tests/fixtures/harbor/api/`),
//! paginated as Harbor paginates (`page` from 1, `page_size` at most 100,
//! `X-Total-Count` and a `Link` to the next page), for a system
//! administrator only: other accounts get 403, a wrong password 401. On
//! 127.0.0.1, stopped with the test's runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;

/// The account allowed to list them, and its password.
pub const ADMIN: (&str, &str) = ("admin", "Harbor12345-import");
/// An account Harbor knows that lacks the rights (a project robot).
pub const ROBOT: (&str, &str) = ("robot$project+relay", "robot-password-1234");

#[derive(Clone)]
pub struct HarborReplication {
    pub url: String,
    registries: Arc<Vec<serde_json::Value>>,
    policies: Arc<Vec<serde_json::Value>>,
    /// `path?query` of every request, in arrival order.
    log: Arc<Mutex<Vec<String>>>,
}

impl HarborReplication {
    /// Harbor `version`'s recorded bodies, with `more_policies` simple
    /// event-based policies into the first registry added (to page past
    /// Harbor's 100 per page).
    pub async fn start(version: &str, more_policies: usize) -> HarborReplication {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/harbor/api");
        let read = |name: &str| -> Vec<serde_json::Value> {
            let text = std::fs::read_to_string(format!("{dir}/{version}/{name}.json")).expect("a recorded body");
            serde_json::from_str(&text).expect("a JSON list")
        };
        let registries = read("registries");
        let mut policies = read("replication-policies");
        let template = policies[0].clone();
        for n in 0..more_policies {
            let mut p = template.clone();
            p["id"] = (1000 + n).into();
            p["name"] = format!("generated-{n:03}").into();
            p["filters"] = serde_json::json!([{ "type": "name", "value": format!("team{n:03}/**") }]);
            policies.push(p);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind on loopback");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let harbor = HarborReplication {
            url,
            registries: Arc::new(registries),
            policies: Arc::new(policies),
            log: Default::default(),
        };
        let app = axum::Router::new().fallback(handle).with_state(harbor.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        harbor
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// How many policies it holds.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }
}

async fn handle(State(h): State<HarborReplication>, req: Request) -> Response {
    let uri = req.uri().clone();
    h.log.lock().unwrap().push(uri.to_string());
    let account = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    match account.as_deref().and_then(|a| a.split_once(':')) {
        Some(a) if a == ADMIN => {}
        Some(a) if a == ROBOT => return forbidden(),
        _ => {
            return (StatusCode::UNAUTHORIZED, r#"{"errors":[{"code":"UNAUTHORIZED","message":"unauthorized"}]}"#)
                .into_response()
        }
    }
    let items = match uri.path() {
        "/api/v2.0/registries" => &h.registries,
        "/api/v2.0/replication/policies" => &h.policies,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let q: HashMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).filter(|&p| p >= 1).unwrap_or(1);
    let size: usize = q.get("page_size").and_then(|p| p.parse().ok()).unwrap_or(10);
    if size > 100 {
        return (StatusCode::BAD_REQUEST, r#"{"errors":[{"code":"BAD_REQUEST","message":"page_size > 100"}]}"#)
            .into_response();
    }
    let body: Vec<_> = items.iter().skip((page - 1) * size).take(size).cloned().collect();
    let json = serde_json::to_vec(&body).expect("JSON");
    let mut resp = ([("content-type", "application/json")], json).into_response();
    resp.headers_mut().insert("x-total-count", HeaderValue::from(items.len()));
    if page * size < items.len() {
        let next = format!("<{}?page={}&page_size={size}>; rel=\"next\"", uri.path(), page + 1);
        resp.headers_mut().insert("link", HeaderValue::from_str(&next).expect("a header value"));
    }
    resp
}

fn forbidden() -> Response {
    (StatusCode::FORBIDDEN, r#"{"errors":[{"code":"FORBIDDEN","message":"forbidden"}]}"#).into_response()
}
