//! Log lines to stderr, for people (`--log-format text`) or for a log pipeline (`json`).

use std::io::IsTerminal as _;

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One line per event, for people.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields`, `target`, `span`, `spans`.
    Json,
}

/// Log lines to stderr, as text or JSON, at `RUST_LOG`'s levels (`info` without it).
pub(crate) fn init(format: LogFormat) {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        LogFormat::Json => json_logs(filter, std::io::stderr).init(),
    }
}

/// `--log-format json`: one object per line, written to `writer`. Every line carries the span
/// it was logged in (`span`) and all its parents (`spans`), each with its fields, so a grant's
/// lines can be found by its `grant` field.
fn json_logs<W>(filter: tracing_subscriber::EnvFilter, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .finish()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn json_logs_are_one_object_per_line_with_the_span_fields() {
        let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buffer.clone();
        let writer = move || Sink(sink.clone());
        let subscriber = json_logs(tracing_subscriber::EnvFilter::new("info"), writer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("grant", grant = "abababababababab", region = "us-east-1");
            let _entered = span.enter();
            tracing::warn!(attempt = 2, "final network measurement failed; retrying");
        });
        let text = String::from_utf8(buffer.lock().expect("buffer").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).expect("one JSON object");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["fields"]["message"], "final network measurement failed; retrying");
        assert_eq!(line["fields"]["attempt"], 2);
        assert_eq!(line["span"]["grant"], "abababababababab");
        assert_eq!(line["spans"][0]["region"], "us-east-1");
    }

    /// A writer into a shared buffer.
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
