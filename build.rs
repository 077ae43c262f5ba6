//! Build script: links a release binary with the functions a run executes
//! placed together at the front of its code (`link/hot-functions.txt`,
//! made by `bench/symbol-order.sh`).
//!
//! A run touches about 2 MB of the binary's 10 MB of code, scattered over
//! all of it; the kernel maps each touched page with its neighbours, so a
//! no-op re-run held 7 MB of code in memory. Placed together, the same
//! functions take about 4 MB (see bench/README.md, session 18). Nothing
//! else changes: a function missing from the list (renamed, new) is
//! placed as before, after the listed ones.
//!
//! Only rust-lld, the default linker of x86_64 Linux since Rust 1.90,
//! takes `--symbol-ordering-file`; anything else links as usual. Set
//! `FTPSYNC_NO_SYMBOL_ORDER=1` to leave the order to the linker, e.g.
//! with a linker chosen in a cargo config (which this script cannot see).

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/hot-functions.txt");
    println!("cargo:rerun-if-env-changed=FTPSYNC_NO_SYMBOL_ORDER");
    if env::var("PROFILE").as_deref() != Ok("release")
        || env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || env::var_os("FTPSYNC_NO_SYMBOL_ORDER").is_some()
        || !default_lld()
    {
        return;
    }
    let list = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("link")
        .join("hot-functions.txt");
    if !list.is_file() || list.to_string_lossy().contains(',') {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    // Names the build does not have (another version of a dependency)
    // are expected: they are skipped without a word.
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// Whether this build links with rust-lld: Rust 1.90 or later, with no
/// linker named in the flags or the environment.
fn default_lld() -> bool {
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") || flags.contains("fuse-ld") {
        return false;
    }
    if env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some() {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let text = String::from_utf8_lossy(&out.stdout);
    let minor = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    matches!(minor, Some(m) if m >= 90)
}
