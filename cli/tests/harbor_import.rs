//! `relay harbor import` against Harbor's replication API as Harbor 2.8 and
//! 2.15 answer it (recorded bodies, paginated); needs no stack.

use std::process::{Command, Output};

use relay_tests::harbor_replication::{HarborReplication, ADMIN, ROBOT};
use relay_tests::TempFile;

fn relay(args: &[&str], password: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relay")).args(args).env("IMPORT_PASSWORD", password).output().expect("relay runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn import_writes_a_configuration_that_checks_and_reports_what_it_left_out() {
    for version in ["2.8", "2.15"] {
        // Past one page of Harbor's 100, so the listing must follow the pages.
        let harbor = HarborReplication::start(version, 120).await;
        let out_file = TempFile::new("import", "yaml", "");
        let args = |extra: &[&str]| {
            let mut a = vec![
                "harbor",
                "import",
                "--harbor",
                &harbor.url,
                "--username",
                ADMIN.0,
                "--password-env",
                "IMPORT_PASSWORD",
            ];
            a.extend_from_slice(extra);
            a.into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        let file_arg = out_file.arg();
        let run = |extra: &[&str], password: &str| {
            let a = args(extra);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            relay(&a, password)
        };

        let o = tokio::task::block_in_place(|| run(&["--file", &file_arg], ADMIN.1));
        assert!(o.status.success(), "Harbor {version}: {}", text(&o));
        let report = String::from_utf8_lossy(&o.stdout).into_owned();
        for line in ["policy 5 ", "policy 6 ", "policy 7 "] {
            let at = report.find(line).unwrap_or_else(|| panic!("{line} unreported: {report}"));
            assert!(report[at..].lines().next().unwrap().ends_with("not imported"), "{report}");
        }
        assert!(report.contains("harbor-relay/cluster1:"), "secrets to create are listed: {report}");

        // The configuration it wrote loads and passes `relay check --offline`.
        let written = std::fs::read_to_string(out_file.path()).unwrap();
        let config = relay::Config::parse(&written).unwrap();
        assert_eq!(config.rules.len(), 4 + 120, "every supported policy, across pages");
        assert!(config.rules.iter().any(|r| r.name == "generated-119"), "the last page was read");
        let check = tokio::task::block_in_place(|| relay(&["check", "--offline", "--config", &file_arg], ""));
        assert!(check.status.success(), "{}", text(&check));
        assert!(text(&check).contains("configuration ok: 3 registries, 124 rules"), "{}", text(&check));
        let pages: Vec<_> =
            harbor.log().into_iter().filter(|l| l.starts_with("/api/v2.0/replication/policies")).collect();
        assert_eq!(pages.len(), 2, "{pages:?}");

        // `--output json`: the report, with the configuration it writes.
        let o = tokio::task::block_in_place(|| {
            let mut a = args(&[]);
            a.insert(0, "json".into());
            a.insert(0, "--output".into());
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            relay(&a, ADMIN.1)
        });
        assert!(o.status.success(), "{}", text(&o));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["configuration"].as_str(), Some(written.as_str()));
        assert_eq!(report["policies"].as_array().unwrap().len(), harbor.policy_count());
        let left_out: Vec<i64> = report["policies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["rule"].is_null())
            .map(|p| p["id"].as_i64().unwrap())
            .collect();
        assert_eq!(left_out, [5, 6, 7]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn import_says_which_account_harbor_refused() {
    let harbor = HarborReplication::start("2.15", 0).await;
    let run = |user: &str, password: &str| {
        tokio::task::block_in_place(|| {
            relay(
                &["harbor", "import", "--harbor", &harbor.url, "--username", user, "--password-env", "IMPORT_PASSWORD"],
                password,
            )
        })
    };
    let o = run(ADMIN.0, "not-the-password");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("refused the credentials of admin (401)"), "{}", text(&o));
    assert!(!text(&o).contains("not-the-password"), "{}", text(&o));
    let o = run(ROBOT.0, ROBOT.1);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("may not list registries (403)"), "{}", text(&o));
    assert!(o.stdout.is_empty(), "nothing written on a refusal");
}

#[tokio::test(flavor = "multi_thread")]
async fn compare_names_what_is_covered_what_differs_and_what_harbor_would_replicate_twice() {
    let harbor = HarborReplication::start("2.15", 0).await;
    let base = [
        "harbor",
        "import",
        "--harbor",
        harbor.url.as_str(),
        "--username",
        ADMIN.0,
        "--password-env",
        "IMPORT_PASSWORD",
    ];
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = vec!["--output", "json"];
        a.extend_from_slice(&base);
        a.extend_from_slice(extra);
        tokio::task::block_in_place(|| relay(&a, ADMIN.1))
    };
    let verdicts = |o: &Output| -> Vec<(i64, String, bool)> {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)));
        v["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["id"].as_i64().unwrap(),
                    p["verdict"].as_str().unwrap().to_owned(),
                    p["replicates_twice"].as_bool().unwrap(),
                )
            })
            .collect()
    };

    // The import itself covers every policy it could carry over; Harbor's
    // enabled automatic ones would replicate a second time: exit 1.
    let imported = TempFile::new("imported", "yaml", "");
    let o = run(&["--file", &imported.arg()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["--compare", &imported.arg()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v = verdicts(&o);
    let of = |id: i64| v.iter().find(|p| p.0 == id).unwrap().clone();
    for id in [1, 2, 3] {
        assert_eq!(of(id), (id, "covered".into(), true));
    }
    assert_eq!(of(4), (4, "covered".into(), false), "a manual policy does not run by itself");
    for id in [5, 6, 7] {
        assert_eq!(of(id), (id, "not_importable".into(), false));
    }

    // A hand-made configuration: the cluster's rule under another name with
    // another tag filter, nothing for the others.
    let mine = TempFile::new(
        "mine",
        "yaml",
        "source: { url: https://harbor.example.com }\nwebhook: { auth_values_env: A }\nregistries:\n  - { name: cluster, url: https://cluster1.example.com }\nrules:\n  - { name: ours, enabled: false, filters: { name: library/**, tag: { pattern: \"v*\", decoration: excludes } }, destination: { registry: cluster } }\n",
    );
    let o = run(&["--compare", &mine.arg()]);
    assert!(o.status.success(), "our rule is disabled: nothing runs twice: {}", text(&o));
    let v = verdicts(&o);
    assert_eq!(v.iter().find(|p| p.0 == 1).unwrap().1, "differs");
    assert_eq!(v.iter().find(|p| p.0 == 2).unwrap().1, "missing");
    let table = tokio::task::block_in_place(|| {
        let mut a = base.to_vec();
        let mine = mine.arg();
        a.extend_from_slice(&["--compare", &mine]);
        relay(&a, ADMIN.1)
    });
    assert!(text(&table).contains("filters.tag: v* (Matches) → v* (Excludes)"), "{}", text(&table));
}
