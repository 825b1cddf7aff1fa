//! `relay harbor webhooks` against the tests' Harbor API server, which
//! refuses (400) any request body that does not fit Harbor's
//! `WebhookPolicy` schema (API v2.0): one policy per project a rule can
//! replicate from — an empty project included, others not — created, then
//! left alone while it is right, updated when the endpoint changes; a
//! policy made by hand stays as it was; a dry run writes nothing.

use std::process::Command;

use relay_tests::fake::FakeRegistry;
use relay_tests::{image, workspace_binary, ImageKind, PlainRegistry, Stack, TempFile};
use serde_json::{json, Value};

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(workspace_binary("relay")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_created_kept_and_updated_in_covered_projects_only() {
    let stack = Stack::load().unwrap();
    let harbor = FakeRegistry::start(false).await;
    let src = PlainRegistry::new(&harbor.url, None);
    let p = format!("hw{:08x}", rand::random::<u32>());
    let (lib, team, fresh, other) =
        (format!("{p}-lib"), format!("{p}-team1"), format!("{p}-new"), format!("{p}-other"));
    for project in [&lib, &team, &other] {
        image::push(&src, &format!("{project}/app"), "v1", ImageKind::OciImage, 1, 256).await.unwrap();
    }
    harbor.add_project(&fresh);
    let by_hand = json!({
        "name": "alerts",
        "targets": [{ "type": "slack", "address": "https://hooks.chat.example/alerts" }],
        "event_types": ["SCANNING_FAILED"],
        "enabled": true
    });
    harbor.insert_webhook_policy(&lib, by_hand.clone());

    let config = TempFile::new(
        "hooks",
        "yaml",
        format!(
            "source: {{ url: {}, harbor_api: true }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: r, url: {} }}\nrules:\n  - {{ name: lib, filters: {{ name: \"{lib}/**\" }}, destination: {{ registry: r }} }}\n  - {{ name: teams, filters: {{ name: \"{p}-team*/**\" }}, destination: {{ registry: r }} }}\n  - {{ name: fresh, filters: {{ name: \"{{{fresh},nowhere}}/**\" }}, destination: {{ registry: r }} }}\n  - {{ name: off, enabled: false, filters: {{ name: \"{other}/**\" }}, destination: {{ registry: r }} }}\n",
            harbor.url, stack.target_url
        ),
    );
    let config = config.arg();
    let hooks = |endpoint: &str, extra: &[&str]| {
        let mut args = vec!["harbor", "webhooks", "--config", config.as_str(), "--endpoint", endpoint];
        args.extend_from_slice(extra);
        run(&args)
    };
    let ours = |project: &str| -> Vec<Value> {
        harbor.webhook_policies(project).into_iter().filter(|v| v["name"] == "harbor-relay").collect()
    };

    let (code, said) = hooks("https://relay.example/", &["--dry-run"]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("3 projects covered: 3 created, 0 updated, 0 unchanged (dry run"), "{said}");
    assert!([&lib, &team, &fresh].iter().all(|p| ours(p).is_empty()), "a dry run writes nothing");

    let (code, said) = hooks("https://relay.example/", &[]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("3 projects covered: 3 created, 0 updated, 0 unchanged"), "{said}");
    for project in [&lib, &team, &fresh] {
        let policies = ours(project);
        assert_eq!(policies.len(), 1, "{project}");
        let policy = &policies[0];
        assert_eq!(policy["enabled"], true);
        assert_eq!(policy["event_types"], json!(["PUSH_ARTIFACT", "DELETE_ARTIFACT"]));
        let target = &policy["targets"][0];
        assert_eq!(target["type"], "http");
        assert_eq!(target["address"], "https://relay.example/");
        assert_eq!(target["auth_header"], stack.webhook_auth.as_str(), "one of the accepted values");
        assert_eq!(target["payload_format"], "Default");
    }
    assert!(harbor.webhook_policies(&other).is_empty(), "no enabled rule covers {other}");
    let kept: Vec<Value> = harbor.webhook_policies(&lib).into_iter().filter(|v| v["name"] == "alerts").collect();
    assert_eq!(kept.len(), 1);
    assert_eq!((&kept[0]["targets"], &kept[0]["event_types"]), (&by_hand["targets"], &by_hand["event_types"]));

    // Idempotent: nothing to do.
    let (code, said) = hooks("https://relay.example/", &[]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("0 created, 0 updated, 3 unchanged"), "{said}");

    // A new endpoint: the same policies, updated in place.
    let ids: Vec<Value> = [&lib, &team, &fresh].iter().map(|p| ours(p)[0]["id"].clone()).collect();
    let (code, said) = hooks("https://relay2.example/hook", &["--payload-format", "CloudEvents"]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("0 created, 3 updated, 0 unchanged"), "{said}");
    for (project, id) in [&lib, &team, &fresh].iter().zip(ids) {
        let policies = ours(project);
        assert_eq!(policies.len(), 1);
        assert_eq!(policies[0]["id"], id);
        assert_eq!(policies[0]["targets"][0]["address"], "https://relay2.example/hook");
        assert_eq!(policies[0]["targets"][0]["payload_format"], "CloudEvents");
    }
}

#[test]
fn the_schema_check_refuses_what_harbor_would() {
    use relay_tests::fake::webhook_policy_errors;
    let good = json!({
        "name": "harbor-relay",
        "description": "",
        "project_id": 3,
        "targets": [{ "type": "http", "address": "https://x.example/", "auth_header": "Bearer x", "skip_cert_verify": false, "payload_format": "Default" }],
        "event_types": ["PUSH_ARTIFACT", "DELETE_ARTIFACT"],
        "enabled": true
    });
    assert!(webhook_policy_errors(&good).is_empty(), "{:?}", webhook_policy_errors(&good));
    for (change, needle) in [
        (json!({"enabled": "true"}), "enabled is string"),
        (json!({"events": []}), "unknown property events"),
        (json!({"event_types": ["PUSH_IMAGE"]}), "unknown event type"),
        (
            json!({"targets": [{ "type": "http", "address": "x", "format": "Default" }]}),
            "unknown target property format",
        ),
        (
            json!({"targets": [{ "type": "http", "address": "https://x.example/", "payload_format": "JSON" }]}),
            "unknown payload format",
        ),
    ] {
        let mut bad = good.clone();
        for (k, v) in change.as_object().unwrap() {
            bad[k] = v.clone();
        }
        let errors = webhook_policy_errors(&bad).join("; ");
        assert!(errors.contains(needle), "{change}: {errors}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_pass_keeps_the_policies_when_asked() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let queue = relay_tests::stack::create_queue(&sqs, "hooks-rec").await.unwrap();
    let harbor = FakeRegistry::start(false).await;
    let src = PlainRegistry::new(&harbor.url, None);
    let p = format!("hr{:08x}", rand::random::<u32>());
    image::push(&src, &format!("{p}/app"), "v1", ImageKind::OciImage, 1, 256).await.unwrap();
    let config = TempFile::new(
        "hooks-rec",
        "yaml",
        format!(
            "source: {{ url: {}, harbor_api: true }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - name: cluster1-registry\n    url: {}\n    credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }}\nrules:\n  - {{ name: all, filters: {{ name: \"{p}/**\" }}, destination: {{ registry: cluster1-registry }} }}\n",
            harbor.url, stack.target_url, stack.target_user
        ),
    );
    // One standalone pass (as cron, or the Lambda on its schedule); its summary.
    let pass = |keep: bool| {
        let mut c = Command::new(workspace_binary("reconcile"));
        c.env("RELAY_CONFIG", config.path()).env("RELAY_QUEUE_URL", &queue);
        if keep {
            c.env("RELAY_HARBOR_WEBHOOKS_ENDPOINT", "https://relay.example/");
        }
        let out = c.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v.get("resumed_after").is_some())
            .unwrap_or_else(|| panic!("no summary: {stdout}"))
    };
    let off = pass(false);
    assert_eq!(off["webhook_policies"], Value::Null);
    assert!(harbor.webhook_policies(&p).is_empty(), "not asked: nothing written");
    let first = pass(true);
    assert_eq!(first["webhook_policies"], json!({ "created": 1, "updated": 0, "unchanged": 0 }));
    let ours = harbor.webhook_policies(&p);
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0]["targets"][0]["address"], "https://relay.example/");
    let again = pass(true);
    assert_eq!(again["webhook_policies"], json!({ "created": 0, "updated": 0, "unchanged": 1 }));
}

/// `--remove`: the relay's policies go from every project (one no rule
/// covers included), a policy that also sends elsewhere keeps its other
/// target, and policies sending elsewhere only stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_takes_the_relay_out_of_every_project_and_nothing_else() {
    let stack = Stack::load().unwrap();
    let harbor = FakeRegistry::start(false).await;
    let p = format!("rm{:08x}", rand::random::<u32>());
    let (covered, uncovered) = (format!("{p}-lib"), format!("{p}-old"));
    harbor.add_project(&covered);
    harbor.add_project(&uncovered);
    let target = |address: &str| json!({ "type": "http", "address": address, "skip_cert_verify": false });
    let relay_only = json!({ "name": "harbor-relay", "targets": [target("https://relay.example/")], "event_types": ["PUSH_ARTIFACT"], "enabled": true });
    let shared = json!({ "name": "shared", "targets": [target("https://relay.example"), target("https://audit.example/hook")], "event_types": ["PUSH_ARTIFACT"], "enabled": true });
    let elsewhere = json!({ "name": "alerts", "targets": [target("https://hooks.chat.example/alerts")], "event_types": ["SCANNING_FAILED"], "enabled": true });
    harbor.insert_webhook_policy(&covered, relay_only.clone());
    harbor.insert_webhook_policy(&covered, elsewhere.clone());
    harbor.insert_webhook_policy(&uncovered, relay_only);
    harbor.insert_webhook_policy(&uncovered, shared);
    let config = TempFile::new(
        "hooks-rm",
        "yaml",
        format!(
            "source: {{ url: {}, harbor_api: true }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: r, url: {} }}\nrules:\n  - {{ name: lib, filters: {{ name: \"{covered}/**\" }}, destination: {{ registry: r }} }}\n",
            harbor.url, stack.target_url
        ),
    );
    let remove = |extra: &[&str]| {
        let config = config.arg();
        let mut args =
            vec!["harbor", "webhooks", "--remove", "--config", config.as_str(), "--endpoint", "https://relay.example/"];
        args.extend_from_slice(extra);
        run(&args)
    };
    let names = |project: &str| -> Vec<String> {
        harbor.webhook_policies(project).iter().map(|v| v["name"].as_str().unwrap().to_owned()).collect()
    };

    let (code, said) = remove(&["--dry-run"]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("3 policies sent to https://relay.example/ (dry run"), "{said}");
    assert_eq!((names(&covered).len(), names(&uncovered).len()), (2, 2), "a dry run writes nothing");

    let (code, said) = remove(&[]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains(uncovered.as_str()) && said.contains("target removed"), "{said}");
    assert_eq!(names(&covered), ["alerts"]);
    assert_eq!(harbor.webhook_policies(&covered)[0]["targets"], elsewhere["targets"], "untouched");
    assert_eq!(names(&uncovered), ["shared"]);
    let left: Vec<Value> = harbor.webhook_policies(&uncovered)[0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["address"].clone())
        .collect();
    assert_eq!(left, [json!("https://audit.example/hook")], "only the relay's target went");

    let (code, said) = remove(&[]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("0 policies sent to"), "nothing left to remove: {said}");
}
