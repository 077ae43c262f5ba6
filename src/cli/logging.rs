//! Where log lines go: stderr, as text (colour only on a terminal) or JSON,
//! with suppaftp's wire trace (which includes PASS) always filtered out.

use super::{LogFormat, Ui};

pub fn init_logging(ui: &Ui, format: LogFormat, daemon: bool) {
    let verbose = ui.verbose;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, filter::filter_fn};
    let default = match verbose {
        _ if ui.quiet => "error,libunftp=off",
        // The daemon has no summary on stdout: its log says what each run did.
        0 if daemon => "info,libunftp=off",
        0 => "warn,libunftp=off",
        1 => "info,libunftp=off",
        _ => "debug,libunftp=info",
    };
    let filter = EnvFilter::try_from_env("FTPSYNC_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // suppaftp traces every command it sends, PASS included: never let that
    // through, whatever FTPSYNC_LOG asks for (a cap, not a level of its own).
    let no_wire_trace = filter_fn(|meta| {
        !(meta.target().starts_with("suppaftp") && *meta.level() == tracing::Level::TRACE)
    });
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            // Colour only for a person at a terminal, never in files or journals.
            .with_ansi(ui.ansi_stderr())
            .boxed(),
        // One object per line; the daemon's job span puts `job` on every one.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_target(false)
            .boxed(),
    };
    let layer = fmt.with_filter(filter).with_filter(no_wire_trace);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}
