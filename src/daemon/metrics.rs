//! The daemon's metrics: per-job counters and gauges in a registry of their
//! own, rendered as OpenMetrics text (for Prometheus) or as the classic
//! Prometheus text format (for older scrapers and for people with curl).
//!
//! Every per-job series carries a `job` label with the job's name. Prometheus
//! renames a scraped `job` label to `exported_job` unless the scrape config
//! sets `honor_labels: true`, because `job` is also the name it gives the
//! scrape target; the README's monitoring section should say so.
//!
//! Nothing here is process-global: each [`Metrics`] owns its registry, so
//! tests and a reloaded daemon can hold several at once.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// How a run ended (the history's outcome, also the `outcome` label).
pub use crate::state::RunOutcome as Outcome;

/// What one finished run contributes to the metrics. The scheduler builds it
/// from the run's report; keeping it a plain struct keeps this module free of
/// the engine's types.
#[derive(Clone, Debug)]
pub struct RunMetrics {
    /// How the run ended.
    pub outcome: Outcome,
    /// Files transferred (both directions).
    pub files: u64,
    /// Bytes transferred (both directions).
    pub bytes: u64,
    /// Wall-clock time from start to finish.
    pub duration: Duration,
    /// When the run finished; becomes the last-success time on success.
    pub finished_at: DateTime<Utc>,
}

/// The text exposition formats [`Metrics::render_as`] can produce. The
/// HTTP server picks one from the scraper's `Accept` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpositionFormat {
    /// OpenMetrics 1.0 text: what Prometheus asks for first. Counters are
    /// typed under their family name (`ftpsync_runs`), samples end in
    /// `_total`, and the body ends with `# EOF`.
    OpenMetrics,
    /// Prometheus text format 0.0.4: what older scrapers and tools (Telegraf,
    /// Datadog, `promtool check metrics`, a plain `curl`) expect. Same
    /// samples; `# TYPE` names the `_total` sample, and there is no `# EOF`.
    PrometheusText,
}

impl ExpositionFormat {
    /// The `Content-Type` to serve the format with. Prometheus 3 picks its
    /// parser by this header and fails a scrape whose type is missing or
    /// unknown, so it must match the body.
    pub fn content_type(self) -> &'static str {
        match self {
            ExpositionFormat::OpenMetrics => {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            }
            ExpositionFormat::PrometheusText => {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    job: String,
    outcome: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The daemon's metrics. Share it as `Arc<Metrics>`: the scheduler records
/// events, the HTTP server renders. All methods take `&self`; each series is
/// an atomic, so recording never waits for a scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    files: Family<JobLabels, Counter>,
    bytes: Family<JobLabels, Counter>,
    last_duration: Family<JobLabels, FloatGauge>,
    last_success: Family<JobLabels, Gauge>,
    next_run: Family<JobLabels, Gauge>,
    running: Family<JobLabels, Gauge>,
    skipped: Family<JobLabels, Counter>,
    jobs: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry of its own with every family registered and no jobs.
    /// Help texts get their final period from the encoder.
    pub fn new() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            runs: Family::default(),
            files: Family::default(),
            bytes: Family::default(),
            last_duration: Family::default(),
            last_success: Family::default(),
            next_run: Family::default(),
            running: Family::default(),
            skipped: Family::default(),
            jobs: Gauge::default(),
        };
        m.with_families_registered()
    }

    fn with_families_registered(mut self) -> Self {
        let r = &mut self.registry;
        // Counter names get `_total` from the encoder, unit names `_seconds`.
        r.register(
            "ftpsync_runs",
            "Runs finished, by outcome",
            self.runs.clone(),
        );
        r.register(
            "ftpsync_files_transferred",
            "Files transferred by finished runs",
            self.files.clone(),
        );
        r.register(
            "ftpsync_bytes_transferred",
            "Bytes transferred by finished runs",
            self.bytes.clone(),
        );
        r.register_with_unit(
            "ftpsync_last_run_duration",
            "How long the last finished run took",
            Unit::Seconds,
            self.last_duration.clone(),
        );
        r.register_with_unit(
            "ftpsync_last_success_timestamp",
            "When the last successful run finished, as a Unix time (0: never)",
            Unit::Seconds,
            self.last_success.clone(),
        );
        r.register_with_unit(
            "ftpsync_next_run_timestamp",
            "When the job runs next, as a Unix time (absent: not scheduled)",
            Unit::Seconds,
            self.next_run.clone(),
        );
        r.register(
            "ftpsync_running",
            "Whether a run of the job is in progress (1) or not (0)",
            self.running.clone(),
        );
        r.register(
            "ftpsync_skipped_runs",
            "Scheduled runs skipped because the previous run was still going",
            self.skipped.clone(),
        );
        r.register(
            "ftpsync_jobs",
            "Jobs the daemon has scheduled",
            self.jobs.clone(),
        );
        r.register(
            "ftpsync_build",
            "The running ftpsync's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        self
    }

    /// Creates the job's series at zero, so a job shows up (and `increase()`
    /// has a starting point) before its first run. The next-run gauge appears
    /// with the first [`Metrics::set_next_run`].
    pub fn register_job(&self, job: &str) {
        let labels = job_labels(job);
        // `get_or_create` creates the series; its read guard is not needed.
        for outcome in Outcome::ALL {
            drop(self.runs.get_or_create(&run_labels(job, outcome)));
        }
        drop(self.files.get_or_create(&labels));
        drop(self.bytes.get_or_create(&labels));
        drop(self.last_duration.get_or_create(&labels));
        drop(self.last_success.get_or_create(&labels));
        drop(self.running.get_or_create(&labels));
        drop(self.skipped.get_or_create(&labels));
    }

    /// Drops every series of a job that a reload removed, so its last values
    /// do not linger (and alert) forever. Call it after the job's last run
    /// has finished: a later event for the job creates its series again.
    pub fn remove_job(&self, job: &str) {
        let labels = job_labels(job);
        for outcome in Outcome::ALL {
            self.runs.remove(&run_labels(job, outcome));
        }
        self.files.remove(&labels);
        self.bytes.remove(&labels);
        self.last_duration.remove(&labels);
        self.last_success.remove(&labels);
        self.next_run.remove(&labels);
        self.running.remove(&labels);
        self.skipped.remove(&labels);
    }

    /// A run of the job started.
    pub fn run_started(&self, job: &str) {
        self.running.get_or_create(&job_labels(job)).set(1);
    }

    /// A run of the job did not happen after all (another process held
    /// the job): it is no longer running, and no outcome is counted.
    pub fn run_not_started(&self, job: &str) {
        self.running.get_or_create(&job_labels(job)).set(0);
    }

    /// A run of the job finished, however it ended.
    pub fn run_finished(&self, job: &str, run: &RunMetrics) {
        let labels = job_labels(job);
        self.runs.get_or_create(&run_labels(job, run.outcome)).inc();
        self.files.get_or_create(&labels).inc_by(run.files);
        self.bytes.get_or_create(&labels).inc_by(run.bytes);
        self.last_duration
            .get_or_create(&labels)
            .set(run.duration.as_secs_f64());
        if run.outcome == Outcome::Success {
            self.last_success
                .get_or_create(&labels)
                .set(run.finished_at.timestamp());
        }
        self.running.get_or_create(&labels).set(0);
    }

    /// When the job fires next. `None` (nothing scheduled any more) removes
    /// the series rather than showing 0, which an "overdue" alert such as
    /// `time() > ftpsync_next_run_timestamp_seconds + 300` would take for a
    /// missed run.
    pub fn set_next_run(&self, job: &str, next: Option<DateTime<Utc>>) {
        let labels = job_labels(job);
        match next {
            Some(at) => {
                self.next_run.get_or_create(&labels).set(at.timestamp());
            }
            None => {
                self.next_run.remove(&labels);
            }
        }
    }

    /// A scheduled tick was skipped because the job's previous run was still
    /// going.
    pub fn run_skipped(&self, job: &str) {
        self.skipped.get_or_create(&job_labels(job)).inc();
    }

    /// How many jobs are scheduled (after start-up and after each reload).
    pub fn set_jobs(&self, count: usize) {
        self.jobs.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition, ending in `# EOF`.
    pub fn render(&self) -> String {
        self.render_as(ExpositionFormat::OpenMetrics)
    }

    /// The text exposition in the given format.
    pub fn render_as(&self, format: ExpositionFormat) -> String {
        let mut text = String::new();
        let encoded = match format {
            ExpositionFormat::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut text, &self.registry)
            }
            ExpositionFormat::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            }
        };
        // Writing to a String cannot fail, and the encoder's only other error
        // is for native histograms, which this registry has none of.
        if encoded.is_err() {
            tracing::error!("encoding the metrics failed; the exposition is incomplete");
        }
        text
    }
}

fn job_labels(job: &str) -> JobLabels {
    JobLabels {
        job: job.to_owned(),
    }
}

fn run_labels(job: &str, outcome: Outcome) -> RunLabels {
    RunLabels {
        job: job.to_owned(),
        outcome: outcome.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// One sample line: name, labels in their written order, value.
    type Sample = (String, Vec<(String, String)>, String);

    /// Parses the sample lines of an exposition (comments skipped). Good
    /// enough for the values this module writes: no escapes in label values.
    fn samples(text: &str) -> Vec<Sample> {
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a value");
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => {
                        let inner = rest.strip_suffix('}').expect("closing brace");
                        let labels = inner
                            .split(',')
                            .map(|pair| {
                                let (k, v) = pair.split_once('=').expect("k=v");
                                let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                                (k.to_owned(), v.expect("quoted value").to_owned())
                            })
                            .collect();
                        (name, labels)
                    }
                    None => (series, Vec::new()),
                };
                (name.to_owned(), labels, value.to_owned())
            })
            .collect()
    }

    fn job_samples(text: &str, job: &str) -> Vec<Sample> {
        samples(text)
            .into_iter()
            .filter(|(_, labels, _)| labels.iter().any(|(k, v)| k == "job" && v == job))
            .collect()
    }

    fn sample(name: &str, labels: &[(&str, &str)], value: &str) -> Sample {
        (
            name.to_owned(),
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value.to_owned(),
        )
    }

    fn runs(job: &str, outcome: &str, value: &str) -> Sample {
        sample(
            "ftpsync_runs_total",
            &[("job", job), ("outcome", outcome)],
            value,
        )
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).single().expect("a valid time")
    }

    #[test]
    fn metrics_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Metrics>();
    }

    #[test]
    fn a_registered_job_shows_zeros() {
        let m = Metrics::new();
        m.register_job("site");
        let expected = vec![
            runs("site", "success", "0"),
            runs("site", "partial", "0"),
            runs("site", "failed", "0"),
            runs("site", "stopped", "0"),
            runs("site", "refused", "0"),
            sample("ftpsync_files_transferred_total", &[("job", "site")], "0"),
            sample("ftpsync_bytes_transferred_total", &[("job", "site")], "0"),
            sample(
                "ftpsync_last_run_duration_seconds",
                &[("job", "site")],
                "0.0",
            ),
            sample(
                "ftpsync_last_success_timestamp_seconds",
                &[("job", "site")],
                "0",
            ),
            sample("ftpsync_running", &[("job", "site")], "0"),
            sample("ftpsync_skipped_runs_total", &[("job", "site")], "0"),
        ];
        assert_eq!(sorted(job_samples(&m.render(), "site")), sorted(expected));
    }

    #[test]
    fn a_sequence_of_runs_renders_exact_series() {
        let m = Metrics::new();
        m.set_jobs(2);
        m.register_job("site");
        m.register_job("other");
        m.set_next_run("site", Some(at(1_800_000_000)));

        m.run_started("site");
        m.run_skipped("site");
        m.run_finished(
            "site",
            &RunMetrics {
                outcome: Outcome::Success,
                files: 3,
                bytes: 1000,
                duration: Duration::from_millis(2500),
                finished_at: at(1_700_000_000),
            },
        );
        m.run_started("site");
        m.run_finished(
            "site",
            &RunMetrics {
                outcome: Outcome::Partial,
                files: 2,
                bytes: 24,
                duration: Duration::from_millis(750),
                finished_at: at(1_700_000_600),
            },
        );
        m.run_started("site");
        m.set_next_run("site", Some(at(1_800_000_060)));

        let text = m.render();
        let expected = vec![
            runs("site", "success", "1"),
            runs("site", "partial", "1"),
            runs("site", "failed", "0"),
            runs("site", "stopped", "0"),
            runs("site", "refused", "0"),
            sample("ftpsync_files_transferred_total", &[("job", "site")], "5"),
            sample(
                "ftpsync_bytes_transferred_total",
                &[("job", "site")],
                "1024",
            ),
            sample(
                "ftpsync_last_run_duration_seconds",
                &[("job", "site")],
                "0.75",
            ),
            // A partial run does not move the last success.
            sample(
                "ftpsync_last_success_timestamp_seconds",
                &[("job", "site")],
                "1700000000",
            ),
            sample(
                "ftpsync_next_run_timestamp_seconds",
                &[("job", "site")],
                "1800000060",
            ),
            sample("ftpsync_running", &[("job", "site")], "1"),
            sample("ftpsync_skipped_runs_total", &[("job", "site")], "1"),
        ];
        assert_eq!(sorted(job_samples(&text, "site")), sorted(expected));

        // The other job is untouched.
        assert!(
            job_samples(&text, "other")
                .iter()
                .all(|(_, _, value)| value == "0" || value == "0.0")
        );
        let global = samples(&text);
        assert!(global.contains(&sample("ftpsync_jobs", &[], "2")));
        assert!(global.contains(&sample(
            "ftpsync_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            "1",
        )));
    }

    #[test]
    fn a_removed_job_leaves_no_series() {
        let m = Metrics::new();
        m.register_job("gone");
        m.register_job("kept");
        m.set_next_run("gone", Some(at(1_800_000_000)));
        m.run_skipped("gone");
        m.remove_job("gone");
        let text = m.render();
        assert_eq!(job_samples(&text, "gone"), Vec::new());
        assert_eq!(job_samples(&text, "kept").len(), 11);
    }

    #[test]
    fn no_next_run_removes_the_gauge() {
        let m = Metrics::new();
        m.register_job("site");
        m.set_next_run("site", Some(at(1_800_000_000)));
        m.set_next_run("site", None);
        let text = m.render();
        assert!(
            !job_samples(&text, "site")
                .iter()
                .any(|(name, _, _)| name == "ftpsync_next_run_timestamp_seconds")
        );
    }

    #[test]
    fn openmetrics_types_families_and_ends_with_eof() {
        let m = Metrics::new();
        m.register_job("site");
        let text = m.render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE ftpsync_runs counter\n"), "{text}");
        assert!(text.contains("# UNIT ftpsync_last_run_duration_seconds seconds\n"));
        assert!(text.contains("# TYPE ftpsync_build info\n"), "{text}");
    }

    #[test]
    fn prometheus_text_types_samples_and_has_no_eof() {
        let m = Metrics::new();
        m.register_job("site");
        let text = m.render_as(ExpositionFormat::PrometheusText);
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE ftpsync_runs_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE ftpsync_build_info gauge\n"), "{text}");
        // The same samples as the OpenMetrics rendering.
        assert_eq!(sorted(samples(&text)), sorted(samples(&m.render())));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.register_job("a \"quoted\" job");
        let text = m.render();
        assert!(
            text.contains(r#"ftpsync_running{job="a \"quoted\" job"} 0"#),
            "{text}"
        );
    }

    fn sorted(mut v: Vec<Sample>) -> Vec<Sample> {
        v.sort();
        v
    }
}
