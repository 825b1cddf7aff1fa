//! A recording endpoint in front of the local AWS services, so a test can
//! list every AWS call a function made — service, IAM action, resource and
//! the principal that made it — and judge each against the function's role
//! ([`crate::iam`]). LocalStack and moto do not enforce IAM, so without this
//! a call the deployed role would refuse passes every test.
//!
//! Each function gets an endpoint of its own (`AWS_ENDPOINT_URL` and
//! `AWS_ENDPOINT_URL_ECR` for that process), so every call is tagged with
//! the function that made it. A request is forwarded by its SigV4 credential
//! scope: ECR's control plane to moto, everything else to LocalStack. A
//! registry proxy in front of the ECR stand-in's data plane records the
//! registry API calls as the IAM actions ECR authorises them by; its
//! function is the one the test says is running (the phase), since one
//! configuration names one registry URL for every function.
//!
//! Loopback only; the listeners stop with the test's runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde_json::Value;

/// Who made a call: the function's own role, or a role it assumed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Role,
    Assumed(String),
}

/// One AWS call as IAM sees it.
#[derive(Debug, Clone)]
pub struct Call {
    pub function: String,
    pub principal: Principal,
    /// The API operation (`SendMessageBatch`, `GET /v2/<name>/manifests/…`).
    pub operation: String,
    /// The IAM action it needs (`sqs:SendMessage`).
    pub action: String,
    /// The resource ARN IAM checks, or `*` for an action without one.
    pub resource: String,
    /// The answer's HTTP status.
    pub status: u16,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = match &self.principal {
            Principal::Role => self.function.clone(),
            Principal::Assumed(arn) => format!("{} as {arn}", self.function),
        };
        write!(f, "{who}: {} on {} ({}, {})", self.action, self.resource, self.operation, self.status)
    }
}

#[derive(Default)]
struct Shared {
    calls: Vec<Call>,
    /// Access keys STS handed out → the role they act as.
    assumed_keys: HashMap<String, String>,
    /// The function the test is running now (for the ECR data plane).
    phase: String,
}

/// The recorder: endpoints per function, the calls they saw.
#[derive(Clone)]
pub struct AwsRecorder {
    shared: Arc<Mutex<Shared>>,
    /// The account of the local services' default credentials.
    pub account: String,
    localstack: String,
    ecr: String,
    http: reqwest::Client,
}

#[derive(Clone)]
struct Endpoint {
    recorder: AwsRecorder,
    function: String,
}

/// A registry proxy in front of the ECR stand-in's data plane.
#[derive(Clone)]
struct DataPlane {
    recorder: AwsRecorder,
    upstream: String,
    own_url: String,
    region: String,
    account: String,
    principal: Principal,
}

impl AwsRecorder {
    /// A recorder forwarding to `AWS_ENDPOINT_URL` (LocalStack) and
    /// `AWS_ENDPOINT_URL_ECR` (moto), as `.local/stack/env` sets them.
    pub fn new(account: &str) -> AwsRecorder {
        let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set: load the stack first"));
        AwsRecorder {
            shared: Arc::default(),
            account: account.to_owned(),
            localstack: var("AWS_ENDPOINT_URL").trim_end_matches('/').to_owned(),
            ecr: var("AWS_ENDPOINT_URL_ECR").trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder().no_proxy().build().expect("HTTP client"),
        }
    }

    /// A fresh endpoint whose calls are `function`'s: give it to that
    /// function as `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_ECR`.
    pub async fn endpoint(&self, function: &str) -> String {
        let state = Endpoint { recorder: self.clone(), function: function.to_owned() };
        serve(axum::Router::new().fallback(aws_call).with_state(state)).await
    }

    /// The environment pointing a function's AWS calls at its endpoint.
    pub async fn env(&self, function: &str) -> Vec<(&'static str, String)> {
        let url = self.endpoint(function).await;
        vec![("AWS_ENDPOINT_URL", url.clone()), ("AWS_ENDPOINT_URL_ECR", url)]
    }

    /// A registry URL in front of `upstream`, an ECR stand-in's data plane
    /// for a registry in `region` of `account`, used as `principal`.
    pub async fn ecr_data_plane(&self, upstream: &str, region: &str, account: &str, principal: Principal) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let own_url = format!("http://{}", listener.local_addr().expect("address"));
        let state = DataPlane {
            recorder: self.clone(),
            upstream: upstream.trim_end_matches('/').to_owned(),
            own_url: own_url.clone(),
            region: region.to_owned(),
            account: account.to_owned(),
            principal,
        };
        let app = axum::Router::new().fallback(data_plane_call).with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        own_url
    }

    /// The function whose registry calls the ECR data plane sees from now on.
    pub fn set_phase(&self, function: &str) {
        self.shared.lock().unwrap().phase = function.to_owned();
    }

    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().unwrap().calls.clone()
    }

    fn record(&self, call: Call) {
        self.shared.lock().unwrap().calls.push(call);
    }

    async fn forward(&self, upstream: &str, method: Method, path: &str, headers: &HeaderMap, body: Bytes) -> Forwarded {
        let mut req = self.http.request(method, format!("{upstream}{path}")).body(body);
        for (k, v) in headers {
            if !matches!(k.as_str(), "host" | "content-length" | "connection" | "transfer-encoding") {
                req = req.header(k, v);
            }
        }
        match req.timeout(std::time::Duration::from_secs(60)).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = resp.bytes().await.unwrap_or_default();
                Forwarded { status, headers, body }
            }
            Err(e) => Forwarded { status: 502, headers: HeaderMap::new(), body: Bytes::from(e.to_string()) },
        }
    }
}

struct Forwarded {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Forwarded {
    fn into_response(self, rewrite: Option<(&str, &str)>) -> Response {
        let mut builder = Response::builder().status(self.status);
        for (k, v) in &self.headers {
            if matches!(k.as_str(), "content-length" | "connection" | "transfer-encoding") {
                continue;
            }
            match (k.as_str(), rewrite, v.to_str()) {
                // Upload sessions' locations lead back through the proxy.
                ("location", Some((from, to)), Ok(s)) => builder = builder.header(k, s.replace(from, to)),
                _ => builder = builder.header(k, v),
            }
        }
        builder.body(Body::from(self.body)).expect("response")
    }
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn aws_call(State(e): State<Endpoint>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    let header = |k: &str| parts.headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let scope = credential_scope(&header("authorization"));
    let (key, region, service) = scope.clone().unwrap_or_default();
    let upstream = if service == "ecr" { e.recorder.ecr.clone() } else { e.recorder.localstack.clone() };
    let answer = e.recorder.forward(&upstream, parts.method.clone(), &path, &parts.headers, body.clone()).await;
    let request = AwsRequest {
        service: &service,
        region: &region,
        account: &e.recorder.account,
        target: &header("x-amz-target"),
        method: &parts.method,
        path: &path,
        body: &body,
    };
    let principal = {
        let mut shared = e.recorder.shared.lock().unwrap();
        if let Some(new_key) = assumed_key(&request, &answer.body) {
            if let Some(role) = form(&body).get("RoleArn") {
                shared.assumed_keys.insert(new_key, role.clone());
            }
        }
        match shared.assumed_keys.get(&key) {
            Some(role) => Principal::Assumed(role.clone()),
            None => Principal::Role,
        }
    };
    let (operation, action, resource) = match scope {
        Some(_) => describe(&request, &answer.body),
        None => ("unsigned".into(), format!("unsigned request {} {path}", parts.method), "*".into()),
    };
    let status = answer.status;
    e.recorder.record(Call { function: e.function.clone(), principal, operation, action, resource, status });
    answer.into_response(None)
}

async fn data_plane_call(State(d): State<DataPlane>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    let answer = d.recorder.forward(&d.upstream, parts.method.clone(), &path, &parts.headers, body).await;
    let function = d.recorder.shared.lock().unwrap().phase.clone();
    for (action, repository) in ecr_registry_actions(&parts.method, &path) {
        let resource = format!("arn:aws:ecr:{}:{}:repository/{repository}", d.region, d.account);
        d.recorder.record(Call {
            function: function.clone(),
            principal: d.principal.clone(),
            operation: format!("{} {}", parts.method, path.split('?').next().unwrap_or_default()),
            action: action.to_owned(),
            resource,
            status: answer.status,
        });
    }
    answer.into_response(Some((&d.upstream, &d.own_url)))
}

/// (access key, region, service) of a SigV4 `Authorization` header.
pub fn credential_scope(authorization: &str) -> Option<(String, String, String)> {
    let credential = authorization.split("Credential=").nth(1)?.split([',', ' ']).next()?;
    let parts: Vec<&str> = credential.split('/').collect();
    match parts.as_slice() {
        [key, _date, region, service, "aws4_request"] => {
            Some(((*key).to_owned(), (*region).to_owned(), (*service).to_owned()))
        }
        _ => None,
    }
}

/// What [`describe`] needs of a request.
pub struct AwsRequest<'a> {
    pub service: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    /// `X-Amz-Target` (JSON protocols).
    pub target: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    pub body: &'a [u8],
}

fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// The access key an STS `AssumeRole` answer hands out.
fn assumed_key(r: &AwsRequest, answer: &[u8]) -> Option<String> {
    if r.service != "sts" {
        return None;
    }
    let text = String::from_utf8_lossy(answer);
    let after = text.split("<AccessKeyId>").nth(1)?;
    Some(after.split('<').next()?.trim().to_owned())
}

/// (operation, IAM action, resource ARN) of one AWS API request, from its
/// protocol: `X-Amz-Target` for the JSON protocols (SQS, SSM, Secrets
/// Manager, ECR, Logs), `Action=` for the query protocols (STS, SQS's old
/// one), method and path for S3. `answer` supplies what only AWS knows
/// (a secret's full ARN, suffix included).
pub fn describe(r: &AwsRequest, answer: &[u8]) -> (String, String, String) {
    let json: Value = serde_json::from_slice(r.body).unwrap_or(Value::Null);
    let query = form(r.body);
    let operation = match (r.target.rsplit_once('.'), query.get("Action")) {
        (Some((_, op)), _) => op.to_owned(),
        (None, Some(op)) => op.clone(),
        (None, None) if r.service == "s3" => return s3_call(r),
        (None, None) => format!("{} {}", r.method, r.path),
    };
    let field = |name: &str| json[name].as_str().map(str::to_owned).or_else(|| query.get(name).cloned());
    let (region, account) = (r.region, r.account);
    let action = format!("{}:{}", r.service, iam_action(&operation));
    let resource = match r.service {
        "sqs" => field("QueueUrl")
            .map(|url| {
                let mut segments = url.trim_end_matches('/').rsplit('/');
                let name = segments.next().unwrap_or_default().to_owned();
                let owner = segments.next().filter(|a| a.len() == 12).unwrap_or(account).to_owned();
                format!("arn:aws:sqs:{region}:{owner}:{name}")
            })
            .or_else(|| field("QueueName").map(|name| format!("arn:aws:sqs:{region}:{account}:{name}"))),
        "ssm" => field("Name").map(|name| {
            let name = if name.starts_with('/') { name } else { format!("/{name}") };
            format!("arn:aws:ssm:{region}:{account}:parameter{name}")
        }),
        // IAM checks the secret's full ARN (its random suffix included),
        // whatever the caller named it by: the answer carries it.
        "secretsmanager" => serde_json::from_slice::<Value>(answer)
            .ok()
            .and_then(|a| a["ARN"].as_str().map(str::to_owned))
            .or_else(|| field("SecretId").filter(|id| id.starts_with("arn:")))
            .or_else(|| field("SecretId").map(|id| format!("arn:aws:secretsmanager:{region}:{account}:secret:{id}"))),
        "ecr" => field("repositoryName").map(|name| {
            let owner = field("registryId").unwrap_or_else(|| account.to_owned());
            format!("arn:aws:ecr:{region}:{owner}:repository/{name}")
        }),
        "sts" => field("RoleArn"),
        "logs" => field("logGroupName").map(|g| match field("logStreamName") {
            Some(s) => format!("arn:aws:logs:{region}:{account}:log-group:{g}:log-stream:{s}"),
            None => format!("arn:aws:logs:{region}:{account}:log-group:{g}"),
        }),
        _ => None,
    };
    (operation, action, resource.unwrap_or_else(|| "*".into()))
}

/// The IAM action of an API operation where the two differ (the batch
/// forms are authorised as the single ones).
pub fn iam_action(operation: &str) -> &str {
    match operation {
        "SendMessageBatch" => "SendMessage",
        "DeleteMessageBatch" => "DeleteMessage",
        "ChangeMessageVisibilityBatch" => "ChangeMessageVisibility",
        other => other,
    }
}

/// S3's REST calls (path style): object reads, writes and deletes, and
/// listings, which IAM authorises on the bucket.
fn s3_call(r: &AwsRequest) -> (String, String, String) {
    let path = r.path.split('?').next().unwrap_or_default().trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    let (operation, action) = match (r.method.as_str(), key.is_empty()) {
        ("GET", true) => ("ListObjectsV2", "s3:ListBucket"),
        ("GET" | "HEAD", false) => ("GetObject", "s3:GetObject"),
        ("PUT", false) => ("PutObject", "s3:PutObject"),
        ("DELETE", false) => ("DeleteObject", "s3:DeleteObject"),
        ("POST", true) if r.path.contains("delete") => ("DeleteObjects", "s3:DeleteObject"),
        (m, _) => return (format!("{m} /{path}"), format!("s3:{m}"), format!("arn:aws:s3:::{path}")),
    };
    // IAM sees the key itself, not its percent-encoding in the path.
    let key = url::form_urlencoded::parse(format!("k={}", key.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, k)| k.into_owned())
        .unwrap_or_default();
    let resource =
        if key.is_empty() { format!("arn:aws:s3:::{bucket}") } else { format!("arn:aws:s3:::{bucket}/{key}") };
    (operation.into(), action.into(), resource)
}

/// The IAM actions ECR authorises a registry API request by, each with
/// the repository it is on (AWS's "Amazon ECR registry permissions" and
/// "pushing an image" pages): a manifest read `BatchGetImage`, a write
/// `PutImage`, a delete `BatchDeleteImage`; a blob's existence
/// `BatchCheckLayerAvailability`, its read `GetDownloadUrlForLayer`; an
/// upload `InitiateLayerUpload`, its parts `UploadLayerPart`, its end
/// `CompleteLayerUpload` (a mount also reads the repository it is from);
/// a tag list `ListImages`. `GET /v2/` needs the token only.
pub fn ecr_registry_actions(method: &Method, path_and_query: &str) -> Vec<(&'static str, String)> {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let Some(rest) = path.strip_prefix("/v2/") else { return vec![] };
    let q = form(query.as_bytes());
    let split = |marker: &str| rest.rsplit_once(marker).map(|(repo, tail)| (repo.to_owned(), tail.to_owned()));
    let m = method.as_str();
    if let Some((repo, _)) = split("/manifests/") {
        let action = match m {
            "GET" | "HEAD" => "ecr:BatchGetImage",
            "PUT" => "ecr:PutImage",
            "DELETE" => "ecr:BatchDeleteImage",
            _ => "ecr:UnknownManifestCall",
        };
        return vec![(action, repo)];
    }
    if let Some((repo, tail)) = split("/blobs/uploads/") {
        return match (m, tail.is_empty()) {
            ("POST", true) => {
                let mut actions = vec![("ecr:InitiateLayerUpload", repo)];
                if let Some(from) = q.get("from") {
                    actions.push(("ecr:GetDownloadUrlForLayer", from.clone()));
                }
                actions
            }
            ("PATCH", _) => vec![("ecr:UploadLayerPart", repo)],
            ("PUT", _) => vec![("ecr:UploadLayerPart", repo.clone()), ("ecr:CompleteLayerUpload", repo)],
            ("GET", _) => vec![("ecr:UploadLayerPart", repo)],
            _ => vec![("ecr:UnknownUploadCall", repo)],
        };
    }
    if let Some((repo, _)) = split("/blobs/") {
        let action = if m == "HEAD" { "ecr:BatchCheckLayerAvailability" } else { "ecr:GetDownloadUrlForLayer" };
        return vec![(action, repo)];
    }
    if let Some((repo, _)) = split("/tags/list") {
        return vec![("ecr:ListImages", repo)];
    }
    if let Some((repo, _)) = split("/referrers/") {
        return vec![("ecr:BatchGetImage", repo)];
    }
    if rest.is_empty() {
        return vec![];
    }
    vec![("ecr:UnknownRegistryCall", rest.to_owned())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(service: &'a str, target: &'a str, body: &'a [u8]) -> AwsRequest<'a> {
        AwsRequest {
            service,
            region: "us-east-1",
            account: "000000000000",
            target,
            method: &Method::POST,
            path: "/",
            body,
        }
    }

    #[test]
    fn the_scope_names_key_region_and_service() {
        let h = "AWS4-HMAC-SHA256 Credential=AKID/20261205/eu-west-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=ab";
        assert_eq!(credential_scope(h), Some(("AKID".into(), "eu-west-1".into(), "secretsmanager".into())));
        assert_eq!(credential_scope("Basic abc"), None);
    }

    #[test]
    fn calls_are_named_as_iam_names_them() {
        let body = br#"{"QueueUrl":"http://127.0.0.1:4566/000000000000/copy","Entries":[]}"#;
        let (op, action, resource) = describe(&req("sqs", "AmazonSQS.SendMessageBatch", body), b"");
        assert_eq!((op.as_str(), action.as_str()), ("SendMessageBatch", "sqs:SendMessage"));
        assert_eq!(resource, "arn:aws:sqs:us-east-1:000000000000:copy");
        let (_, action, resource) = describe(&req("ssm", "AmazonSSM.GetParameter", br#"{"Name":"/r/config"}"#), b"");
        assert_eq!(
            (action.as_str(), resource.as_str()),
            ("ssm:GetParameter", "arn:aws:ssm:us-east-1:000000000000:parameter/r/config")
        );
        // A secret named by its name is checked as its full ARN.
        let answer = br#"{"ARN":"arn:aws:secretsmanager:us-east-1:000000000000:secret:r/robot-AbCdEf"}"#;
        let (_, _, resource) =
            describe(&req("secretsmanager", "secretsmanager.GetSecretValue", br#"{"SecretId":"r/robot"}"#), answer);
        assert_eq!(resource, "arn:aws:secretsmanager:us-east-1:000000000000:secret:r/robot-AbCdEf");
        let (_, action, resource) = describe(
            &req("sts", "", b"Action=AssumeRole&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fx&Version=2011-06-15"),
            b"",
        );
        assert_eq!((action.as_str(), resource.as_str()), ("sts:AssumeRole", "arn:aws:iam::1:role/x"));
        let body = br#"{"repositoryName":"mirror/app","registryId":"123456789012"}"#;
        let (_, action, resource) =
            describe(&req("ecr", "AmazonEC2ContainerRegistry_V20150921.CreateRepository", body), b"");
        assert_eq!(
            (action.as_str(), resource.as_str()),
            ("ecr:CreateRepository", "arn:aws:ecr:us-east-1:123456789012:repository/mirror/app")
        );
        let s3 = AwsRequest { method: &Method::GET, path: "/records?list-type=2", ..req("s3", "", b"") };
        assert_eq!(describe(&s3, b"").1, "s3:ListBucket");
        let s3 = AwsRequest { method: &Method::PUT, path: "/records/dst/a/b%3Av1", ..req("s3", "", b"") };
        assert_eq!(describe(&s3, b"").2, "arn:aws:s3:::records/dst/a/b:v1");
    }

    #[test]
    fn registry_calls_map_to_ecr_actions() {
        let a = ecr_registry_actions(&Method::POST, "/v2/mirror/app/blobs/uploads/?mount=sha256:1&from=mirror/base");
        assert_eq!(
            a,
            vec![
                ("ecr:InitiateLayerUpload", "mirror/app".into()),
                ("ecr:GetDownloadUrlForLayer", "mirror/base".into())
            ]
        );
        assert_eq!(
            ecr_registry_actions(&Method::HEAD, "/v2/a/b/manifests/v1"),
            vec![("ecr:BatchGetImage", "a/b".into())]
        );
        assert_eq!(
            ecr_registry_actions(&Method::HEAD, "/v2/a/blobs/sha256:1"),
            vec![("ecr:BatchCheckLayerAvailability", "a".into())]
        );
        assert_eq!(ecr_registry_actions(&Method::GET, "/v2/"), vec![]);
    }
}
