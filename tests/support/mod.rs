//! Shared test support: the harness, third-party servers, the fault proxy.

pub mod fault_proxy;
pub mod harness;
pub mod servers;
