//! Metrics as CloudWatch Embedded Metric Format: one JSON line on stdout per
//! unit of work, which CloudWatch Logs turns into metrics with no API call
//! (and no latency) on the hot path. Namespace `HarborRelay`.

use serde_json::{json, Map, Value};

pub const NAMESPACE: &str = "HarborRelay";

#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Count,
    Bytes,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Bytes => "Bytes",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// Builds one EMF document. `dimensions` form one dimension set; each of
/// `slices` adds another, `dimensions` plus that one, so the same values
/// are counted as a whole and per registry or per rule without one line
/// per slice.
pub fn document(
    timestamp_ms: u128,
    dimensions: &[(&str, &str)],
    slices: &[(&str, &str)],
    metrics: &[(&str, f64, Unit)],
) -> Value {
    let mut root = Map::new();
    for (k, v) in dimensions.iter().chain(slices) {
        root.insert((*k).to_owned(), json!(v));
    }
    for (name, value, _) in metrics {
        root.insert((*name).to_owned(), json!(value));
    }
    let base: Vec<&str> = dimensions.iter().map(|(k, _)| *k).collect();
    let mut sets = vec![base.clone()];
    sets.extend(slices.iter().map(|(k, _)| base.iter().copied().chain([*k]).collect::<Vec<_>>()));
    let defs: Vec<Value> = metrics.iter().map(|(n, _, u)| json!({"Name": n, "Unit": u.as_str()})).collect();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms as u64,
            "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": sets, "Metrics": defs}],
        }),
    );
    Value::Object(root)
}

/// What a task's metrics are sliced by: its destination registry and its
/// rule, each a name from the configuration (a name the worker does not
/// know counts as [`UNKNOWN`], so a stray message cannot make new metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slices {
    pub registry: String,
    pub rule: String,
}

/// The slice of names the configuration does not hold.
pub const UNKNOWN: &str = "(unknown)";

impl Default for Slices {
    fn default() -> Self {
        Slices { registry: UNKNOWN.into(), rule: UNKNOWN.into() }
    }
}

impl Slices {
    fn pairs(&self) -> [(&str, &str); 2] {
        [("Registry", self.registry.as_str()), ("Rule", self.rule.as_str())]
    }
}

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the EMF lines off for this process (benchmarks that print their
/// own report on stdout); the functions always emit.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Writes one EMF line to stdout.
pub fn emit(dimensions: &[(&str, &str)], metrics: &[(&str, f64, Unit)]) {
    write(dimensions, &[], metrics)
}

/// Writes one EMF line whose values also count per registry and per rule.
pub fn emit_sliced(dimensions: &[(&str, &str)], slices: &Slices, metrics: &[(&str, f64, Unit)]) {
    write(dimensions, &slices.pairs(), metrics)
}

fn write(dimensions: &[(&str, &str)], slices: &[(&str, &str)], metrics: &[(&str, f64, Unit)]) {
    if !ENABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    println!("{}", document(now, dimensions, slices, metrics));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_document_shape() {
        let d = document(
            1_700_000_000_000,
            &[("Function", "worker"), ("Outcome", "copied")],
            &[],
            &[("Tasks", 1.0, Unit::Count), ("BytesCopied", 42.0, Unit::Bytes)],
        );
        assert_eq!(d["Function"], "worker");
        assert_eq!(d["BytesCopied"], 42.0);
        let m = &d["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(m["Namespace"], "HarborRelay");
        assert_eq!(m["Dimensions"], json!([["Function", "Outcome"]]));
        assert_eq!(m["Metrics"][1], json!({"Name": "BytesCopied", "Unit": "Bytes"}));
        assert_eq!(d["_aws"]["Timestamp"], 1_700_000_000_000u64);
    }

    #[test]
    fn each_slice_adds_a_dimension_set_over_the_base() {
        let slices = Slices { registry: "cluster1".into(), rule: "prod".into() };
        let d = document(
            1,
            &[("Function", "worker"), ("Outcome", "failed")],
            &slices.pairs(),
            &[("Tasks", 1.0, Unit::Count)],
        );
        assert_eq!(
            d["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Function", "Outcome"], ["Function", "Outcome", "Registry"], ["Function", "Outcome", "Rule"]])
        );
        assert_eq!((d["Registry"].as_str(), d["Rule"].as_str()), (Some("cluster1"), Some("prod")));
    }
}
