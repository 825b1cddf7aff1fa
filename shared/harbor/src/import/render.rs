//! The imported configuration's text: commented YAML, each entry naming
//! its Harbor id, every scalar quoted as JSON (a YAML double-quoted form).

use super::{q, ImportOptions, Imported, RegistryDraft};

/// The configuration's text: a header of comments (the secrets to
/// create, what was not imported, the reconcile schedule, disabling
/// Harbor's own policies), then the YAML with each entry's Harbor id.
pub(super) fn render(
    imported: &Imported,
    options: &ImportOptions,
    drafts: &[RegistryDraft],
    rules: &[Vec<String>],
) -> String {
    let mut t = header(imported);
    t += "\nsource:\n";
    t += &format!("  url: {}\n", q(options.harbor.as_str().trim_end_matches('/')));
    t += &format!("  credentials: {{ secret_id: {} }}\n", q(&imported.secrets[0].secret_id));
    t += "  harbor_api: true\n\nwebhook:\n";
    t += &format!("  auth_secret_id: {}\n\n", q(&imported.secrets[1].secret_id));
    if drafts.is_empty() {
        t += "registries: []\n";
    } else {
        t += "registries:\n";
        for d in drafts {
            t += &format!("  # Harbor registry {} {:?} ({})\n", d.harbor_id, d.harbor_name, d.harbor_type);
            let outcome = imported.registries.iter().find(|r| r.id == d.harbor_id);
            for n in outcome.into_iter().flat_map(|r| &r.notes) {
                t += &format!("  # {n}\n");
            }
            for (i, l) in d.lines.iter().enumerate() {
                t += &format!("  {}{l}\n", if i == 0 { "- " } else { "  " });
            }
        }
    }
    if rules.is_empty() {
        t += "\nrules: []\n";
        return t;
    }
    t += "\nrules:\n";
    for (rule, outcome) in rules.iter().zip(imported.policies.iter().filter(|p| p.rule.is_some())) {
        t += &format!("  {}\n", rule[0]);
        for n in &outcome.notes {
            t += &format!("  # {n}\n");
        }
        for l in &rule[1..] {
            t += &format!("  {l}\n");
        }
    }
    t
}

fn header(imported: &Imported) -> String {
    let mut t =
        format!("# harbor-relay configuration imported from Harbor {} by `relay harbor import`.\n", imported.harbor);
    t += "# Harbor never returns stored secrets: create these in Secrets Manager before `relay check`:\n";
    for s in &imported.secrets {
        t += &format!("#   {}: {}\n", s.secret_id, s.value);
    }
    let skipped_policies: Vec<_> = imported.policies.iter().filter(|p| p.rule.is_none()).collect();
    let skipped_registries: Vec<_> = imported.registries.iter().filter(|r| r.registry.is_none()).collect();
    if !skipped_policies.is_empty() || !skipped_registries.is_empty() {
        t += "# Not imported (`--output json` gives the whole report):\n";
        for p in skipped_policies {
            t += &format!("#   policy {} {:?}: {}\n", p.id, p.name, p.notes.first().cloned().unwrap_or_default());
        }
        for r in skipped_registries {
            t += &format!("#   registry {} {:?}: {}\n", r.id, r.name, r.notes.first().cloned().unwrap_or_default());
        }
    }
    if let Some(s) = &imported.reconcile_schedule {
        t += &format!("# A scheduled policy was imported: deploy with ReconcileSchedule={s:?}.\n");
    }
    t += "# After the move, disable Harbor's own replication policies that these rules cover\n";
    t += "# (Administration > Replications > the policy > Edit > untick Enable), or both replicate.\n";
    t
}
