//! `relay config-push`: a configuration validated and sized for its SSM tier, then written to the parameter.

use super::*;

pub(crate) async fn run(
    output: Output,
    file: std::path::PathBuf,
    parameter: String,
    tier: Tier,
) -> anyhow::Result<ExitCode> {
    let content = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    // An invalid file is refused by push_config, with the field
    // named, before it calls AWS; the size of a valid one is
    // checked here, before AWS too.
    let stripped = match fit_config(&content, tier) {
        Fit::AsIs => None,
        Fit::Stripped(s) => Some(TempConfig::write(&s)?),
        Fit::TooLarge(reason) => anyhow::bail!("{}: {reason}; nothing was stored", file.display()),
    };
    let pushed = bootstrap::push_config(stripped.as_ref().map_or(file.as_path(), |t| t.0.as_path()), &parameter).await;
    drop(stripped);
    let p = pushed?;
    let removed = p.bytes != content.len();
    let text = || {
        let mut out = String::new();
        if removed {
            out += &format!(
                "comments removed: {} is {} bytes, over the {} bytes of the {} tier; stored without its comments ({} bytes)\n",
                file.display(),
                content.len(),
                tier.limit(),
                tier.name(),
                p.bytes
            );
        }
        out += &format!(
            "configuration ok: {} registries, {} rules; stored in {parameter} ({} bytes, {} tier, version {})\n",
            p.registries, p.rules, p.bytes, p.tier, p.version
        );
        out
    };
    let json = serde_json::json!({
        "parameter": parameter, "registries": p.registries, "rules": p.rules,
        "bytes": p.bytes, "tier": p.tier, "version": p.version,
        "file_bytes": content.len(), "comments_removed": removed,
    });
    output.print(text, json);
    Ok(ExitCode::SUCCESS)
}
