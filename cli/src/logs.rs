//! The functions' log lines read from CloudWatch Logs for `relay history`:
//! `FilterLogEvents` on each log group, every page, from a start time on.

use anyhow::Context;
use aws_sdk_cloudwatchlogs::Client;
use serde_json::Value;

/// The log groups the SAM template gives a stack's webhook and worker
/// (`/aws/lambda/<stack>-webhook`, `/aws/lambda/<stack>-worker`).
pub fn stack_log_groups(stack: &str) -> [String; 2] {
    ["webhook", "worker"].map(|f| format!("/aws/lambda/{stack}-{f}"))
}

/// Every JSON line the groups hold from `start_ms` (Unix milliseconds)
/// on; Lambda's own plain-text lines (START, END, REPORT) are skipped.
pub async fn read(client: &Client, groups: &[String], start_ms: i64) -> anyhow::Result<Vec<Value>> {
    let mut lines = Vec::new();
    for group in groups {
        let mut pages = client.filter_log_events().log_group_name(group).start_time(start_ms).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.with_context(|| format!("FilterLogEvents on {group}"))?;
            let messages = page.events().iter().filter_map(|e| e.message());
            lines.extend(messages.filter_map(|m| serde_json::from_str::<Value>(m).ok()));
        }
    }
    Ok(lines)
}
