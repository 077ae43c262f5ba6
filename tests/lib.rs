//! The integration suite: one binary (one link step) driving the real
//! `ftpsync` executable against real FTP servers on 127.0.0.1.

mod support;

mod adoption;
mod ci_flow;
mod cli;
mod daemon;
mod faults;
mod files;
mod interop;
mod mirror;
mod output;
mod resume;
mod staged;
mod stop;
mod trust;
mod verify;
