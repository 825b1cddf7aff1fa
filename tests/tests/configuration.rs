//! The configuration as the Lambda functions hold it, against LocalStack
//! SSM: read again when the parameter's version changes, at once when a
//! task names a registry the worker does not know or comes from a rule it
//! does not have, and an invalid change
//! never replaces a working configuration; a typo never reaches them.

use std::sync::Arc;
use std::time::Duration;

use relay::reload::{Built, Reloading};
use relay::secrets::SecretSource;
use relay::worker::{Message, Worker};
use relay::{bootstrap, Config};
use relay_tests::app::{fast_retry, unique_repo};
use relay_tests::{image, planned_tasks, ImageKind, Stack};

fn build(config: Arc<Config>) -> Built<Worker> {
    Box::pin(async move { Ok(bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await?) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_added_to_the_parameter_is_used_without_a_restart() {
    let stack = Stack::load().unwrap();
    let ssm = aws_sdk_ssm::Client::new(&bootstrap::aws_config().await);
    let name = format!("/harbor-relay/test/reload-{:x}", rand::random::<u32>());
    let put = |text: String| {
        let (ssm, name) = (ssm.clone(), name.clone());
        async move {
            ssm.put_parameter()
                .name(name)
                .value(text)
                .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                .overwrite(true)
                .send()
                .await
                .unwrap();
        }
    };
    let one = stack.config_yaml("  - name: all\n    destination: { registry: cluster1-registry }\n");
    put(one.clone()).await;
    // Checked once an hour: only a task for an unknown registry asks sooner.
    let reloading =
        Reloading::start(&bootstrap::aws_config().await, &format!("ssm:{name}"), Duration::from_secs(3600), build)
            .await
            .unwrap();
    let first = reloading.current().await;
    assert!(!first.destinations.contains_key("cluster2"));

    // A rule for a second registry (the same server under another name).
    let two = one.replace(
        "rules:\n",
        &format!(
            "  - {{ name: cluster2, url: {}, credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }} }}\nrules:\n  - {{ name: to-cluster2, destination: {{ registry: cluster2, namespace: second }} }}\n",
            stack.target_url, stack.target_user
        ),
    );
    let config_two = Config::parse(&two).expect("the second configuration is valid");
    let repo = unique_repo("reload");
    let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 1, 2048).await.unwrap();
    let task = planned_tasks(&config_two, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest)
        .into_iter()
        .find(|t| t.destination.registry == "cluster2")
        .unwrap();
    let messages = [Message { id: "m".into(), body: task.encode(), ..Default::default() }];

    // Unknown before the change: asked at once, still unknown, same worker.
    let same = reloading.current_unless(|w| !w.knows_registries_of(&messages)).await;
    assert!(Arc::ptr_eq(&first, &same));

    put(two).await;
    assert!(Arc::ptr_eq(&first, &reloading.current().await), "not read again before the check is due");
    let second = reloading.current_unless(|w| !w.knows_registries_of(&messages)).await;
    assert!(second.knows_registries_of(&messages), "the new registry is known at once");
    let report = second.run(&task).await.unwrap();
    assert_eq!(report.outcome, Some(relay::registry::Outcome::Copied));
    let dest = format!("second/{}", repo.split('/').nth(1).unwrap());
    assert_eq!(stack.target().digest_at(&dest, "v1").await.unwrap(), Some(img.digest));

    // An invalid change keeps the working configuration.
    put(format!("{one}bogus_field: 1\n")).await;
    let kept = reloading.current_unless(|_| true).await;
    assert!(Arc::ptr_eq(&second, &kept), "an invalid configuration never replaces a working one");
}

/// A rule added to the parameter: the webhook may read it first (each
/// function checks the version on its own clock) and send its tasks to a
/// worker that still holds the old rules, which refuse the mapping. The
/// worker asks for the configuration at once instead of dead-lettering a
/// task of the new rule; a mapping no version produces is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_added_to_the_parameter_is_read_at_once_for_its_first_task() {
    let stack = Stack::load().unwrap();
    let ssm = aws_sdk_ssm::Client::new(&bootstrap::aws_config().await);
    let name = format!("/harbor-relay/test/rule-{:x}", rand::random::<u32>());
    let put = |text: String| {
        let (ssm, name) = (ssm.clone(), name.clone());
        async move {
            let p = aws_sdk_ssm::types::ParameterType::SecureString;
            ssm.put_parameter().name(name).value(text).r#type(p).overwrite(true).send().await.unwrap();
        }
    };
    let (old, new) = (unique_repo("before"), unique_repo("after"));
    let rule = |repo: &str| {
        let project = repo.split('/').next().unwrap().to_owned();
        format!("  - {{ name: {project}, filters: {{ name: \"{project}/**\" }}, destination: {{ registry: cluster1-registry }} }}\n")
    };
    put(stack.config_yaml(&rule(&old))).await;
    let reloading =
        Reloading::start(&bootstrap::aws_config().await, &format!("ssm:{name}"), Duration::from_secs(3600), build)
            .await
            .unwrap();
    let first = reloading.current().await;
    let with_new = stack.config_yaml(&format!("{}{}", rule(&old), rule(&new)));
    let img = image::push(&stack.source(), &new, "v1", ImageKind::OciImage, 1, 2048).await.unwrap();
    let task =
        planned_tasks(&Config::parse(&with_new).unwrap(), &stack, "PUSH_ARTIFACT", &new, "v1", &img.digest).remove(0);
    let messages = [Message { id: "m".into(), body: task.encode(), ..Default::default() }];
    let stale = |w: &Worker| !w.knows_registries_of(&messages) || !w.rules_produce_all_of(&messages);
    assert!(first.knows_registries_of(&messages), "a registry the worker knows");
    assert!(!first.rules_produce_all_of(&messages), "from a rule the worker does not have yet");

    put(with_new).await;
    let second = reloading.current_unless(stale).await;
    assert!(!Arc::ptr_eq(&first, &second), "read again at once, not at the next check");
    assert!(second.rules_produce_all_of(&messages));
    assert_eq!(second.run(&task).await.unwrap().outcome, Some(relay::registry::Outcome::Copied));

    // A forged mapping stays refused by the configuration read again.
    let mut forged = task.clone();
    forged.source.repository = unique_repo("forged").parse().unwrap();
    let forged = [Message { id: "f".into(), body: forged.encode(), ..Default::default() }];
    assert!(!reloading.current_unless(|w| !w.rules_produce_all_of(&forged)).await.rules_produce_all_of(&forged));
}

/// A typo never changes what a rule does: `decoraton` once loaded as a
/// *matching* label filter. `relay config-push` refuses the file, naming the
/// field, and the parameter keeps what it had; the same typo put in the
/// parameter by hand stops the functions' load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_label_filter_is_refused_on_the_way_to_the_functions() {
    let stack = Stack::load().unwrap();
    let name = format!("/harbor-relay/test/typo-{:x}", rand::random::<u32>());
    let file = std::env::temp_dir().join(format!("relay-typo-{:x}.yaml", rand::random::<u32>()));
    let rule = |filter: &str| {
        stack.config_yaml(&format!(
            "  - {{ name: not-wip, filters: {{ label: {{ values: [wip], {filter}: excludes }} }}, destination: {{ registry: cluster1-registry }} }}\n"
        ))
    };
    let (good, typo) = (rule("decoration"), rule("decoraton"));

    std::fs::write(&file, &good).unwrap();
    bootstrap::push_config(&file, &name).await.unwrap();
    std::fs::write(&file, &typo).unwrap();
    let refused = bootstrap::push_config(&file, &name).await.map(|_| ()).unwrap_err().to_string();
    std::fs::remove_file(&file).unwrap();
    assert!(refused.contains("rules[0].filters.label: unknown field `decoraton`"), "{refused}");
    let kept = bootstrap::load_config(&format!("ssm:{name}")).await.unwrap();
    let filter = kept.rules[0].label_filter.as_ref().unwrap();
    assert_eq!(filter.decoration, relay::rules::Decoration::Excludes);

    let ssm = aws_sdk_ssm::Client::new(&bootstrap::aws_config().await);
    let secure = aws_sdk_ssm::types::ParameterType::SecureString;
    ssm.put_parameter().name(&name).value(typo).r#type(secure).overwrite(true).send().await.unwrap();
    let err = bootstrap::load_config(&format!("ssm:{name}")).await.map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("unknown field `decoraton`"), "{err}");
    ssm.delete_parameter().name(&name).send().await.unwrap();
}
