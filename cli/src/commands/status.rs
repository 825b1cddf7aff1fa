//! `relay status`: the copy queue's and the dead-letter queue's depth.

use super::*;

pub(crate) async fn run(
    sqs: aws_sdk_sqs::Client,
    output: Output,
    queue_url: String,
    dlq_url: Option<String>,
) -> anyhow::Result<ExitCode> {
    let q = ops::depth(&sqs, &queue_url).await?;
    let dlq = match dlq_url {
        Some(u) => Some(u),
        None => ops::dead_letter_queue(&sqs, &queue_url).await?,
    };
    let dead = match &dlq {
        Some(d) => Some(ops::depth(&sqs, d).await?),
        None => None,
    };
    let text = || {
        let mut t = format!("copy queue: {} waiting, {} in flight, {} delayed\n", q.visible, q.in_flight, q.delayed);
        t += &match dead {
            Some(d) => format!("dead-letter queue: {} messages\n", d.visible + d.in_flight),
            None => "dead-letter queue: none configured\n".to_owned(),
        };
        t
    };
    let json = serde_json::json!({
        "copy_queue": { "waiting": q.visible, "in_flight": q.in_flight, "delayed": q.delayed },
        "dead_letter_queue": dead.map(|d| d.visible + d.in_flight),
    });
    output.print(text, json);
    Ok(ExitCode::SUCCESS)
}
