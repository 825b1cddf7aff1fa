//! `relay dlq`: the dead-lettered tasks listed with their last error, or sent back to the copy queue.

use super::*;

pub(crate) async fn run(
    sqs: aws_sdk_sqs::Client,
    output: Output,
    list: bool,
    queue_url: String,
    dlq_url: Option<String>,
) -> anyhow::Result<ExitCode> {
    let dlq = match dlq_url {
        Some(u) => u,
        None => ops::dead_letter_queue(&sqs, &queue_url)
            .await?
            .context("the queue has no redrive policy: pass --dlq-url")?,
    };
    if list {
        let letters = ops::list_dead_letters(&sqs, &dlq, 100).await?;
        output.print(|| text(&letters), json(&letters));
    } else {
        let moved = ops::redrive(&sqs, &dlq, &queue_url).await?;
        output.print(
            || format!("{moved} messages moved back to the copy queue\n"),
            serde_json::json!({ "moved": moved }),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The listing as text: a line per task, then the last error.
fn text(letters: &[ops::DeadLetter]) -> String {
    let mut t = String::new();
    for l in letters {
        for task in &l.tasks {
            t += &match task {
                Ok(t) => format!(
                    "{}  received {}×  task {} {:?} {}@{} -> {}/{}\n",
                    l.message_id,
                    l.receive_count,
                    t.id,
                    t.action,
                    t.source.repository,
                    t.source.digest,
                    t.destination.registry,
                    t.destination.repository
                ),
                Err(e) => format!("{}  received {}×  undecodable: {e}\n", l.message_id, l.receive_count),
            };
        }
        let ids: Vec<&str> = l.tasks.iter().filter_map(|t| t.as_ref().ok()).map(|t| t.id.as_str()).collect();
        t += &match (&l.last_error, ids.is_empty()) {
            (Some(e), _) => format!("    last error: {e}\n"),
            (None, false) => format!(
                "    last error: not recorded (moved by SQS's redrive); search the worker logs for task_id {}\n",
                ids.join(", ")
            ),
            (None, true) => String::new(),
        };
    }
    t + &format!("{} messages in the dead-letter queue\n", letters.len())
}

/// The listing as JSON. `task`: the message's task when it holds one;
/// `tasks`: every task it holds (a bundle's several).
fn json(letters: &[ops::DeadLetter]) -> serde_json::Value {
    serde_json::json!(letters
        .iter()
        .map(|l| {
            let lone = match &l.tasks[..] {
                [one] => Some(one),
                _ => None,
            };
            serde_json::json!({
                "message_id": l.message_id,
                "receive_count": l.receive_count,
                "task": lone.and_then(|t| t.as_ref().ok()),
                "tasks": l.tasks.iter().filter_map(|t| t.as_ref().ok()).collect::<Vec<_>>(),
                "undecodable": l.tasks.iter().find_map(|t| t.as_ref().err()).map(|e| e.to_string()),
                "last_error": l.last_error,
            })
        })
        .collect::<Vec<_>>())
}
