//! JSON logs on stdout (CloudWatch in Lambda, the terminal standalone), one
//! line per event with the span fields of DESIGN §8 flattened in.

/// Installs the subscriber. `RUST_LOG`-style filter from `filter`, default
/// `info`. Safe to call twice (the second call is a no-op).
pub fn init(filter: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}
