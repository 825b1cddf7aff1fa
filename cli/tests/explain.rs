//! `relay explain` against the local stack's source and destination registries.

use std::process::{Command, Output};

use relay_tests::app::unique_repo;
use relay_tests::{image, GeneratedImage, ImageKind, Stack, TempFile};

fn explain(config: &TempFile, artifact: &str) -> (Output, serde_json::Value) {
    let stack = Stack::load().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["--output", "json", "explain", "--config", &config.arg(), artifact])
        .env("CLUSTER1_PASSWORD", &stack.target_password)
        .output()
        .expect("relay runs");
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    });
    (o, v)
}

/// Copies `img` (one manifest) from the source to the destination as a
/// plain client would, so the test does not check the relay with itself.
async fn copy_by_hand(stack: &Stack, img: &GeneratedImage, to_repo: &str) {
    let (source, target) = (stack.source(), stack.target());
    for blob in &img.blobs {
        let bytes = source.get_blob(&img.repository, blob).await.unwrap().expect("the source's blob");
        target.put_blob(to_repo, bytes.into()).await.unwrap();
    }
    let (media_type, manifest) = source.get_manifest(&img.repository, &img.tag).await.unwrap().unwrap();
    target.put_manifest(to_repo, &img.tag, &media_type, &manifest).await.unwrap();
}

#[tokio::test]
async fn explain_gives_each_rules_verdict_and_each_destinations_copy() {
    let stack = Stack::load().unwrap();
    let repo = unique_repo("app");
    let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 1, 512).await.unwrap();
    let rules = "  - { name: mirror, destination: { registry: cluster1-registry, namespace: explained, flatten: 0 } }\n  - { name: others, filters: { name: \"other/**\" }, destination: { registry: cluster1-registry } }\n  - { name: no-v, filters: { tag: { pattern: \"v*\", decoration: excludes } }, destination: { registry: cluster1-registry } }\n  - { name: off, enabled: false, destination: { registry: cluster1-registry } }\n";
    let config = TempFile::new("explain", "yaml", stack.config_yaml(rules));
    let artifact = format!("{repo}:v1");
    let mirrored = format!("explained/{repo}");

    // Not copied yet: the rules' verdicts, the destination lacks it, exit 1.
    let (o, v) = explain(&config, &artifact);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(v["digest"], img.digest.as_str());
    let verdicts: Vec<(String, String, Option<String>)> = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().into(),
                r["verdict"].as_str().unwrap().into(),
                r["filter"].as_str().map(Into::into),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("mirror".into(), "replicates".into(), None),
            ("others".into(), "skipped".into(), Some("filters.name".into())),
            ("no-v".into(), "skipped".into(), Some("filters.tag".into())),
            ("off".into(), "skipped".into(), Some("enabled".into())),
        ]
    );
    let destinations = v["destinations"].as_array().unwrap();
    assert_eq!(destinations.len(), 1, "{v}");
    assert_eq!(
        (destinations[0]["repository"].as_str(), destinations[0]["state"].as_str()),
        (Some(mirrored.as_str()), Some("missing"))
    );

    // Another image under that tag at the destination: different.
    let other = image::push(&stack.target(), &mirrored, "v1", ImageKind::OciImage, 1, 512).await.unwrap();
    let (o, v) = explain(&config, &artifact);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(v["destinations"][0]["state"], "different");
    assert_eq!(v["destinations"][0]["digest"], other.digest.as_str());

    // The same bytes there: arrived, exit 0; the table says so too.
    copy_by_hand(&stack, &img, &mirrored).await;
    let (o, v) = explain(&config, &artifact);
    assert!(o.status.success(), "{v}");
    assert_eq!(v["destinations"][0]["state"], "same");
    let table = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["explain", "--config", &config.arg(), &artifact])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&format!("destination cluster1-registry/{mirrored}  there, same digest")), "{table}");
    assert!(table.contains("skipped   filters.tag: tag v1 is excluded by \"v*\""), "{table}");

    // An artifact the source does not hold: said, exit 1.
    let (o, v) = explain(&config, &format!("{repo}:v9"));
    assert_eq!(o.status.code(), Some(1));
    assert!(v["digest"].is_null() && v["destinations"].as_array().unwrap().is_empty(), "{v}");
}

/// With Harbor's API the artifact's labels and type are read, and a label
/// rule's verdict names the labels it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_reads_labels_and_type_through_harbors_api() {
    let stack = Stack::load().unwrap();
    let harbor = relay_tests::fake::FakeRegistry::start(false).await;
    harbor.ping_as_harbor();
    let source = relay_tests::PlainRegistry::new(&harbor.url, None);
    let repo = unique_repo("labelled");
    let img = image::push(&source, &repo, "v1", ImageKind::OciImage, 1, 512).await.unwrap();
    harbor.set_labels(&repo, &img.digest, &["prod"]);
    let yaml = format!(
        "source: {{ url: {}, harbor_api: true }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: cluster1-registry, url: {}, credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }} }}\nrules:\n  - {{ name: prod, filters: {{ label: [prod] }}, destination: {{ registry: cluster1-registry }} }}\n  - {{ name: qa, filters: {{ label: [qa] }}, destination: {{ registry: cluster1-registry }} }}\n",
        harbor.url, stack.target_url, stack.target_user
    );
    let config = TempFile::new("explain-labels", "yaml", yaml);
    // The stand-in serves from this process: the CLI is waited for off its threads.
    let (_, v) = tokio::task::block_in_place(|| explain(&config, &format!("{repo}:v1")));
    assert_eq!(v["labels"], serde_json::json!(["prod"]), "{v}");
    assert_eq!(v["artifact_type"], "IMAGE", "{v}");
    assert_eq!(v["rules"][0]["verdict"], "replicates", "{v}");
    assert_eq!(v["rules"][1]["filter"], "filters.label", "{v}");
    assert!(
        v["rules"][1]["reason"].as_str().unwrap().contains(r#"lacks one of the labels ["qa"] (it has ["prod"])"#),
        "{v}"
    );
    assert_eq!(v["destinations"][0]["state"], "missing", "{v}");
}
