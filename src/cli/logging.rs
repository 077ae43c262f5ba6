//! Where log lines go: stderr, as text (colour only on a terminal) or JSON,
//! with suppaftp's wire trace (which includes PASS) always filtered out. On
//! a terminal the lines go through tracing-indicatif, which draws `run`'s
//! progress bars (see [`super::progress`]) and keeps lines from tearing them.

use super::progress::bars_possible;
use super::{LogFormat, Ui};

pub fn init_logging(ui: &Ui, format: LogFormat, daemon: bool) {
    let verbose = ui.verbose;
    use tracing_indicatif::IndicatifLayer;
    use tracing_indicatif::filter::{IndicatifFilter, hide_indicatif_span_fields};
    use tracing_subscriber::fmt::format::DefaultFields;
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
    // The executor's line per item is the daemon's record; `run` prints its
    // items itself (each once, on stdout).
    let no_wire_trace = filter_fn(move |meta| {
        !(meta.target().starts_with("suppaftp") && *meta.level() == tracing::Level::TRACE)
            && (daemon || meta.target() != ftpsync::exec::ITEM_LOG)
    });
    // Bars only for a person at a terminal, never for the daemon.
    let indicatif = (!daemon && bars_possible()).then(|| {
        IndicatifLayer::new()
            .with_span_field_formatter(hide_indicatif_span_fields(DefaultFields::new()))
    });
    let writer = indicatif.as_ref().map(|l| l.get_stderr_writer());
    let stderr = move || -> Box<dyn std::io::Write> {
        match &writer {
            Some(w) => Box::new(w.clone()),
            None => Box::new(std::io::stderr()),
        }
    };
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(stderr)
            .with_target(false)
            // Colour only for a person at a terminal, never in files or journals.
            .with_ansi(ui.ansi_stderr())
            .boxed(),
        // One object per line; the daemon's job span puts `job` on every one.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(stderr)
            .with_target(false)
            .boxed(),
    };
    let layer = fmt.with_filter(filter).with_filter(no_wire_trace);
    let bars = indicatif.map(|l| l.with_filter(IndicatifFilter::new(false)));
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(bars)
        .try_init();
}
