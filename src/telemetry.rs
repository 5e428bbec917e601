//! Logging setup: structured events on stdout (stderr for `status`, whose stdout is its report),
//! JSON by default, level from `RUST_LOG`.
//!
//! Kubernetes collects stdout; log pipelines parse JSON without configuration, so JSON is the
//! default and `text` is for terminals. Nothing here filters secrets: the rest of the binary never
//! puts one in a field or message (see `config::Secret`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// `info` for cleanslate, and only warnings from the HTTP/2 and gRPC plumbing, which is chatty at info.
const DEFAULT_FILTER: &str =
    "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn,rustls=warn,kube_client=warn,kube_runtime=warn";

/// Installs the global subscriber, writing to stdout, or to stderr when `to_stderr`. Safe to call
/// once per process.
pub fn init(format: LogFormat, to_stderr: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let writer = tracing_subscriber::fmt::writer::BoxMakeWriter::new(move || -> Box<dyn std::io::Write> {
        if to_stderr { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) }
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_target(false);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}
