//! `relay replicate`, Harbor's manual trigger: when the source is a Harbor
//! (`harbor_api`), the listings go through Harbor's API — the fake Harbor
//! answers no `_catalog`, as Harbor answers none to a robot account — and
//! label rules and tag globs decide as in the webhook; a plain registry is
//! listed through the registry API; a selection that matches nothing, or
//! that no rule replicates, is refused, and the CLI exits 1.

use std::process::Command;

use relay::bootstrap;
use relay::ops::{plan_backfill, Backfill, BackfillError, Selection};
use relay::secrets::SecretSource;
use relay::Config;
use relay_tests::app::fast_retry;
use relay_tests::fake::FakeRegistry;
use relay_tests::{image, workspace_binary, ImageKind, PlainRegistry, Stack, TempFile};

fn project() -> String {
    format!("rep-{:08x}", rand::random::<u32>())
}

/// The source client and Harbor's API (if any), as `relay replicate`
/// builds them from `config`.
async fn clients(config: &Config) -> (relay::registry::RegistryClient, Option<relay::harbor_api::HarborApi>) {
    let secrets = SecretSource::from_process(None);
    let source = bootstrap::source_client(config, &secrets, fast_retry()).await.unwrap();
    (source, bootstrap::harbor_api(config, &secrets).await.unwrap())
}

/// (repository, tag) of each planned task, sorted.
fn planned(b: &Backfill) -> Vec<(String, String)> {
    let mut v: Vec<_> = b
        .tasks
        .iter()
        .map(|t| {
            let tags: Vec<&str> = t.destination.tags.iter().map(|t| t.as_str()).collect();
            (t.destination.repository.to_string(), tags.join(","))
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_harbors_api_labels_and_tag_globs_decide() {
    let stack = Stack::load().unwrap();
    let harbor = FakeRegistry::start(false).await;
    let src = PlainRegistry::new(&harbor.url, None);
    let p = project();
    let app = format!("{p}/team/app");
    for (tag, labels) in [("v1", &["prod"][..]), ("1.0-rc", &["prod"][..]), ("v2", &[][..])] {
        let img = image::push(&src, &app, tag, ImageKind::OciImage, 1, 1024).await.unwrap();
        harbor.set_labels(&app, &img.digest, labels);
    }
    let yaml = format!(
        "source: {{ url: {}, harbor_api: true }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - name: cluster1-registry\n    url: {}\n    credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }}\nrules:\n  - {{ name: prod, filters: {{ name: \"{p}/**\", label: [prod] }}, destination: {{ registry: cluster1-registry }} }}\n",
        harbor.url, stack.target_url, stack.target_user
    );
    let config = Config::parse(&yaml).unwrap();
    let (source, api) = clients(&config).await;
    assert!(api.is_some());
    let backfill = |selection: String| {
        let (config, source, api) = (&config, &source, api.as_ref());
        async move { plan_backfill(config, source, api, &Selection::parse(&selection).unwrap(), None).await }
    };

    // Every artifact is listed; the label rule keeps the two labelled prod.
    let all = backfill(format!("{p}/**")).await.unwrap();
    assert_eq!((all.repositories, all.artifacts), (1, 3));
    assert_eq!(planned(&all), vec![(app.clone(), "1.0-rc".into()), (app.clone(), "v1".into())]);
    // A tag glob narrows the selection before the rules.
    let v = backfill(format!("{p}/**:v*")).await.unwrap();
    assert_eq!(v.artifacts, 2);
    assert_eq!(planned(&v), vec![(app.clone(), "v1".into())]);
    // Nothing selected, and nothing a rule replicates: refused, said why.
    assert!(matches!(
        backfill(format!("{p}/**:nothing-*")).await,
        Err(BackfillError::NothingSelected { repositories: 1 })
    ));
    assert!(matches!(
        backfill(format!("{p}-absent/**")).await,
        Err(BackfillError::NothingSelected { repositories: 0 })
    ));
    assert!(matches!(backfill(format!("{app}:v2")).await, Err(BackfillError::NoRuleMatches { artifacts: 1 })));
}

/// Without `source.harbor_api`, the source is asked whether it is a Harbor
/// (`GET /api/v2.0/ping`): the fake Harbor is, so the listing goes through
/// its API (it serves no `_catalog`) and a label rule applies; the plain
/// registry is not, and a label rule over it is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harbor_api_is_detected_when_not_configured() {
    let stack = Stack::load().unwrap();
    let harbor = FakeRegistry::start(false).await;
    harbor.ping_as_harbor();
    let src = PlainRegistry::new(&harbor.url, None);
    let p = project();
    let img = image::push(&src, &format!("{p}/app"), "v1", ImageKind::OciImage, 1, 512).await.unwrap();
    harbor.set_labels(&format!("{p}/app"), &img.digest, &["prod"]);
    image::push(&src, &format!("{p}/app"), "v2", ImageKind::OciImage, 1, 512).await.unwrap();
    let yaml = |source: &str| {
        format!(
            "source: {{ url: {source} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: cluster1-registry, url: {} }}\nrules:\n  - {{ name: prod, filters: {{ name: \"{p}/**\", label: [prod] }}, destination: {{ registry: cluster1-registry }} }}\n",
            stack.target_url
        )
    };
    let config = Config::parse(&yaml(&harbor.url)).unwrap();
    let (source, api) = clients(&config).await;
    assert!(api.is_some(), "the fake Harbor answers Pong");
    let b = plan_backfill(&config, &source, api.as_ref(), &Selection::parse(&format!("{p}/**")).unwrap(), None)
        .await
        .unwrap();
    assert_eq!(planned(&b), vec![(format!("{p}/app"), "v1".into())], "listed through the API, labels applied");

    let secrets = SecretSource::from_process(None);
    let plain = Config::parse(&yaml(&stack.source_url)).unwrap();
    let refused = bootstrap::harbor_api(&plain, &secrets).await.err().expect("a label rule over a plain registry");
    assert!(refused.to_string().contains("rules prod filter on labels"), "{refused}");
    let unfiltered = Config::parse(&yaml(&stack.source_url).replace(", label: [prod]", "")).unwrap();
    assert!(bootstrap::harbor_api(&unfiltered, &secrets).await.unwrap().is_none(), "a plain registry: no API");
}

/// Harbor's resource filter: `image` keeps what Harbor types `IMAGE` (an
/// image, an index), `artifact` the rest (a Helm chart), read from Harbor's
/// artifact listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resource_filter_separates_images_from_other_artifacts() {
    let stack = Stack::load().unwrap();
    let harbor = FakeRegistry::start(false).await;
    let src = PlainRegistry::new(&harbor.url, None);
    let p = project();
    image::push(&src, &format!("{p}/app"), "v1", ImageKind::OciImage, 1, 512).await.unwrap();
    image::push(&src, &format!("{p}/multi"), "v1", ImageKind::OciIndex { platforms: 2 }, 1, 512).await.unwrap();
    image::push_chart(&src, &format!("{p}/web"), "0.1.0").await.unwrap();
    let yaml = format!(
        "source: {{ url: {}, harbor_api: true }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: cluster1-registry, url: {} }}\nrules:\n  - {{ name: images, filters: {{ name: \"{p}/**\", resource: image }}, destination: {{ registry: cluster1-registry, namespace: images }} }}\n  - {{ name: charts, filters: {{ name: \"{p}/**\", resource: artifact }}, destination: {{ registry: cluster1-registry, namespace: charts }} }}\n",
        harbor.url, stack.target_url
    );
    let config = Config::parse(&yaml).unwrap();
    let (source, api) = clients(&config).await;
    let b = plan_backfill(&config, &source, api.as_ref(), &Selection::parse(&format!("{p}/**")).unwrap(), None)
        .await
        .unwrap();
    assert_eq!(b.artifacts, 3);
    assert_eq!(
        planned(&b),
        vec![
            ("charts/web".into(), "0.1.0".into()),
            ("images/app".into(), "v1".into()),
            ("images/multi".into(), "v1".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_registry_is_listed_by_its_catalog_and_the_cli_exits_1_on_nothing() {
    let stack = Stack::load().unwrap();
    let p = project();
    for (repo, tag) in [("a", "v1"), ("a", "v2"), ("b", "v1"), ("b", "latest")] {
        image::push(&stack.source(), &format!("{p}/{repo}"), tag, ImageKind::OciImage, 1, 512).await.unwrap();
    }
    let yaml = stack.config_yaml(&format!(
        "  - name: mirror\n    filters: {{ name: \"{p}/**\", tag: {{ pattern: \"v*\" }} }}\n    destination: {{ registry: cluster1-registry }}\n"
    ));
    let config = Config::parse(&yaml).unwrap();
    let secrets = SecretSource::from_process(None);
    let source = bootstrap::source_client(&config, &secrets, fast_retry()).await.unwrap();
    let b = plan_backfill(&config, &source, None, &Selection::parse(&format!("{p}/*:{{v1,latest}}")).unwrap(), None)
        .await
        .unwrap();
    assert_eq!((b.repositories, b.artifacts), (2, 3));
    // The rule's own tag filter drops `latest`.
    assert_eq!(planned(&b), vec![(format!("{p}/a"), "v1".into()), (format!("{p}/b"), "v1".into())]);

    let file = TempFile::new("replicate", "yaml", &yaml);
    let relay = |selection: String| {
        Command::new(workspace_binary("relay"))
            .args(["replicate", "--dry-run", "--config"])
            .arg(file.path())
            .arg(selection)
            .output()
            .unwrap()
    };
    let ok = relay(format!("{p}/a:v2"));
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("1 tasks"), "{}", String::from_utf8_lossy(&ok.stdout));
    let none = relay(format!("{p}/a:nothing-*"));
    assert_eq!(none.status.code(), Some(1));
    let said = String::from_utf8_lossy(&none.stderr);
    assert!(said.contains("nothing to replicate") && said.contains("matched nothing"), "{said}");
}
