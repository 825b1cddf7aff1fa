//! `relay harbor webhooks`: Harbor's webhook policies kept pointed at the relay, in every project a rule covers;
//! with `--remove`, the relay taken out of them again.

use super::*;

pub(crate) async fn run(
    secrets: &SecretSource,
    output: Output,
    config: String,
    endpoint: url::Url,
    name: String,
    payload_format: relay::harbor_webhooks::PayloadFormat,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let (config, api) = source_api(secrets, &config).await?;
    let auth = secrets.webhook_auth(&config.webhook).await?;
    let wanted = relay::harbor_webhooks::WebhookPolicy::wanted(&name, &endpoint, auth.newest(), payload_format);
    let kept = relay::harbor_webhooks::keep(&api, &config.rules, &wanted, dry_run).await?;
    use relay::harbor_webhooks::{Change, Tally};
    let tally = Tally::of(&kept);
    let text = || {
        let mut t = String::new();
        for (project, change) in &kept {
            let said = if dry_run && *change != Change::Unchanged { "would be " } else { "" };
            t += &format!("{:<32} {said}{}\n", project.name, change.as_str());
        }
        t + &format!(
            "{} projects covered: {} created, {} updated, {} unchanged{}\n",
            kept.len(),
            tally.created,
            tally.updated,
            tally.unchanged,
            if dry_run { " (dry run: nothing written)" } else { "" }
        )
    };
    let json = serde_json::json!({
        "dry_run": dry_run,
        "projects": kept.iter().map(|(p, c)| serde_json::json!({"project": p.name, "change": c.as_str()})).collect::<Vec<_>>(),
    });
    output.print(text, json);
    Ok(ExitCode::SUCCESS)
}

/// `--remove`: the relay's targets taken out of every project's webhook policies.
pub(crate) async fn remove(
    secrets: &SecretSource,
    output: Output,
    config: String,
    endpoint: url::Url,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let (_, api) = source_api(secrets, &config).await?;
    let removed = relay::harbor_webhooks::remove(&api, &endpoint, dry_run).await?;
    let text = || {
        let mut t = String::new();
        for (project, policy, removal) in &removed {
            let said = if dry_run { "would be " } else { "" };
            t += &format!("{:<32} {policy:<24} {said}{}\n", project.name, removal.as_str());
        }
        t + &format!(
            "{} policies sent to {endpoint}{}\n",
            removed.len(),
            if dry_run { " (dry run: nothing written)" } else { "" }
        )
    };
    let json = serde_json::json!({
        "dry_run": dry_run,
        "policies": removed.iter().map(|(p, name, r)| serde_json::json!({"project": p.name, "policy": name, "removal": r.as_str()})).collect::<Vec<_>>(),
    });
    output.print(text, json);
    Ok(ExitCode::SUCCESS)
}

/// The configuration at `location` and its source's Harbor API, which both forms need.
async fn source_api(
    secrets: &SecretSource,
    location: &str,
) -> anyhow::Result<(relay::Config, relay::harbor_api::HarborApi)> {
    let config = bootstrap::load_config(location).await?;
    let api = bootstrap::harbor_api(&config, secrets)
        .await?
        .context("the source is not read through Harbor's API (source.harbor_api is false, or the source did not answer as a Harbor)")?;
    Ok((config, api))
}
