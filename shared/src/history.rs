//! An execution history, as Harbor lists replication executions: per
//! event, when it arrived, the artifact and its tags, and for each
//! destination the outcome, duration, bytes and error — built from the
//! JSON log lines the webhook and the worker write (every line of a task
//! carries `task_id`, `event_key`, `rule`, `source`, `destination`,
//! `tags`; the last one its outcome). `relay history` reads them from a
//! file, stdin or CloudWatch Logs.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// One event (one push, deletion or reconcile finding) and what became of
/// it at each destination.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Execution {
    pub event_key: String,
    /// The first line about it (the webhook's enqueue, when logged).
    #[serde(serialize_with = "rfc3339")]
    pub arrived: OffsetDateTime,
    /// `repository@digest` at the source.
    pub artifact: String,
    pub tags: Vec<String>,
    pub destinations: Vec<DestinationRun>,
    /// Why the event yielded no task (`relay history --all` shows these).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unanswered: Option<Unanswered>,
}

/// The webhook's answer to an event that yielded no task.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Unanswered {
    pub reason: String,
    /// A bounded word: `event_type`, `no_rules`, `disabled`, `deletion`,
    /// `unmappable` or `filters`.
    pub cause: String,
    /// Each rule's verdict (`rule`, `verdict`, `filter`, `reason`).
    pub verdicts: Value,
}

/// One task: the artifact at one destination.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DestinationRun {
    pub task_id: String,
    /// `registry/repository`.
    pub destination: String,
    pub rule: String,
    /// The worker's last word: `copied`, `already_present`, … ; `retrying`
    /// (an attempt failed, another follows), `failed` (dead-lettered),
    /// `parked`, `continued`; `pending` when no worker line is there yet.
    pub outcome: String,
    pub attempts: u32,
    pub duration_ms: Option<u64>,
    pub bytes: Option<u64>,
    pub error: Option<String>,
    #[serde(serialize_with = "rfc3339_option")]
    pub finished: Option<OffsetDateTime>,
}

impl DestinationRun {
    /// The worker's line `l` about this task, when it tells an end.
    fn take(&mut self, l: &Value, at: OffsetDateTime) {
        let text = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
        let outcome = match (l["message"].as_str(), l["settled"].as_str()) {
            (Some("task done"), _) => text("outcome"),
            (Some("task failed"), Some("retry")) => "retrying".into(),
            (Some("task failed"), _) => "failed".into(),
            (Some("task deferred"), _) => text("outcome"),
            _ => return,
        };
        self.attempts += u32::from(outcome != "parked" && outcome != "continued");
        self.outcome = outcome;
        self.duration_ms = l["duration_ms"].as_u64();
        self.bytes = l["bytes"].as_u64();
        self.error = l["error"].as_str().or(l["reason"].as_str()).map(str::to_owned);
        self.finished = Some(at);
    }

    pub fn failed(&self) -> bool {
        matches!(self.outcome.as_str(), "failed" | "retrying" | "rejected")
    }
}

fn rfc3339<S: serde::Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.format(&Rfc3339).map_err(serde::ser::Error::custom)?)
}

fn rfc3339_option<S: serde::Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// What `relay history` shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub rule: Option<String>,
    /// A registry name from the configuration.
    pub destination: Option<String>,
    /// A source repository, or a glob over them (Harbor's semantics).
    pub repository: Option<crate::rules::Pattern>,
    pub tag: Option<String>,
    pub since: Option<OffsetDateTime>,
    /// Only destinations whose task failed (finally or for now).
    pub failed: bool,
    /// Events that yielded no task too, with why.
    pub all: bool,
}

impl Filter {
    /// `execution` with only the destinations the filter keeps; `None` when
    /// none is left or the event itself is filtered out.
    pub fn apply(&self, mut execution: Execution) -> Option<Execution> {
        if self.since.is_some_and(|s| execution.arrived < s) {
            return None;
        }
        let repository = execution.artifact.split('@').next().unwrap_or_default();
        if self.repository.as_ref().is_some_and(|p| !p.is_match(repository)) {
            return None;
        }
        if self.tag.as_ref().is_some_and(|t| !execution.tags.contains(t)) {
            return None;
        }
        if execution.unanswered.is_some() {
            let about_tasks = self.rule.is_some() || self.destination.is_some() || self.failed;
            return (self.all && !about_tasks).then_some(execution);
        }
        execution.destinations.retain(|d| {
            self.rule.as_ref().is_none_or(|r| d.rule.split(',').any(|x| x == r))
                && self.destination.as_ref().is_none_or(|r| d.destination.split('/').next() == Some(r.as_str()))
                && (!self.failed || d.failed())
        });
        (!execution.destinations.is_empty()).then_some(execution)
    }
}

impl Unanswered {
    /// From the webhook's line (its verdicts are a JSON text there).
    fn of(l: &Value) -> Unanswered {
        let text = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
        Unanswered {
            reason: text("reason"),
            cause: text("cause"),
            verdicts: l["verdicts"].as_str().and_then(|v| serde_json::from_str(v).ok()).unwrap_or_default(),
        }
    }
}

/// The webhook's line for an event that yielded no task.
const UNANSWERED: &str = "nothing to enqueue";

/// The executions the lines tell of, newest first.
pub fn executions(lines: impl IntoIterator<Item = Value>) -> Vec<Execution> {
    let mut events: BTreeMap<String, Execution> = BTreeMap::new();
    let mut lines: Vec<(OffsetDateTime, Value)> = lines
        .into_iter()
        .filter_map(|l| {
            let at = OffsetDateTime::parse(l["timestamp"].as_str()?, &Rfc3339).ok()?;
            let unanswered = l["message"] == UNANSWERED;
            (l["event_key"].is_string() && (l["task_id"].is_string() || unanswered)).then_some((at, l))
        })
        .collect();
    lines.sort_by_key(|(at, _)| *at);
    for (at, l) in lines {
        let text = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
        let event = events.entry(text("event_key")).or_insert_with(|| Execution {
            event_key: text("event_key"),
            arrived: at,
            artifact: text("source"),
            tags: Vec::new(),
            destinations: Vec::new(),
            unanswered: None,
        });
        if l["message"] == UNANSWERED {
            event.tags.extend(l["tags"].as_str().filter(|t| !t.is_empty()).map(str::to_owned));
            event.unanswered = Some(Unanswered::of(&l));
            continue;
        }
        for tag in l["tags"].as_str().unwrap_or_default().split(',').filter(|t| !t.is_empty()) {
            if !event.tags.iter().any(|t| t == tag) {
                event.tags.push(tag.to_owned());
            }
        }
        let task_id = text("task_id");
        let run = match event.destinations.iter_mut().position(|d| d.task_id == task_id) {
            Some(i) => &mut event.destinations[i],
            None => {
                event.destinations.push(DestinationRun {
                    task_id: task_id.clone(),
                    destination: text("destination"),
                    rule: text("rule"),
                    outcome: "pending".into(),
                    attempts: 0,
                    duration_ms: None,
                    bytes: None,
                    error: None,
                    finished: None,
                });
                event.destinations.last_mut().expect("just pushed")
            }
        };
        run.take(&l, at);
    }
    let mut all: Vec<Execution> = events.into_values().collect();
    all.sort_by_key(|e| std::cmp::Reverse(e.arrived));
    all
}

/// The log lines in `text`: JSON lines as the functions write them, or
/// the answer of CloudWatch Logs' `FilterLogEvents` (`{"events": [{"message":
/// "<a JSON line>"}, …]}`, as `aws logs filter-log-events` prints it),
/// several such documents one after another included. Other lines are
/// skipped.
pub fn parse_lines(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for doc in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        let Ok(doc) = doc else {
            // Not JSON throughout: take the lines that are.
            return text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .flat_map(unwrap_events)
                .collect();
        };
        out.extend(unwrap_events(doc));
    }
    out
}

fn unwrap_events(doc: Value) -> Vec<Value> {
    match doc.get("events").and_then(Value::as_array) {
        Some(events) => events
            .iter()
            .filter_map(|e| e["message"].as_str())
            .filter_map(|m| serde_json::from_str::<Value>(m).ok())
            .collect(),
        None => vec![doc],
    }
}

/// The executions as a table, one row per destination.
pub fn table(executions: &[Execution]) -> String {
    let mut rows =
        vec![["ARRIVED", "ARTIFACT", "TAGS", "DESTINATION", "OUTCOME", "DURATION", "BYTES", "ERROR"].map(String::from)];
    for e in executions {
        if let Some(u) = &e.unanswered {
            rows.push([
                e.arrived.format(&Rfc3339).unwrap_or_default(),
                e.artifact.clone(),
                e.tags.join(","),
                "-".into(),
                "no task".into(),
                String::new(),
                String::new(),
                refusals(u),
            ]);
        }
        for (i, d) in e.destinations.iter().enumerate() {
            let first = i == 0;
            let arrived = e.arrived.format(&Rfc3339).unwrap_or_default();
            rows.push([
                if first { arrived } else { String::new() },
                if first { e.artifact.clone() } else { String::new() },
                if first { e.tags.join(",") } else { String::new() },
                d.destination.clone(),
                d.outcome.clone(),
                d.duration_ms.map(|ms| format!("{:.1}s", ms as f64 / 1000.0)).unwrap_or_default(),
                d.bytes.map(|b| b.to_string()).unwrap_or_default(),
                d.error.clone().unwrap_or_default(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..8).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `reason`, then each rule's refusal: `rule: filter (why)`.
fn refusals(u: &Unanswered) -> String {
    let rules = u.verdicts.as_array().into_iter().flatten().filter_map(|v| {
        Some(format!(
            "{}: {} ({})",
            v["rule"].as_str()?,
            v["filter"].as_str()?,
            v["reason"].as_str().unwrap_or_default()
        ))
    });
    std::iter::once(u.reason.clone()).chain(rules).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn line(at: &str, message: &str, task: &str, destination: &str, extra: Value) -> Value {
        let mut l = json!({
            "timestamp": at, "message": message, "task_id": task, "event_key": "ev-1",
            "source": "library/alpine@sha256:aa", "destination": destination, "rule": "r", "tags": "3.20"
        });
        for (k, v) in extra.as_object().unwrap() {
            l[k] = v.clone();
        }
        l
    }

    #[test]
    fn lines_come_as_json_lines_or_as_filter_log_events_answers() {
        let a = json!({"timestamp": "2026-12-01T10:00:00Z", "message": "task done", "task_id": "t"});
        let plain = format!("{a}\nnot json\n{a}\n");
        assert_eq!(parse_lines(&plain).len(), 2);
        let answer =
            json!({"events": [{"message": a.to_string(), "logStreamName": "s"}, {"message": "START RequestId"}]});
        assert_eq!(parse_lines(&format!("{answer}\n{answer}")), vec![a.clone(), a]);
    }

    #[test]
    fn an_event_without_a_task_shows_with_all_and_says_why() {
        let verdicts = json!([{"rule": "lib", "verdict": "skipped", "filter": "filters.name", "reason": "proj/app does not match \"library/**\""}]);
        let lines = vec![json!({
            "timestamp": "2026-12-01T10:00:00Z", "message": "nothing to enqueue", "event_key": "ev-2",
            "source": "proj/app@sha256:bb", "tags": "v1", "reason": "no enabled rule matches", "cause": "filters",
            "verdicts": verdicts.to_string(),
        })];
        let all = executions(lines);
        assert_eq!(all.len(), 1);
        let e = &all[0];
        assert!(e.destinations.is_empty());
        assert_eq!(e.unanswered.as_ref().map(|u| (u.cause.as_str(), u.verdicts.clone())), Some(("filters", verdicts)));
        assert!(Filter::default().apply(e.clone()).is_none(), "shown with --all only");
        assert!(Filter { all: true, ..Filter::default() }.apply(e.clone()).is_some());
        assert!(Filter { all: true, failed: true, ..Filter::default() }.apply(e.clone()).is_none(), "no task failed");
        let shown = table(&all);
        assert!(shown.contains("no task") && shown.contains("lib: filters.name (proj/app does not match"), "{shown}");
    }

    #[test]
    fn each_destination_ends_with_its_last_line() {
        let lines = vec![
            line("2026-12-01T10:00:00Z", "task enqueued", "t1", "c1/library/alpine", json!({})),
            line("2026-12-01T10:00:00Z", "task enqueued", "t2", "c2/library/alpine", json!({})),
            line(
                "2026-12-01T10:00:01Z",
                "task failed",
                "t2",
                "c2/library/alpine",
                json!({"settled": "retry", "error": "HTTP 500"}),
            ),
            line(
                "2026-12-01T10:00:02Z",
                "task done",
                "t1",
                "c1/library/alpine",
                json!({"outcome": "copied", "bytes": 42, "duration_ms": 900}),
            ),
            line(
                "2026-12-01T10:00:09Z",
                "task failed",
                "t2",
                "c2/library/alpine",
                json!({"settled": "dead_letter", "error": "HTTP 403"}),
            ),
            json!({"timestamp": "2026-12-01T10:00:03Z", "message": "worker polling"}),
        ];
        let all = executions(lines);
        assert_eq!(all.len(), 1);
        let e = &all[0];
        assert_eq!((e.artifact.as_str(), e.tags.clone()), ("library/alpine@sha256:aa", vec!["3.20".to_owned()]));
        let c1 = &e.destinations[0];
        assert_eq!((c1.outcome.as_str(), c1.bytes, c1.duration_ms, c1.attempts), ("copied", Some(42), Some(900), 1));
        let c2 = &e.destinations[1];
        assert_eq!((c2.outcome.as_str(), c2.error.as_deref(), c2.attempts), ("failed", Some("HTTP 403"), 2));

        let only_failed = Filter { failed: true, ..Filter::default() }.apply(e.clone()).unwrap();
        assert_eq!(only_failed.destinations.len(), 1);
        assert_eq!(only_failed.destinations[0].destination, "c2/library/alpine");
        assert!(Filter { destination: Some("c1".into()), ..Filter::default() }.apply(e.clone()).is_some());
        assert!(Filter { destination: Some("c3".into()), ..Filter::default() }.apply(e.clone()).is_none());
        assert!(Filter { tag: Some("latest".into()), ..Filter::default() }.apply(e.clone()).is_none());
        let since = OffsetDateTime::parse("2026-12-01T11:00:00Z", &Rfc3339).unwrap();
        assert!(Filter { since: Some(since), ..Filter::default() }.apply(e.clone()).is_none());
        let repo = crate::rules::Pattern::new("library/*").unwrap();
        assert!(Filter { repository: Some(repo), ..Filter::default() }.apply(e.clone()).is_some());
        let table = table(&all);
        assert!(table.lines().nth(1).unwrap().contains("c1/library/alpine  copied"), "{table}");
        assert!(table.contains("HTTP 403"), "{table}");
    }
}
