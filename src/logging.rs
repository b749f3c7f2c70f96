//! Log set-up: human-readable by default, JSON lines when `TOOLGATE_LOG_FORMAT=json`; with
//! traces on, the OpenTelemetry layer beside it (each with a filter of its own, so that the
//! log shows what it always showed and the traces get the request path's spans).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `format` is the value of `TOOLGATE_LOG_FORMAT`, if set;
/// `traces` the OpenTelemetry layer when traces are on.
pub fn init(format: Option<&str>, traces: Option<crate::telemetry::Layer>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let json = format.is_some_and(|f| f.eq_ignore_ascii_case("json"));
    let Some(traces) = traces else {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_writer(std::io::stderr);
        let result = if json {
            builder.json().flatten_event(true).try_init()
        } else {
            builder.try_init()
        };
        // Already installed (tests): keep the first one.
        let _ = result;
        return;
    };
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let fmt: crate::telemetry::Layer = if json {
        Box::new(fmt.json().flatten_event(true).with_filter(filter))
    } else {
        Box::new(fmt.with_filter(filter))
    };
    let _ = tracing_subscriber::registry()
        .with(vec![traces, fmt])
        .try_init();
}
