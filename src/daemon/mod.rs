//! `ftpsync daemon`: runs every scheduled job on time, in one process, on
//! the same engine as `ftpsync run`.
//!
//! - [`schedule`]: parsing `schedule:` and computing fire times in a zone.
//! - [`metrics`]: per-job counters and gauges, rendered for Prometheus.
//! - [`http`]: `/healthz` and `/metrics`.
//! - [`notify`]: systemd readiness and watchdog.
//! - [`hooks`]: `on_success` / `on_failure` commands.

pub mod hooks;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod schedule;
