//! A Harbor destination answers as Harbor: a tag its immutable rules cover
//! is refused (412) and the task fails for good, with that cause; and
//! `relay check` reads the projects' immutable tag rules and tag retention
//! and warns where they will refuse or undo what the relay writes.

use std::process::Command;

use relay::registry::Outcome;
use relay::settle::Disposition;
use relay::worker::FailureCause;
use relay::{bootstrap, Config};
use relay_tests::app::{fast_retry, unique_repo};
use relay_tests::harbor::FakeHarbor;
use relay_tests::{image, planned_tasks, workspace_binary, ImageKind, Stack, TempFile};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_harbor_holds_immutable_fails_for_good_and_is_kept() {
    let stack = Stack::load().unwrap();
    let harbor = FakeHarbor::start(&stack.target_url, true).await;
    let repo = unique_repo("immutable");
    let project = repo.split('/').next().unwrap().to_owned();
    harbor.add_project(&project);
    harbor.make_immutable(&project, "v*");
    let yaml = format!(
        "source: {{ url: {} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: dr, kind: harbor, url: {}, credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }} }}\nrules:\n  - {{ name: all, destination: {{ registry: dr }} }}\n",
        stack.source_url, harbor.url, stack.target_user
    );
    let config = Config::parse(&yaml).unwrap();
    let (_, sm) = bootstrap::aws_clients().await;
    let worker = bootstrap::worker(&config, &stack.secrets(Some(sm)), fast_retry()).await.unwrap();

    // The first push of v1 creates the tag: Harbor's rule covers existing tags only.
    let first = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 1, 2048).await.unwrap();
    let task = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v1", &first.digest).remove(0);
    assert_eq!(worker.run(&task).await.unwrap().outcome, Some(Outcome::Copied));

    // v1 moved at the source: the relay would override, Harbor refuses.
    let second = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 1, 2048).await.unwrap();
    let task = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v1", &second.digest).remove(0);
    let failure = worker.run(&task).await.unwrap_err();
    assert_eq!(failure.cause(), FailureCause::ImmutableTag, "{failure}");
    assert_eq!(failure.cause().as_str(), "immutable_tag");
    assert_eq!(failure.disposition(), Disposition::Permanent, "dead-lettered at once: {failure}");
    assert!(failure.to_string().contains("configured as immutable"), "the reason is Harbor's: {failure}");
    assert_eq!(stack.target().digest_at(&repo, "v1").await.unwrap(), Some(first.digest.clone()), "Harbor kept its tag");
    let puts = harbor.log().iter().filter(|l| l.starts_with("PUT /v2/") && l.ends_with("/manifests/v1")).count();
    assert_eq!(puts, 2, "one refused PUT, not retried: {:?}", harbor.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_of_immutable_tags_and_retention_in_the_projects_written_to() {
    let stack = Stack::load().unwrap();
    let harbor = FakeHarbor::start(&stack.target_url, true).await;
    let p = format!("hd{:08x}", rand::random::<u32>());
    let (locked, pruned, calm) = (format!("{p}-locked"), format!("{p}-pruned"), format!("{p}-calm"));
    for project in [&locked, &pruned, &calm] {
        harbor.add_project(project);
    }
    harbor.make_immutable(&locked, "v*");
    harbor.set_retention(
        &pruned,
        serde_json::json!({
            "id": 7, "algorithm": "or",
            "rules": [{ "disabled": false, "action": "retain", "template": "latestPushedK", "params": { "latestPushedK": 10 },
                        "tag_selectors": [{ "kind": "doublestar", "decoration": "matches", "pattern": "**" }],
                        "scope_selectors": { "repository": [{ "kind": "doublestar", "decoration": "repoMatches", "pattern": "**" }] } }],
            "trigger": { "kind": "Schedule", "settings": { "cron": "0 0 0 * * *" } }
        }),
    );
    // Another project of the same Harbor with an immutable rule that no rule writes into.
    let elsewhere = format!("{p}-elsewhere");
    harbor.add_project(&elsewhere);
    harbor.make_immutable(&elsewhere, "**");
    let config = TempFile::new(
        "harbor-dst",
        "yaml",
        format!(
            "source: {{ url: {} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: dr, kind: harbor, url: {}, credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }} }}\nrules:\n  - {{ name: locked, destination: {{ registry: dr, namespace: {locked} }}, deletion: true }}\n  - {{ name: pruned, destination: {{ registry: dr, namespace: {pruned}/mirror }}, override: false }}\n  - {{ name: calm, destination: {{ registry: dr, namespace: {calm} }} }}\n",
            stack.source_url, harbor.url, stack.target_user
        ),
    );
    let out = Command::new(workspace_binary("relay"))
        .args(["check", "--config", &config.arg()])
        .env("CLUSTER1_PASSWORD", &stack.target_password)
        .env("RELAY_WEBHOOK_AUTH", &stack.webhook_auth)
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "warnings do not fail the check: {said}");
    let warnings: Vec<&str> = said.lines().filter(|l| l.starts_with("WARNING dr ")).collect();
    assert_eq!(warnings.len(), 2, "{said}");
    assert!(
        warnings.iter().any(|w| w.contains(&format!("project {locked}: immutable tag rule"))
            && w.contains(r#"tags matches "v*""#)
            && w.contains("refuses moving or deleting")),
        "{said}"
    );
    assert!(warnings.iter().any(|w| w.contains(&format!("project {pruned}: tag retention, Schedule"))), "{said}");
    assert!(
        said.contains(&format!("ok      dr                       project {calm}: immutable tags and retention")),
        "{said}"
    );
    assert!(!said.contains(&elsewhere), "a project no rule writes into is not read: {said}");

    // What the tests' Harbor answered has the shape of Harbor's swagger models.
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{}{path}", harbor.url);
        async move {
            let resp = http.get(url).basic_auth("relay", Some("x")).send().await.unwrap();
            resp.json::<serde_json::Value>().await.unwrap()
        }
    };
    let models = swagger_models("2.15");
    for rule in get(format!("/api/v2.0/projects/{locked}/immutabletagrules")).await.as_array().unwrap() {
        keys_are_the_swaggers(&models, "ImmutableRule", rule);
    }
    let project = get(format!("/api/v2.0/projects/{pruned}")).await;
    let id = project["metadata"]["retention_id"].as_str().unwrap().to_owned();
    keys_are_the_swaggers(&models, "RetentionPolicy", &get(format!("/api/v2.0/retentions/{id}")).await);
}

fn swagger_models(version: &str) -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/harbor/api/swagger-models.json");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["models"][version].clone()
}

/// Every key of `value` (a `model` of Harbor's swagger) and of the models
/// inside it is one the swagger names.
fn keys_are_the_swaggers(models: &serde_json::Value, model: &str, value: &serde_json::Value) {
    let Some(object) = value.as_object() else { return };
    let known: Vec<&str> = models[model].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    for (key, inner) in object {
        assert!(known.contains(&key.as_str()), "{model} has no property {key:?} (swagger: {known:?})");
        let selector = if model.starts_with("Immutable") { "ImmutableSelector" } else { "RetentionSelector" };
        let nested = match (model, key.as_str()) {
            ("RetentionPolicy", "rules") => Some("RetentionRule"),
            ("RetentionPolicy", "trigger") => Some("RetentionRuleTrigger"),
            ("RetentionPolicy", "scope") => Some("RetentionPolicyScope"),
            (_, "tag_selectors") => Some(selector),
            (_, "scope_selectors") => {
                for list in inner.as_object().unwrap().values() {
                    list.as_array().unwrap().iter().for_each(|s| keys_are_the_swaggers(models, selector, s));
                }
                None
            }
            _ => None,
        };
        if let Some(nested) = nested {
            match inner.as_array() {
                Some(items) => items.iter().for_each(|i| keys_are_the_swaggers(models, nested, i)),
                None => keys_are_the_swaggers(models, nested, inner),
            }
        }
    }
}
