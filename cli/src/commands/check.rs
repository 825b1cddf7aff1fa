//! `relay check`: the configuration, every secret it names, each registry and the push right at each destination, and Harbor's API.

use super::*;

pub(crate) async fn run(
    secrets: &SecretSource,
    output: Output,
    config: String,
    offline: bool,
) -> anyhow::Result<ExitCode> {
    let config_location = config;
    let config = match bootstrap::load_config(&config_location).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("relay: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut lines = if offline { Vec::new() } else { ops::check(&config, secrets).await };
    if let Some(parameter) = config_location.strip_prefix("ssm:") {
        // Read to get here: the credentials in use may read it.
        let read = ops::CheckLine {
            name: "configuration".into(),
            what: format!("read SSM parameter {parameter}"),
            result: Ok(String::new()),
            warnings: Vec::new(),
        };
        lines.insert(0, read);
    }
    let ok = lines.iter().all(|l| l.result.is_ok());
    // Accepted, so the exit code stays 0, but printed: credentials in the clear.
    let warnings = config.warnings();
    let text = || table(&config, &warnings, &lines, offline);
    let json = serde_json::json!({
        "ok": ok,
        "offline": offline,
        "registries": config.registries.len(),
        "rules": config.rules.len(),
        "warnings": warnings.iter().map(|w| serde_json::json!({ "field": w.field, "reason": w.reason })).collect::<Vec<_>>(),
        "checks": lines.iter().map(|l| serde_json::json!({
            "name": l.name,
            "what": l.what,
            "ok": l.result.is_ok(),
            "detail": match &l.result { Ok(r) => r.clone(), Err(e) => e.to_string() },
            "warnings": l.warnings,
        })).collect::<Vec<_>>(),
    });
    output.print(text, json);
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The check for people: one line per check, its warnings below it.
fn table(
    config: &relay::Config,
    warnings: &[relay::config::ConfigWarning],
    lines: &[ops::CheckLine],
    offline: bool,
) -> String {
    let mut t = format!("configuration ok: {} registries, {} rules\n", config.registries.len(), config.rules.len());
    if offline {
        t += "offline: no secret read, no registry asked\n";
    }
    for w in warnings {
        t += &format!("WARNING {:<24} {}\n", w.field, w.reason);
    }
    for line in lines {
        t += &match &line.result {
            Ok(remark) if remark.is_empty() => format!("ok      {:<24} {}\n", line.name, line.what),
            Ok(remark) => format!("ok      {:<24} {}: {remark}\n", line.name, line.what),
            Err(e) => format!("FAILED  {:<24} {}: {e}\n", line.name, line.what),
        };
        for w in &line.warnings {
            t += &format!("WARNING {:<24} {w}\n", line.name);
        }
    }
    t
}
