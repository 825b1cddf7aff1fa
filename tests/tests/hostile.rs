//! Hostile input on both sides: SSRF attempts, odd names and malformed
//! bodies at the webhook (refused, nothing enqueued), and registries that
//! misbehave — oversized manifests, blobs longer than their descriptor,
//! bodies that never end, redirects to another host.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use relay::registry::Outcome;
use relay::secrets::SecretSource;
use relay::task::{Action, CopyOptions, DestinationArtifact, EventRef, SourceArtifact, Task, TASK_VERSION};
use relay::{bootstrap, Config};
use relay_tests::app::{fast_retry, unique_repo, AppBuilder, ALL_TO_CLUSTER1};
use relay_tests::fake::{FakeRegistry, Fault, Op};
use relay_tests::{image, now, ImageKind, PlainRegistry, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_and_odd_names_are_refused_and_enqueue_nothing() {
    let app = AppBuilder::rules(ALL_TO_CLUSTER1).spawn().await;
    let host = app.stack.source_host().to_owned();
    let d = relay_tests::plain::sha256(b"x");
    let event = |resource_url: String, repo_full_name: &str| {
        let (ns, name) = repo_full_name.split_once('/').unwrap_or(("p", repo_full_name));
        serde_json::json!({
            "type": "PUSH_ARTIFACT", "occur_at": now(), "operator": "admin",
            "event_data": {"resources": [{"digest": d, "tag": "v1", "resource_url": resource_url}],
                           "repository": {"name": name, "namespace": ns, "repo_full_name": repo_full_name}}
        })
        .to_string()
    };
    let cases = [
        (format!("{host}1/p/app:v1"), "p/app", 422), // a port that only starts the same
        (format!("{host}.evil.example/p/app:v1"), "p/app", 422), // a host that only starts the same
        (format!("evil.example/{host}/p/app:v1"), "p/app", 422), // the source as a path
        ("169.254.169.254/latest/meta-data:v1".to_owned(), "latest/meta-data", 422), // cloud metadata
        ("[::1]:5001/p/app:v1".to_owned(), "p/app", 422),
        (format!("{host}@evil.example/p/app:v1"), "p/app", 422),
        (format!("{host}/p/../../etc/passwd:v1"), "p/../../etc/passwd", 400), // traversal
        (format!("{host}/p/App:v1"), "p/App", 400),                           // not a repository name
        (format!("{host}/p/{}:v1", "a".repeat(300)), &*format!("p/{}", "a".repeat(300)), 400),
        (format!("{host}/p/app:v1?x=1"), "p/app", 400),
        (format!("{host}/p/app:v1\r\nX-Injected: 1"), "p/app", 400),
    ];
    for (url, repo, want) in cases {
        let (status, reply) =
            app.post(Some(&app.stack.webhook_auth), "application/json", event(url.clone(), repo)).await;
        assert_eq!(status, want, "{url:?}: {reply}");
    }
    // Near-miss Authorization values never authenticate.
    let body = event(format!("{host}/p/app:v1"), "p/app");
    let auth = app.stack.webhook_auth.clone();
    for near in [
        format!("{auth}x"),
        format!(" {auth}x"),
        auth.to_lowercase(),
        format!("{auth},{auth}"),
        auth[..auth.len() - 1].to_owned(),
    ] {
        let (status, _) = app.post(Some(&near), "application/json", body.clone()).await;
        assert_eq!(status, 401, "{near:?}");
    }
    assert_eq!(app.depth().await, (0, 0, 0), "nothing enqueued");
}

async fn worker_with(source: &str, destination: &str, extra: &str) -> relay::worker::Worker {
    let yaml = format!("source: {{ url: {source} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: dst, url: {destination} }}\n{extra}");
    bootstrap::worker(&Config::parse(&yaml).unwrap(), &SecretSource::from_process(None), fast_retry()).await.unwrap()
}

async fn worker(source: &str, destination: &str, real_target: bool) -> relay::worker::Worker {
    let stack = Stack::load().unwrap();
    let creds = if real_target {
        format!(", credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }}", stack.target_user)
    } else {
        String::new()
    };
    let yaml = format!("source: {{ url: {source} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: dst, url: {destination}{creds} }}\n");
    bootstrap::worker(&Config::parse(&yaml).unwrap(), &SecretSource::from_process(None), fast_retry()).await.unwrap()
}

fn task(repo: &str, digest: &str) -> Task {
    Task {
        version: TASK_VERSION,
        id: "t".into(),
        action: Action::Copy,
        source: SourceArtifact {
            repository: repo.parse().unwrap(),
            digest: digest.parse().unwrap(),
            tags: vec!["v1".parse().unwrap()],
        },
        destination: DestinationArtifact {
            registry: "dst".into(),
            repository: repo.parse().unwrap(),
            tags: vec!["v1".parse().unwrap()],
        },
        rules: vec!["r".into()],
        options: CopyOptions { override_existing: true, bandwidth_kbps: None, refresh_referrers: false },
        event: EventRef { key: "k".into(), occurred_at: 0, operator: "o".into() },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_manifest_is_refused() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("huge");
    let pad = "x".repeat(5 * 1024 * 1024);
    let body = format!("{{\"schemaVersion\":2,\"mediaType\":\"{}\",\"config\":{{\"digest\":\"{}\",\"size\":1}},\"layers\":[],\"annotations\":{{\"pad\":\"{pad}\"}}}}", image::OCI_MANIFEST, relay_tests::plain::sha256(b"c"));
    let d = src.insert_manifest(&repo, "v1", image::OCI_MANIFEST, body.into());
    let err = worker(&src.url, &dst.url, false).await.run(&task(&repo, &d)).await.unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    assert!(!dst.has_manifest(&repo, "v1"));
}

/// A source whose manifest or blob body never ends: the manifest read
/// stops at the size limit, the blob stream at its descriptor's size; the
/// task fails in bounded time and nothing is pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_ending_body_fails_the_task_in_bounded_time() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("endless");
    let img =
        image::push(&PlainRegistry::new(&src.url, None), &repo, "v1", ImageKind::OciImage, 1, 8192).await.unwrap();
    let w = worker(&src.url, &dst.url, false).await;

    src.inject(Op::GetManifest, Fault::Endless, 100);
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(std::time::Duration::from_secs(30), w.run(&task(&repo, &img.digest)))
        .await
        .expect("bounded")
        .unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(!dst.has_manifest(&repo, "v1"));

    // An endless blob: the stream is cut at the descriptor's size. (The
    // destination would refuse the digest too; the error says which guard
    // stopped it, and nothing was stored.)
    let src2 = FakeRegistry::start(false).await;
    let img2 =
        image::push(&PlainRegistry::new(&src2.url, None), &repo, "v1", ImageKind::OciImage, 1, 8192).await.unwrap();
    src2.inject(Op::GetBlob, Fault::Endless, 100);
    let w2 = worker(&src2.url, &dst.url, false).await;
    let err = tokio::time::timeout(std::time::Duration::from_secs(30), w2.run(&task(&repo, &img2.digest)))
        .await
        .expect("bounded")
        .unwrap_err();
    assert!(err.to_string().contains("more bytes than the descriptor"), "{err}");
    assert!(!dst.has_manifest(&repo, "v1"), "no manifest pushed");
    for b in &img2.blobs {
        assert!(!dst.has_blob(&repo, b), "no endless blob stored");
    }
}

/// A blob longer than its descriptor, announced by `Content-Length` or
/// not, is refused before the destination sees a byte too many: the error
/// names the guard (a real registry would also refuse the digest, so "not
/// pushed" alone could not tell whether the guard works).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_longer_than_its_descriptor_is_not_pushed() {
    let stack = Stack::load().unwrap();
    for (fault, guard) in
        [(Fault::Longer, "its descriptor says"), (Fault::LongerUnannounced, "more bytes than the descriptor")]
    {
        let src = FakeRegistry::start(false).await;
        let repo = unique_repo("longer");
        let img =
            image::push(&PlainRegistry::new(&src.url, None), &repo, "v1", ImageKind::OciImage, 1, 8192).await.unwrap();
        src.inject(Op::GetBlob, fault, 100);
        let err =
            worker(&src.url, &stack.target_url, true).await.run(&task(&repo, &img.digest)).await.expect_err(guard);
        assert!(err.to_string().contains(guard), "{guard}: {err}");
        assert!(stack.target().get_manifest(&repo, "v1").await.unwrap().is_none(), "no manifest pushed");
    }
}

/// A source that trickles a blob (4 KiB every half second, a quarter of
/// the minimum) is given up after one throughput window per attempt, not
/// read until the Lambda timeout (it would take 32 s per attempt here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_blob_is_given_up_after_its_window() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("trickle");
    let img = image::push(&PlainRegistry::new(&src.url, None), &repo, "v1", ImageKind::OciImage, 1, 256 * 1024)
        .await
        .unwrap();
    src.inject(Op::GetBlob, Fault::Slow(std::time::Duration::from_millis(500)), 100);
    let w = worker_with(
        &src.url,
        &dst.url,
        "worker: { min_throughput_bytes_per_second: 16384, throughput_window_seconds: 1 }\n",
    )
    .await;
    let started = std::time::Instant::now();
    let err = w.run(&task(&repo, &img.digest)).await.unwrap_err();
    assert!(err.to_string().contains("below the minimum"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    assert!(!dst.has_manifest(&repo, "v1"));
}

/// A `Retry-After` that would outlast the invocation is not waited for:
/// the task fails at once, carrying the registry's wait to the message's
/// backoff. Without a deadline the same answer is waited for and retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_past_the_deadline_is_not_waited_for() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("later");
    let img =
        image::push(&PlainRegistry::new(&src.url, None), &repo, "v1", ImageKind::OciImage, 1, 1024).await.unwrap();
    let mut w = worker(&src.url, &dst.url, false).await;
    w.settings.deadline_margin_seconds = 0;
    src.inject(Op::GetManifest, Fault::Status(429, Some("30".into())), 100);
    src.reset_counts();
    // 1 s left: the client's 2 s wait (its cap) does not fit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let err = w.run_until(&task(&repo, &img.digest), Some(deadline)).await.unwrap_err();
    assert_eq!(src.count(Op::GetManifest), 1, "asked once, no wait: {err}");
    assert_eq!(
        err.disposition(),
        relay::settle::Disposition::Retry { retry_after: Some(std::time::Duration::from_secs(30)) }
    );
    src.reset_counts();
    assert!(w.run(&task(&repo, &img.digest)).await.is_err());
    assert_eq!(src.count(Op::GetManifest), fast_retry().attempts as usize, "standalone: waited and retried");
}

/// The source redirects a blob to storage on another host; the bytes are
/// read there without the source's token. The client follows redirects
/// itself (reqwest's own policy is `none`, so reqwest's own stripping of
/// `Authorization` never runs): what keeps the token home is the relay's
/// check, each hop's credential given only to the registry's origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_never_carry_credentials_to_another_host() {
    let src = FakeRegistry::start(true).await; // Bearer: every request carries a token
    let storage = FakeRegistry::start(false).await; // "another host" serving the bytes
    let dst = FakeRegistry::start(false).await;
    let repo = unique_repo("redirect");
    let blob = bytes::Bytes::from_static(b"layer bytes served from storage");
    let d = storage.insert_blob(&repo, blob.clone());
    src.insert_blob(&repo, blob);
    // Config and layer are the same blob, so the one blob request is the redirected one.
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": image::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d, "size": 31},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 31}]})
    .to_string();
    let md = src.insert_manifest(&repo, "v1", image::OCI_MANIFEST, manifest.into());
    src.inject(Op::GetBlob, Fault::RedirectTo(format!("{}/v2/{repo}/blobs/{d}", storage.url)), 1);

    let report = worker(&src.url, &dst.url, false).await.run(&task(&repo, &md)).await.unwrap();
    assert_eq!(report.outcome, Some(Outcome::Copied));
    assert_eq!(storage.count(Op::GetBlob), 1, "the redirect was followed");
    assert_eq!(storage.authorized_requests(), 0, "no Authorization header crossed to the other host");
    assert!(src.authorized_requests() > 0);
    assert!(dst.has_blob(&repo, &d) && dst.has_manifest(&repo, "v1"));
}

/// A loopback listener on `ip` that counts the connections it is offered
/// (and answers none of them): where a refused redirect must never arrive.
async fn counting_listener(ip: &str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((_connection, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, hits)
}

/// A registry that redirects a blob to a loopback or link-local address
/// its configuration does not name — another loopback address, a name
/// that resolves to loopback, the cloud's metadata service — gets the copy
/// refused before a byte goes there, the error naming the guard. (The
/// source itself is on 127.0.0.1, a host the configuration names: its
/// redirects to 127.0.0.1 are followed, see the test above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_never_reach_loopback_or_link_local_addresses_the_configuration_does_not_name() {
    let (other_loopback, other_hits) = counting_listener("127.0.0.2").await;
    let (named_localhost, localhost_hits) = counting_listener("127.0.0.1").await;
    let targets = [
        (format!("http://{other_loopback}/blob"), "127.0.0.2 is a loopback"),
        (format!("http://localhost:{}/blob", named_localhost.port()), "is a loopback"),
        ("http://169.254.169.254/latest/meta-data/".to_owned(), "169.254.169.254 is a loopback or link-local"),
    ];
    for (target, why) in targets {
        let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
        let repo = unique_repo("redirect-internal");
        let img =
            image::push(&PlainRegistry::new(&src.url, None), &repo, "v1", ImageKind::OciImage, 1, 1024).await.unwrap();
        src.inject(Op::GetBlob, Fault::RedirectTo(target.clone()), 100);
        let err = worker(&src.url, &dst.url, false).await.run(&task(&repo, &img.digest)).await.unwrap_err();
        let err = err.to_string();
        assert!(err.contains("redirect refused") && err.contains(why), "{target}: {err}");
        assert!(!dst.has_manifest(&repo, "v1"), "{target}: nothing pushed");
    }
    assert_eq!(other_hits.load(Ordering::SeqCst), 0, "nothing connected to 127.0.0.2");
    assert_eq!(localhost_hits.load(Ordering::SeqCst), 0, "nothing connected to localhost");
}

/// A worker whose source is `source` with credentials (so they could leak)
/// and `token_realms`, copying to `destination`.
async fn worker_with_realms(source: &str, realms: &[&str], destination: &str) -> relay::worker::Worker {
    let realms = realms.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ");
    let yaml = format!(
        "source: {{ url: {source}, credentials: {{ username: relay, password_env: RELAY_HOSTILE_PASSWORD }}, token_realms: [{realms}] }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: dst, url: {destination} }}\n"
    );
    let secrets = relay_tests::stack::secrets_with(&[("RELAY_HOSTILE_PASSWORD", "hostile-test-password")]);
    bootstrap::worker(&Config::parse(&yaml).unwrap(), &secrets, fast_retry()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_go_to_a_foreign_token_realm_unless_listed() {
    let src = FakeRegistry::start(true).await;
    let foreign = FakeRegistry::start(false).await; // a token service on another origin, plain http
    let dst = FakeRegistry::start(false).await;
    let repo = unique_repo("realm");
    let md = src.insert_manifest(&repo, "v1", image::OCI_MANIFEST, bytes::Bytes::from_static(b"{}"));
    src.set_realm(&format!("{}/token", foreign.url));

    let err = worker_with_realms(&src.url, &[], &dst.url).await.run(&task(&repo, &md)).await.unwrap_err();
    assert!(err.to_string().contains("token realm http://127.0.0.1 refused"), "{err}");
    assert_eq!((foreign.count(Op::Token), foreign.authorized_requests()), (0, 0), "nothing was sent to the realm");

    // Listed in token_realms: trusted (its tokens are no good at this fake,
    // but the credentials went where the configuration allows).
    let listed = worker_with_realms(&src.url, &[&foreign.url], &dst.url).await;
    assert!(listed.run(&task(&repo, &md)).await.is_err());
    assert!(foreign.count(Op::Token) >= 1 && foreign.authorized_requests() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_from_where_a_redirect_led_is_not_learnt() {
    let src = FakeRegistry::start(false).await;
    let elsewhere = FakeRegistry::start(true).await; // answers 401 with its own realm
    let dst = FakeRegistry::start(false).await;
    let repo = unique_repo("redirect401");
    let md = src.insert_manifest(&repo, "v1", image::OCI_MANIFEST, bytes::Bytes::from_static(b"{}"));
    src.inject(Op::HeadManifest, Fault::RedirectTo(format!("{}/v2/{repo}/manifests/v1", elsewhere.url)), 10);

    // Even with that host's realm trusted, its challenge is not this registry's.
    let w = worker_with_realms(&src.url, &[&elsewhere.url], &dst.url).await;
    let err = w.run(&task(&repo, &md)).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    assert_eq!(elsewhere.count(Op::Token), 0, "no token asked of the host a redirect led to");
    assert_eq!(elsewhere.authorized_requests(), 0, "no credentials crossed to it");
}

/// A corpus of malformed bodies: deeply nested, wrong-typed, the wrong
/// format for the content type, invalid digests. Each gets 400 with a
/// reason, the server stays up, and nothing is enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_refused_and_enqueue_nothing() {
    let app = AppBuilder::rules(ALL_TO_CLUSTER1).spawn().await;
    let host = app.stack.source_host().to_owned();
    let good = relay_tests::plain::sha256(b"x");
    let event = |digest: &str, occur_at: serde_json::Value, resources: serde_json::Value| {
        let mut v = serde_json::json!({
            "type": "PUSH_ARTIFACT", "occur_at": occur_at, "operator": "admin",
            "event_data": {"resources": resources,
                           "repository": {"name": "app", "namespace": "p", "repo_full_name": "p/app"}}
        });
        if resources.is_null() {
            v["event_data"]["resources"] =
                serde_json::json!([{"digest": digest, "tag": "v1", "resource_url": format!("{host}/p/app:v1")}]);
        }
        v.to_string()
    };
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object =
        format!("{{\"type\":\"PUSH_ARTIFACT\",\"event_data\":{}1{}}}", "{\"a\":".repeat(5000), "}".repeat(5000));
    let cloudevent_as_default = serde_json::json!({
        "specversion": "1.0", "id": "1", "source": "/projects/1/webhook/policies/1",
        "type": "harbor.artifact.pushed", "datacontenttype": "application/json", "data": {}
    })
    .to_string();
    let cases: Vec<(&str, String)> = vec![
        ("application/json", nested),
        ("application/json", deep_object),
        ("application/json", event(&good, "yesterday".into(), serde_json::Value::Null)),
        ("application/json", event(&good, 1.into(), serde_json::json!({"digest": good}))),
        ("application/json", event(&good, 1.into(), serde_json::json!([42]))),
        ("application/json", event("sha256:xyz", 1.into(), serde_json::Value::Null)),
        ("application/json", event("md5:d41d8cd98f00b204e9800998ecf8427e", 1.into(), serde_json::Value::Null)),
        ("application/json", event(&format!("{good}0"), 1.into(), serde_json::Value::Null)),
        ("application/json", event(&good.to_uppercase(), 1.into(), serde_json::Value::Null)),
        ("application/json", "[]".into()),
        ("application/json", "null".into()),
        ("application/json", "\u{feff}{}".into()),
        ("application/json", cloudevent_as_default),
        ("application/cloudevents+json", event(&good, 1.into(), serde_json::Value::Null)),
        ("application/json", String::from_utf8_lossy(&[0xff, 0xfe, 0x00, 0x7b]).into_owned()),
    ];
    for (content_type, body) in cases {
        let shown: String = body.chars().take(80).collect();
        let (status, reply) = app.post(Some(&app.stack.webhook_auth), content_type, body).await;
        assert_eq!(status, 400, "{content_type} {shown:?}: {reply}");
        assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()), "400 must carry a reason: {reply}");
    }
    let health = app.http.get(format!("{}healthz", app.webhook_url)).send().await.unwrap().status().as_u16();
    assert_eq!(health, 200, "still serving");
    assert_eq!(app.depth().await, (0, 0, 0), "nothing enqueued");
}
