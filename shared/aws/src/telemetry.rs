//! JSON logs on stdout (CloudWatch in Lambda, the terminal standalone): one
//! object per event whose top-level keys are the event's fields and the
//! fields of every span it happens in (DESIGN §8). So a warning deep inside
//! a blob copy still carries `task_id`, `source`, `destination`, … where the
//! saved Logs Insights queries look for them, not nested under `span`.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the subscriber. `RUST_LOG`-style filter from `filter`, default
/// `info`. Safe to call twice (the second call is a no-op).
pub fn init(filter: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .fmt_fields(JsonFields::new())
        .event_format(FlatJson)
        .with_env_filter(filter)
        .try_init();
}

/// The filter for a function: `rust_log` (`RUST_LOG`) when set, else
/// Lambda's `lambda_log_level` (`AWS_LAMBDA_LOG_LEVEL`, the function's
/// log-level setting) as a filter, else none ([`init`]'s `info`). Metrics
/// (EMF lines) are written whatever the level.
pub fn filter(rust_log: Option<&str>, lambda_log_level: Option<&str>) -> Option<String> {
    let rust_log = rust_log.filter(|v| !v.is_empty()).map(str::to_owned);
    rust_log.or_else(|| lambda_log_level.map(|l| lambda_level(l).to_owned()))
}

/// Lambda's levels (TRACE, DEBUG, INFO, WARN, ERROR, FATAL) as filters.
fn lambda_level(level: &str) -> &'static str {
    match level.to_ascii_uppercase().as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "WARN" => "warn",
        "ERROR" | "FATAL" => "error",
        _ => "info",
    }
}

/// One JSON object per event: `timestamp`, `level`, `message`, the event's
/// fields, and the fields of its spans (outermost first; an inner span's
/// field of the same name wins, an event's field over any span's).
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut object = Map::new();
        object.insert("timestamp".into(), Value::String(timestamp()));
        object.insert("level".into(), Value::String(event.metadata().level().to_string()));
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else { continue };
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields.as_str()) {
                    object.extend(map);
                }
            }
        }
        event.record(&mut Collect(&mut object));
        let line = serde_json::to_string(&object).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// RFC 3339 UTC with microseconds, as CloudWatch reads it.
fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Event fields into the object (typed where JSON has the type).
struct Collect<'a>(&'a mut Map<String, Value>);

impl Visit for Collect<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::Bool(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_deep_inside_spans_carries_every_span_field_at_the_top() {
        let buffer = Buffer::default();
        let b = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(move || b.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let task = tracing::info_span!("task", task_id = "t-1", source = "p/a@sha256:x", destination = "r/p/a");
            let _t = task.enter();
            let blob = tracing::info_span!("blob", digest = "sha256:b", size = 7u64);
            let _b = blob.enter();
            tracing::warn!(retry = 2u64, "blob copy failed, re-opening the source");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["task_id"], "t-1");
        assert_eq!(line["destination"], "r/p/a");
        assert_eq!(line["digest"], "sha256:b");
        assert_eq!(line["size"], 7);
        assert_eq!(line["retry"], 2);
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "blob copy failed, re-opening the source");
        assert!(line.get("span").is_none(), "{line}");
    }

    #[test]
    fn lambda_levels_map_to_filters() {
        assert_eq!(lambda_level("FATAL"), "error");
        assert_eq!(lambda_level("debug"), "debug");
        assert_eq!(lambda_level("nonsense"), "info");
    }
}
