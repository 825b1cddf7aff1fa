//! `relay explain`: did my push arrive? Every rule's verdict on the artifact, and each destination's copy.

use super::*;

pub(crate) async fn run(
    secrets: &SecretSource,
    output: Output,
    config: String,
    artifact: String,
) -> anyhow::Result<ExitCode> {
    let config = bootstrap::load_config(&config).await?;
    let target: relay::explain::ArtifactRef = artifact.parse()?;
    let e = relay::explain::explain(&config, secrets, &target).await?;
    let text = || {
        let mut t = match &e.digest {
            Some(d) => format!("{} is {d}", e.artifact),
            None => format!("{}: the source has no such artifact\n", e.artifact),
        };
        if e.digest.is_some() {
            if let Some(labels) = &e.labels {
                let kind = e.artifact_type.as_deref().unwrap_or("type unknown");
                t += &format!(
                    " ({kind}; labels: {})",
                    if labels.is_empty() { "none".into() } else { labels.join(", ") }
                );
            }
            t += "\n";
        }
        for v in &e.rules {
            t += &match &v.refusal {
                None => format!("rule {:<28} replicates\n", v.rule),
                Some(r) => format!("rule {:<28} skipped   {}: {}\n", v.rule, r.filter, r.reason),
            };
        }
        if e.digest.is_some() && e.destinations.is_empty() {
            t += "no rule replicates it\n";
        }
        for d in &e.destinations {
            let state = match (d.state, &d.digest, &d.error) {
                ("different", Some(other), _) => format!("different: {other}"),
                ("unreachable", _, Some(error)) => format!("unreachable: {error}"),
                (state, _, _) => state.replace("same", "there, same digest"),
            };
            t += &format!("destination {}/{}  {state}\n", d.registry, d.repository);
        }
        t
    };
    output.print(text, serde_json::to_value(&e)?);
    // 0: every destination a rule names holds the source's digest.
    let arrived = e.digest.is_some() && e.destinations.iter().all(|d| d.state == "same");
    Ok(if arrived { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
