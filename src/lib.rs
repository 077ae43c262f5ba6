//! ftpsync mirrors directory trees between a local disk and FTP/FTPS servers.
//!
//! A run follows the data, and so does this crate:
//!
//! ```text
//! job (YAML) ─▶ scan: local tree · remote tree · state ─▶ plan ─▶ execute ─▶ state + report
//!                                                          ▲
//!                                         daemon: the scheduler runs the engine
//! ```
//!
//! - [`job`]: the job file: schema, defaults, validation, secrets.
//! - [`model`]: the shared types: paths and the rules for untrusted names, tree entries, timestamps with their precision, sides.
//! - [`local`]: the local scan, hashing, safe local paths.
//! - [`ftp`]: connections, listing parsers, reply classes, the connection
//!   pool and the remote scan.
//! - [`state`]: the state store (trait and SQLite), the run history and the job lock.
//! - [`adoption`]: files the state does not know, compared by time before
//!   planning: MDTM where a listing is coarse, the server's time offset learned.
//! - [`plan`]: the pure three-way planner.
//! - [`exec`]: runs a plan through the stores and records each result.
//! - [`stage`]: new directories built under a temporary name and renamed
//!   into place whole.
//! - [`store`]: the two sides behind one seam: the local disk and the FTP
//!   server (every FTP quirk the executor must not know about).
//! - [`engine`]: one run from lock to report; the entry point of `run` and the daemon.
//! - [`events`]: what a run reports while it runs (events, progress counters), for renderers.
//! - [`report`]: human and JSON output.
//! - [`history`]: the recorded runs of a job as a table or JSON (`ftpsync history`).
//! - [`serve`]: the built-in FTP server (libunftp) for trying ftpsync and for tests.
//! - [`daemon`]: `ftpsync daemon`: the scheduler, metrics, health, hooks, systemd.
//! - [`error`]: the top-level error and exit codes.

pub mod adoption;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod events;
pub mod exec;
pub mod ftp;
pub mod history;
pub mod job;
pub mod local;
pub mod model;
pub mod plan;
pub mod report;
pub mod serve;
pub mod stage;
pub mod state;
pub mod store;
