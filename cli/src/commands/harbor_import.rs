//! `relay harbor import`: Harbor's registry endpoints and replication policies, read through its
//! API, written as a relay configuration with a report of what was and was not imported.

use super::*;

/// Where Harbor is and who reads it.
#[derive(clap::Args)]
pub(crate) struct ImportArgs {
    /// The Harbor whose replication set-up is imported (its URL, as `source.url` will hold it).
    #[arg(long, env = "RELAY_HARBOR_URL")]
    harbor: url::Url,
    /// A Harbor system administrator, or a robot account with the system rights to list
    /// registries and replication policies.
    #[arg(long)]
    username: String,
    /// The environment variable holding that account's password (never a flag: flags show in
    /// process listings and shell history).
    #[arg(long, default_value = "HARBOR_PASSWORD")]
    password_env: String,
    /// The AWS account of ECR endpoints that Harbor names by their API host
    /// (`api.ecr.<region>.amazonaws.com`); without it such endpoints are reported, not imported.
    #[arg(long)]
    ecr_account: Option<String>,
    /// Prefix of the Secrets Manager secret names the configuration refers to.
    #[arg(long, default_value = "harbor-relay")]
    secret_prefix: String,
    /// Write the configuration to this file instead of standard output (with `--output json`,
    /// standard output carries the report).
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Do not verify Harbor's TLS certificate (a lab Harbor).
    #[arg(long)]
    insecure: bool,
    /// Write nothing: hold this configuration (a file path, or `ssm:<parameter>`) against
    /// Harbor's policies and say which it covers, which differ and how, which it lacks, and which
    /// Harbor would replicate a second time if left enabled.
    #[arg(long, conflicts_with = "file")]
    compare: Option<String>,
}

pub(crate) async fn run(output: Output, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let password = std::env::var(&args.password_env)
        .with_context(|| format!("{} must hold the password of {}", args.password_env, args.username))?;
    let credentials = relay::registry::Credentials { username: args.username.clone(), password };
    let api = relay::harbor_api::HarborApi::new(
        args.harbor.clone(),
        Some(credentials),
        args.insecure,
        None,
        Duration::from_secs(30),
    )?;
    let refused = |what: &str, e: relay::harbor_api::HarborApiError| {
        match e {
        relay::harbor_api::HarborApiError::Status(401) => {
            anyhow::anyhow!("Harbor refused the credentials of {} (401)", args.username)
        }
        relay::harbor_api::HarborApiError::Status(403) => anyhow::anyhow!(
            "{} may not list {what} (403): use a system administrator, or a robot account with the system rights to list registries and replication policies",
            args.username
        ),
        e => anyhow::anyhow!("reading Harbor's {what}: {e}"),
    }
    };
    let registries = api.registries().await.map_err(|e| refused("registries", e))?;
    let policies = api.replication_policies().await.map_err(|e| refused("replication policies", e))?;
    let options = relay::harbor_import::ImportOptions {
        ecr_account: args.ecr_account,
        secret_prefix: args.secret_prefix,
        ..relay::harbor_import::ImportOptions::new(args.harbor)
    };
    let imported = relay::harbor_import::import(&registries, &policies, &options);
    // What is written must load: a failure here is the import's, not the user's.
    relay::Config::parse(&imported.configuration)
        .context("the imported configuration does not load (please report this with the policies' shapes)")?;
    if let Some(location) = &args.compare {
        let existing = bootstrap::load_config(location).await?;
        let harbor = relay::Config::parse(&imported.configuration)?;
        return Ok(compared(output, relay::harbor_compare::compare(&imported, &harbor, &existing)));
    }
    if let Some(file) = &args.file {
        std::fs::write(file, &imported.configuration).with_context(|| format!("cannot write {}", file.display()))?;
    }
    let text = || match &args.file {
        None => imported.configuration.clone(),
        Some(file) => report(&imported, file),
    };
    output.print(text, serde_json::to_value(&imported)?);
    Ok(ExitCode::SUCCESS)
}

/// The report for people: each policy's and endpoint's fate with its notes, the secrets to
/// create, the reconcile schedule, and where the configuration went.
fn report(imported: &relay::harbor_import::Imported, file: &std::path::Path) -> String {
    let mut t = String::new();
    for p in &imported.policies {
        let verdict = p.rule.as_ref().map_or("not imported".to_owned(), |r| format!("rule {r}"));
        t += &format!("policy {:<4} {:<32} {:<12} {verdict}\n", p.id, p.name, p.trigger);
        for n in &p.notes {
            t += &format!("    {n}\n");
        }
    }
    for r in &imported.registries {
        let verdict = r.registry.as_ref().map_or("not imported".to_owned(), |n| format!("registry {n}"));
        t += &format!("registry {:<4} {:<30} {:<16} {verdict}\n", r.id, r.name, r.harbor_type);
        for n in &r.notes {
            t += &format!("    {n}\n");
        }
    }
    t += "secrets to create:\n";
    for s in &imported.secrets {
        t += &format!("    {}: {}\n", s.secret_id, s.value);
    }
    if let Some(s) = &imported.reconcile_schedule {
        t += &format!("deploy with ReconcileSchedule={s:?}\n");
    }
    t + &format!("written: {}\n", file.display())
}

/// Prints the comparison; exit 1 while Harbor would replicate something a second time, so a
/// migration script can wait for Harbor's policies to be disabled.
fn compared(output: Output, comparison: relay::harbor_compare::Comparison) -> ExitCode {
    let twice: Vec<_> = comparison.policies.iter().filter(|p| p.replicates_twice).collect();
    let text = || {
        let mut t = String::new();
        for p in &comparison.policies {
            let rule = p.rule.as_ref().map(|r| format!(" by rule {r}")).unwrap_or_default();
            t += &format!("policy {:<4} {:<32} {}{rule}\n", p.id, p.name, p.verdict.replace('_', " "));
            for d in &p.differences {
                t += &format!("    {d}\n");
            }
        }
        for p in &twice {
            t += &format!(
                "REPLICATED TWICE: Harbor's policy {} {:?} is enabled beside the relay's rules into the same registry: disable it in Harbor (Administration > Replications > {} > Edit > untick Enable)\n",
                p.id, p.name, p.name
            );
        }
        t
    };
    output.print(text, serde_json::to_value(&comparison).unwrap_or_default());
    if twice.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
