//! The webhook through its standalone HTTP server against LocalStack SQS:
//! both payload formats, event types, rules and fan-out, the untagged
//! delay, label and resource filters through (a fake of) Harbor's API, auth values from
//! Secrets Manager, and 503 when the queue is unavailable or silent.

use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::get;
use relay_tests::app::{unique_repo, AppBuilder, ALL_TO_CLUSTER1};
use relay_tests::proxy::Proxy;
use relay_tests::{image, now, ImageKind, Stack};
use serde_json::json;

fn digest_of(s: &str) -> String {
    relay_tests::plain::sha256(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_push_is_replicated() {
    let app = AppBuilder::rules(ALL_TO_CLUSTER1).with_worker().spawn().await;
    let repo = unique_repo("ce");
    let pushed = image::push(&app.stack.source(), &repo, "1.0", ImageKind::OciImage, 2, 8 * 1024).await.unwrap();
    let (namespace, name) = repo.split_once('/').unwrap();
    let body = json!({
        "specversion": "1.0", "id": format!("id-{repo}"), "requestid": "r", "source": "/projects/2/webhook/policies/15",
        "type": "harbor.artifact.pushed", "datacontenttype": "application/json", "time": "2026-11-25T06:04:46Z",
        "data": {
            "resources": [{"digest": pushed.digest, "tag": "1.0", "resource_url": format!("{}/{repo}:1.0", app.stack.source_host())}],
            "repository": {"date_created": 1, "name": name, "namespace": namespace, "repo_full_name": repo, "repo_type": "private"}
        },
        "operator": "admin"
    });
    let (status, reply) =
        app.post(Some(&app.stack.webhook_auth), "application/cloudevents+json", body.to_string()).await;
    assert_eq!(status, 202, "{reply}");
    assert!(reply["event_key"].as_str().unwrap().starts_with("ce-"));
    app.wait_at_target(&repo, "1.0").await;
    let dst = app.stack.target().tree(&repo, "1.0").await.unwrap();
    assert_eq!(dst, app.stack.source().tree(&repo, "1.0").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_follows_only_rules_with_deletion() {
    let rules = "  - name: mirror-and-delete\n    deletion: true\n    destination: { registry: cluster1-registry }\n";
    let app = AppBuilder::rules(rules).with_worker().spawn().await;
    let repo = unique_repo("gone");
    let pushed = image::push(&app.stack.source(), &repo, "v1", ImageKind::DockerImage, 1, 4096).await.unwrap();
    assert_eq!(app.push_event(&repo, Some("v1"), &pushed.digest).await.0, 202);
    app.wait_at_target(&repo, "v1").await;

    // Harbor deleted it: the destination follows, by digest.
    assert_eq!(app.stack.source().delete_manifest(&repo, &pushed.digest).await.unwrap().as_u16(), 202);
    let (status, reply) = app.event("DELETE_ARTIFACT", &repo, Some("v1"), &pushed.digest).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["tasks"][0]["action"], "delete");
    app.wait_gone_at_target(&repo, &pushed.digest).await;

    // Without `deletion: true` a delete is acknowledged and nothing queued.
    let keep = AppBuilder::rules(ALL_TO_CLUSTER1).spawn().await;
    let (status, reply) = keep.event("DELETE_ARTIFACT", &repo, Some("v1"), &pushed.digest).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(keep.depth().await, (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_events_and_unmatched_pushes_enqueue_nothing() {
    let rules = "  - name: only-library\n    filters: { name: \"library/**\" }\n    destination: { registry: cluster1-registry }\n";
    let app = AppBuilder::rules(rules).spawn().await;
    let d = digest_of("x");
    for kind in ["PULL_ARTIFACT", "SCANNING_COMPLETED", "QUOTA_EXCEED", "REPLICATION", "TAG_RETENTION"] {
        let (status, reply) = app.event(kind, "library/app", Some("v1"), &d).await;
        assert_eq!(status, 200, "{kind}: {reply}");
    }
    let (status, reply) = app.push_event("other/app", Some("v1"), &d).await;
    assert_eq!((status, reply["tasks"].as_array().unwrap().len()), (200, 0));
    assert_eq!(app.depth().await, (0, 0, 0));
    let (status, _) = app.push_event("library/team/app", Some("v1"), &d).await;
    assert_eq!(status, 202, "nested repositories match library/**");
    assert_eq!(app.depth().await.0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_rules_fan_out_and_merge() {
    let stack = Stack::load().unwrap();
    let repo = unique_repo("proj/app");
    let ns = format!("copy-{}", &repo[4..12]);
    let config = format!(
        "source: {{ url: {src} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: cluster1, url: {dst}, credentials: {{ username: {u}, password_env: CLUSTER1_PASSWORD }} }}\n  - {{ name: cluster2, url: {dst}, credentials: {{ username: {u}, password_env: CLUSTER1_PASSWORD }} }}\nrules:\n  - {{ name: a, destination: {{ registry: cluster1 }} }}\n  - {{ name: b, filters: {{ name: \"e2e-*/**\" }}, destination: {{ registry: cluster1 }}, override: false }}\n  - {{ name: c, destination: {{ registry: cluster2, namespace: {ns}, flatten: 0 }} }}\n  - {{ name: d, enabled: false, destination: {{ registry: cluster2 }} }}\n",
        src = stack.source_url,
        dst = stack.target_url,
        u = stack.target_user
    );
    let app = AppBuilder::config(config).with_worker().spawn().await;
    let pushed =
        image::push(&stack.source(), &repo, "v2", ImageKind::OciIndex { platforms: 2 }, 1, 4096).await.unwrap();
    let (status, reply) = app.push_event(&repo, Some("v2"), &pushed.digest).await;
    assert_eq!(status, 202, "{reply}");
    let mut got: Vec<(String, String)> = reply["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["registry"].as_str().unwrap().to_owned(), t["repository"].as_str().unwrap().to_owned()))
        .collect();
    got.sort();
    assert_eq!(got, vec![("cluster1".to_owned(), repo.clone()), ("cluster2".to_owned(), format!("{ns}/{repo}"))]);
    app.wait_at_target(&repo, "v2").await;
    app.wait_at_target(&format!("{ns}/{repo}"), "v2").await;
    let src = stack.source().tree(&repo, "v2").await.unwrap();
    assert_eq!(stack.target().tree(&format!("{ns}/{repo}"), "v2").await.unwrap(), src);
}

/// A push no rule replicates is answered 200 with why, rule by rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_without_a_task_says_why_rule_by_rule() {
    let rules = "  - { name: lib, filters: { name: \"library/**\" }, destination: { registry: cluster1-registry } }\n  - { name: no-latest, filters: { tag: { pattern: latest, decoration: excludes } }, destination: { registry: cluster1-registry } }\n  - { name: off, enabled: false, destination: { registry: cluster1-registry } }\n";
    let app = AppBuilder::rules(rules).spawn().await;
    let (status, reply) = app.push_event("proj/app", Some("latest"), &digest_of("why")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["tasks"], serde_json::json!([]));
    assert_eq!(reply["reason"], "no enabled rule matches");
    let verdicts: Vec<(String, String)> = reply["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["rule"].as_str().unwrap().to_owned(), v["filter"].as_str().unwrap_or("-").to_owned()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("lib".into(), "filters.name".into()),
            ("no-latest".into(), "filters.tag".into()),
            ("off".into(), "enabled".into())
        ]
    );
    assert!(reply["verdicts"][1]["reason"].as_str().unwrap().contains("tag latest is excluded"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untagged_pushes_are_delayed() {
    let app = AppBuilder::rules(ALL_TO_CLUSTER1).untagged_delay(Duration::from_secs(30)).spawn().await;
    let d = digest_of("child");
    assert_eq!(app.push_event("proj/app", None, &d).await.0, 202);
    assert_eq!(app.push_event("proj/app", Some("v1"), &d).await.0, 202);
    let (visible, _, delayed) = app.depth().await;
    assert_eq!((visible, delayed), (1, 1), "the by-digest task waits, the tagged one does not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_queue_answers_503() {
    let stack = Stack::load().unwrap();
    let missing = format!("{}/000000000000/does-not-exist-{}", std::env::var("AWS_ENDPOINT_URL").unwrap(), now());
    let app = AppBuilder::rules(ALL_TO_CLUSTER1).queue_url(&missing).spawn().await;
    let (status, reply) = app.push_event("proj/app", Some("v1"), &digest_of("y")).await;
    assert_eq!(status, 503, "{reply}");
    // Nothing matched → nothing to enqueue → still 200 even without a queue.
    let (status, _) = app.event("PULL_ARTIFACT", "proj/app", Some("v1"), &digest_of("y")).await;
    assert_eq!(status, 200);
    drop(stack);
}

/// Harbor gives up on a delivery after 3 s: a queue that accepts the
/// connection and never answers must still get Harbor a 503 in time (and
/// a 202 once it answers again), never a late answer Harbor has stopped
/// waiting for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_queue_answers_503_within_harbors_timeout() {
    let stack = Stack::load().unwrap();
    let sqs = Proxy::to(&std::env::var("AWS_ENDPOINT_URL").unwrap()).await.unwrap();
    sqs.silence();
    let endpoint = sqs.url();
    let app = AppBuilder::rules(ALL_TO_CLUSTER1)
        .sqs_endpoint(&endpoint)
        .enqueue_timeout(Duration::from_millis(1500))
        .spawn()
        .await;
    let started = Instant::now();
    let (status, reply) = app.push_event("proj/app", Some("v1"), &digest_of("silent")).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{reply}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}, when Harbor no longer waits");
    assert_eq!(app.depth().await.0, 0, "nothing reached the queue");

    sqs.restore();
    let (status, reply) = app.push_event("proj/app", Some("v1"), &digest_of("silent")).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(app.depth().await.0, 1);
    drop(stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_values_from_secrets_manager() {
    let stack = Stack::load().unwrap();
    let (_, sm) = relay::bootstrap::aws_clients().await;
    let name = format!("relay-webhook-auth-{}", now());
    sm.create_secret().name(&name).secret_string("Bearer old-value, Bearer new-value").send().await.unwrap();
    let config = stack
        .config_yaml(ALL_TO_CLUSTER1)
        .replace("auth_values_env: RELAY_WEBHOOK_AUTH", &format!("auth_secret_id: {name}"));
    let app = AppBuilder::config(config).secrets_manager().spawn().await;
    let body =
        relay_tests::harbor_push_event("PUSH_ARTIFACT", stack.source_host(), "p/a", Some("v"), &digest_of("z"), now());
    for (auth, want) in
        [(Some("Bearer old-value"), 202), (Some("Bearer new-value"), 202), (Some("Bearer other"), 401), (None, 401)]
    {
        assert_eq!(app.post(auth, "application/json", body.clone()).await.0, want, "{auth:?}");
    }
    assert_eq!(app.depth().await.0, 2);
}

/// Rotation without a redeploy, and fail-closed when the values can no
/// longer be read: the secret is deleted, reads fail, and after the bound
/// even the last good value gets 503 (Harbor retries the delivery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_auth_values_are_picked_up_and_an_unreadable_secret_fails_closed() {
    let stack = Stack::load().unwrap();
    let (_, sm) = relay::bootstrap::aws_clients().await;
    let name = format!("relay-webhook-rotate-{}-{:08x}", now(), rand::random::<u32>());
    const OLD: &str = "Bearer before-rotation-0001";
    const NEW: &str = "Bearer after-rotation-00002";
    sm.create_secret().name(&name).secret_string(OLD).send().await.unwrap();
    let config = stack
        .config_yaml(ALL_TO_CLUSTER1)
        .replace("auth_values_env: RELAY_WEBHOOK_AUTH", &format!("auth_secret_id: {name}"))
        + "secrets: { ttl_seconds: 1, fail_closed_after_seconds: 2 }\n";
    let app = AppBuilder::config(config).secrets_manager().spawn().await;
    let body =
        relay_tests::harbor_push_event("PUSH_ARTIFACT", stack.source_host(), "p/a", Some("v"), &digest_of("r"), now());
    assert_eq!(app.post(Some(OLD), "application/json", body.clone()).await.0, 202);

    sm.put_secret_value().secret_id(&name).secret_string(NEW).send().await.unwrap();
    let until = |what: &'static str, auth: &'static str, want: u16| {
        let (app, body) = (&app, body.clone());
        async move {
            let limit = Instant::now() + Duration::from_secs(20);
            loop {
                let got = app.post(Some(auth), "application/json", body.clone()).await.0;
                if got == want {
                    return;
                }
                assert!(Instant::now() < limit, "{what}: still {got}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    until("the rotated value is accepted", NEW, 202).await;
    assert_eq!(app.post(Some(OLD), "application/json", body.clone()).await.0, 401, "the revoked value is refused");

    sm.delete_secret().secret_id(&name).force_delete_without_recovery(true).send().await.unwrap();
    // Until the bound passes the last good value still works (a Secrets
    // Manager hiccup is no outage); then nothing is accepted.
    assert_eq!(app.post(Some(NEW), "application/json", body.clone()).await.0, 202);
    until("fail closed", NEW, 503).await;
    let queued = app.depth().await.0;
    let (status, reply) = app.post(Some(NEW), "application/json", body.clone()).await;
    assert_eq!(status, 503, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("cannot confirm"), "{reply}");
    assert_eq!(app.depth().await.0, queued, "a refused delivery enqueues nothing");
}

/// A stand-in for Harbor's REST API: the artifact endpoint with labels.
async fn fake_harbor() -> String {
    async fn artifact(Path((project, repo, digest)): Path<(String, String, String)>) -> axum::response::Response {
        use axum::response::IntoResponse;
        assert_eq!((project.as_str(), repo.as_str()), ("proj", "team%2Fapp"), "repository name double-encoded");
        let labels = match digest.as_str() {
            d if d == digest_of("prod") => json!([{"name": "prod"}, {"name": "approved"}]),
            d if d == digest_of("broken") => {
                return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
            }
            d if d == digest_of("slow-prod") => {
                tokio::time::sleep(Duration::from_millis(1200)).await;
                json!([{"name": "prod"}])
            }
            _ => json!([]),
        };
        let body = json!({"digest": digest, "labels": labels, "tags": [{"name": "v1"}]}).to_string();
        ([("content-type", "application/json")], body).into_response()
    }
    let app =
        axum::Router::new().route("/api/v2.0/projects/{project}/repositories/{repo}/artifacts/{digest}", get(artifact));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_filters_ask_harbor() {
    let stack = Stack::load().unwrap();
    let harbor = fake_harbor().await;
    let host = harbor.trim_start_matches("http://").to_owned();
    let config = format!(
        "source: {{ url: {harbor}, harbor_api: true }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: cluster1, url: {} }}\nrules:\n  - {{ name: prod-only, filters: {{ label: [prod] }}, destination: {{ registry: cluster1 }} }}\n",
        stack.target_url
    );
    // The enqueue deadline counts from the request's arrival, label lookup included.
    let app = AppBuilder::config(config).enqueue_timeout(Duration::from_millis(1000)).spawn().await;
    let post = |digest: String| {
        let body = relay_tests::harbor_push_event("PUSH_ARTIFACT", &host, "proj/team/app", Some("v1"), &digest, now());
        let app = &app;
        async move { app.post(Some(&app.stack.webhook_auth), "application/json", body).await.0 }
    };
    assert_eq!(post(digest_of("prod")).await, 202);
    assert_eq!(post(digest_of("dev")).await, 200);
    assert_eq!(post(digest_of("broken")).await, 503, "Harbor's API failing must not drop the event");
    assert_eq!(post(digest_of("slow-prod")).await, 503, "past the deadline after a slow label lookup");
    assert_eq!(app.depth().await.0, 1);
}

/// The resource filter reads the artifact's type from Harbor's API at push
/// time: an image goes to the `images` rule, a Helm chart to the `charts`
/// rule. A delete of an artifact Harbor no longer knows has no type: both
/// deletion rules pass it on (the worker deletes only that digest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_filters_ask_harbor_for_the_type() {
    let stack = Stack::load().unwrap();
    let harbor = relay_tests::fake::FakeRegistry::start(false).await;
    let src = relay_tests::PlainRegistry::new(&harbor.url, None);
    let host = harbor.url.trim_start_matches("http://").to_owned();
    let app_repo = unique_repo("res");
    let chart_repo = format!("{app_repo}-chart");
    let img = image::push(&src, &app_repo, "v1", ImageKind::DockerImage, 1, 512).await.unwrap();
    let chart = image::push_chart(&src, &chart_repo, "0.1.0").await.unwrap();
    let config = format!(
        "source: {{ url: {}, harbor_api: true }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: cluster1, url: {} }}\nrules:\n  - {{ name: images, filters: {{ resource: image }}, destination: {{ registry: cluster1, namespace: images }}, deletion: true }}\n  - {{ name: charts, filters: {{ resource: artifact }}, destination: {{ registry: cluster1, namespace: charts }}, deletion: true }}\n",
        harbor.url, stack.target_url
    );
    let app = AppBuilder::config(config).spawn().await;
    let post = |kind: &'static str, repo: String, tag: &'static str, digest: String| {
        let body = relay_tests::harbor_push_event(kind, &host, &repo, Some(tag), &digest, now());
        let app = &app;
        async move { app.post(Some(&app.stack.webhook_auth), "application/json", body).await }
    };
    let rules_of = |reply: &serde_json::Value| -> Vec<String> {
        reply["tasks"].as_array().unwrap().iter().map(|t| t["repository"].as_str().unwrap().to_owned()).collect()
    };
    let leaf = |r: &str| r.rsplit('/').next().unwrap().to_owned();
    let (status, reply) = post("PUSH_ARTIFACT", app_repo.clone(), "v1", img.digest.clone()).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(rules_of(&reply), vec![format!("images/{}", leaf(&app_repo))]);
    let (status, reply) = post("PUSH_ARTIFACT", chart_repo.clone(), "0.1.0", chart.clone()).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(rules_of(&reply), vec![format!("charts/{}", leaf(&chart_repo))]);
    let (status, reply) = post("DELETE_ARTIFACT", app_repo.clone(), "v2", digest_of("deleted")).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(rules_of(&reply).len(), 2, "{reply}");
    assert_eq!(app.depth().await.0, 4);
}

/// The webhook reads the source's credentials only when a rule needs
/// Harbor's API (a label or resource filter): otherwise its role needs no
/// source secret (issue 27). The credentials here name a variable that is
/// not set, so reading them fails the start, naming the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_reads_the_source_credentials_only_for_rules_that_need_harbors_api() {
    let stack = Stack::load().unwrap();
    let config = |filters: &str| {
        format!(
            "source: {{ url: {}, harbor_api: true, credentials: {{ username: robot, password_env: RELAY_TEST_NEVER_SET }} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: cluster1, url: {} }}\nrules:\n  - {{ name: r, filters: {{ {filters} }}, destination: {{ registry: cluster1 }} }}\n",
            stack.source_url, stack.target_url
        )
    };
    let start = |yaml: String| async move {
        let config = std::sync::Arc::new(relay::Config::parse(&yaml).unwrap());
        let (sqs, _) = relay::bootstrap::aws_clients().await;
        let queue = relay::queue::TaskQueue::new(sqs, "http://127.0.0.1:1/000000000000/unused");
        let secrets = relay::secrets::SecretSource::from_process(None);
        relay::bootstrap::webhook(config, &secrets, queue, Default::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert_eq!(start(config("name: \"**\"")).await, Ok(()), "no rule reads Harbor's API: no credentials read");
    for filters in ["label: [prod]", "resource: image"] {
        let err = start(config(filters)).await.expect_err(filters);
        assert!(err.contains("source") && err.contains("RELAY_TEST_NEVER_SET"), "{filters}: {err}");
    }
}
