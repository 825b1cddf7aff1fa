//! The soak suite (see `relay_tests::soak`): the short version runs in
//! `make test`; `make soak` runs the full one (200 pushes) and writes its
//! figures to `.local/soak/latest.md` for RELIABILITY.md.

use relay_tests::soak::{run, SoakParams};

fn report(p: &SoakParams, r: &relay_tests::soak::SoakReport) -> String {
    let text = format!(
        "Soak run {} on {} cores:\n\n{}",
        now_utc(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        r.markdown(p)
    );
    println!("{text}");
    text
}

fn now_utc() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%MZ"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_short() {
    let p = SoakParams::short();
    let r = run(p.clone()).await.unwrap();
    report(&p, &r);
    // At least one task per push and destination; more when a delivery
    // answered 503 had enqueued part of its tasks before SQS went away
    // (Harbor's retry enqueues them again: at-least-once).
    assert!(r.tasks_done >= p.pushes * 3, "{r:?}");
    assert_eq!(r.dead_letters, p.poison);
    assert!(r.source_resets >= 1 && r.worker_kills == 1 && r.webhook_503 >= 1, "{r:?}");
    // The Lambda-mode worker took part, and the reloaded rule's pushes
    // arrived (through it alone: see the run).
    assert!(r.lambda_invocations >= 1 && r.lambda_tasks_done >= p.late, "{r:?}");
    assert_eq!(r.late, p.late);
}

/// `make soak`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by `make soak`"]
async fn soak_full() {
    let p = SoakParams::full();
    let r = run(p.clone()).await.unwrap();
    let text = report(&p, &r);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../.local/soak");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(format!("{dir}/latest.md"), text).unwrap();
    assert!(r.tasks_done >= p.pushes * 3, "{r:?}");
    assert_eq!(r.dead_letters, p.poison);
    assert!(r.lambda_tasks_done >= p.late && r.late == p.late, "{r:?}");
    // Lambda's hard kill happened: invocations that had not answered by
    // their deadline were killed, and still nothing was lost.
    assert!(r.lambda_kills >= 1, "no invocation was killed at its deadline: {r:?}");
}
