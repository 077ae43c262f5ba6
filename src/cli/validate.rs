//! `ftpsync validate`: what each job file resolves to, printed as a job file
//! itself (the same keys and spellings, defaults filled in, paths absolute;
//! it loads again to the same job), never with the password.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ftpsync::error::{Error, exit};
use ftpsync::job::{
    CatchUp, DeleteLimit, Direction, Job, Overlap, PasswordSource, Permissions, StateLocation,
    TlsMode,
};

use super::out::{Stdout, eprint_line};
use super::{Ui, load};

/// Validates each job file in order; the exit code is the worst (see [`exit::worst`]).
pub fn validate(
    files: Vec<Result<PathBuf, Error>>,
    ui: &Ui,
    out: &mut Stdout,
) -> Result<i32, Error> {
    let mut code = exit::OK;
    for (n, file) in files.into_iter().enumerate() {
        let job = match file.and_then(|f| Ok((load(&f)?, f))) {
            Ok(job) => job,
            Err(e) => {
                eprint_line(&format!("ftpsync: error: {e}"));
                code = exit::worst(code, e.exit_code());
                continue;
            }
        };
        let (job, file) = job;
        if !ui.quiet {
            let sep = if n > 0 { "\n" } else { "" };
            out.print(&format!(
                "{sep}# {}: ok\n{}",
                file.display(),
                resolved(&job)
            ))?;
            if let Err(m) = job.remote.password() {
                eprint_line(&format!("warning: {}: {m}", file.display()));
            }
            let r = &job.remote;
            let trust = ftpsync::ftp::tls::TrustSettings {
                ca_file: r.tls_ca_file.clone(),
                fingerprint: r.tls_fingerprint,
                insecure_skip_verify: r.tls_insecure_skip_verify,
            };
            for w in ftpsync::ftp::tls::risk_warnings(&r.host, &r.user, r.tls, &trust) {
                eprint_line(&format!("warning: {}: {w}", file.display()));
            }
        }
    }
    Ok(code)
}

/// The job as job-file YAML: every key with its resolved value.
pub fn resolved(j: &Job) -> String {
    let mut o = String::new();
    let path = |p: &Path| scalar(&p.to_string_lossy());
    let _ = writeln!(o, "name: {}", scalar(&j.name));
    let _ = writeln!(o, "direction: {}", direction(j.direction));
    let _ = writeln!(o, "delete: {}", j.delete);
    let _ = writeln!(o, "local:\n  path: {}", path(&j.local_root));
    let r = &j.remote;
    let _ = writeln!(
        o,
        "remote:\n  host: {}\n  port: {}",
        scalar(&r.host),
        r.port
    );
    let _ = writeln!(o, "  user: {}", scalar(&r.user));
    match &r.password {
        PasswordSource::None => {}
        PasswordSource::Env(var) => {
            let _ = writeln!(o, "  password_env: {}", scalar(var));
        }
        PasswordSource::File(p) => {
            let _ = writeln!(o, "  password_file: {}", path(p));
        }
        PasswordSource::Inline(_) => {
            let _ = writeln!(o, "  # password: set in the job file (not shown)");
        }
    }
    let _ = writeln!(o, "  root: {}", scalar(&r.root));
    let _ = writeln!(o, "  passive: {}", r.passive);
    let tls = match r.tls {
        TlsMode::None => "none",
        TlsMode::Explicit => "explicit",
        TlsMode::Implicit => "implicit",
    };
    let _ = writeln!(o, "  tls: {tls}");
    if let Some(ca) = &r.tls_ca_file {
        let _ = writeln!(o, "  tls_ca_file: {}", path(ca));
    }
    if let Some(pin) = &r.tls_fingerprint {
        let _ = writeln!(o, "  tls_fingerprint: \"{pin}\"");
    }
    if r.tls_insecure_skip_verify {
        let _ = writeln!(
            o,
            "  tls_insecure_skip_verify: true  # WARNING: the server's certificate is not checked"
        );
    }
    if let Some(n) = r.max_connections {
        let _ = writeln!(o, "  max_connections: {n}");
    }
    let _ = writeln!(o, "concurrency: {}", j.concurrency);
    let (include, exclude) = j.filters.patterns();
    let _ = writeln!(
        o,
        "filters:\n  include: {}\n  exclude: {}",
        list(include),
        list(exclude)
    );
    let compare = serde_json::to_value(j.compare).ok();
    let compare = compare.as_ref().and_then(|v| v.as_str()).unwrap_or("auto");
    let _ = writeln!(o, "compare: {compare}");
    let verify = serde_json::to_value(j.verify).ok();
    let verify = verify.as_ref().and_then(|v| v.as_str()).unwrap_or("auto");
    let _ = writeln!(o, "verify: {verify}");
    let p = &j.retry;
    let _ = writeln!(
        o,
        "retry:\n  max_attempts: {}\n  initial_backoff: {}\n  max_backoff: {}\n  give_up_after: {}",
        p.max_attempts,
        duration(p.initial_backoff),
        duration(p.max_backoff),
        duration(p.give_up_after)
    );
    let _ = writeln!(o, "timeout: {}", duration(j.timeout));
    if let Some(d) = j.deadline {
        let _ = writeln!(o, "deadline: {}", duration(d));
    }
    match j.state_location {
        StateLocation::Local => {
            let _ = writeln!(o, "state: {}", path(&j.state_path));
        }
        StateLocation::Remote => {
            let _ = writeln!(o, "state: remote");
            let _ = writeln!(
                o,
                "state_save_interval: {}",
                duration(j.state_save_interval)
            );
            let _ = writeln!(o, "# working copy: {}", j.state_path.display());
        }
    }
    let _ = writeln!(o, "atomic: {}", j.atomic);
    let max_delete = match j.max_delete {
        DeleteLimit::Count(n) => n.to_string(),
        DeleteLimit::Percent(p) => format!("{p}%"),
    };
    let _ = writeln!(
        o,
        "safety:\n  max_delete: {max_delete}\n  delete_after_errors: {}",
        j.delete_after_errors
    );
    // The schedule's keys only mean something with a schedule (the loader
    // warns about them otherwise).
    if let Some(s) = &j.schedule {
        let _ = writeln!(o, "schedule: {}", scalar(s.expr()));
        match s.zone_name() {
            "local" => {
                let _ = writeln!(o, "# timezone: the system's, which has no IANA name");
            }
            zone => {
                let _ = writeln!(o, "timezone: {}", scalar(zone));
            }
        }
        let overlap = match j.overlap {
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
        };
        let catch_up = match j.catch_up {
            CatchUp::One => "one",
            CatchUp::Never => "none",
        };
        let _ = writeln!(o, "overlap: {overlap}\ncatch_up: {catch_up}");
        let _ = writeln!(o, "jitter: {}", duration(j.jitter));
    }
    for (key, hook) in [("on_success", &j.on_success), ("on_failure", &j.on_failure)] {
        if let Some(argv) = hook {
            let _ = writeln!(o, "{key}: {}", list(argv));
        }
    }
    let _ = writeln!(o, "hook_timeout: {}", duration(j.hook_timeout));
    let m = &j.modes;
    match m.permissions {
        Permissions::Preserve => {
            let _ = writeln!(o, "permissions: preserve");
        }
        Permissions::None => {
            let _ = writeln!(o, "permissions: none");
        }
    }
    for (key, mode) in [("file_mode", m.file), ("dir_mode", m.dir)] {
        if let Some(mode) = mode {
            let _ = writeln!(o, "{key}: \"0o{mode:03o}\"");
        }
    }
    if let Some(rate) = j.bwlimit {
        // Bytes per second, which the loader reads back exactly.
        let _ = writeln!(o, "bwlimit: {rate}B/s");
    }
    o
}

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Push => "push",
        Direction::Pull => "pull",
    }
}

/// A duration as a job file writes it: `500ms`, `30s`, `5m`, `2h`.
pub fn duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}s", d.as_secs_f64());
    }
    if d.subsec_millis() != 0 {
        return format!("{}ms", d.as_millis());
    }
    match d.as_secs() {
        s if s != 0 && s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s != 0 && s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A YAML flow list of strings.
fn list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| scalar(s)).collect();
    format!("[{}]", items.join(", "))
}

/// A string value as a job file must write it to read back the same: `$`
/// doubled (values are `${VAR}`-expanded on load), plain when that is
/// unambiguous, else double-quoted with JSON escapes (valid YAML).
pub fn scalar(s: &str) -> String {
    let s = s.replace('$', "$$");
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '~'))
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._~@+-=$".contains(c))
        && s.parse::<f64>().is_err()
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        s
    } else {
        serde_json::to_string(&s).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_read_back_as_written() {
        assert_eq!(scalar("ftp.example.com"), "ftp.example.com");
        assert_eq!(scalar("/var/www/site"), "/var/www/site");
        assert_eq!(scalar("**/*.tmp"), "\"**/*.tmp\"");
        assert_eq!(scalar("a b"), "\"a b\"");
        assert_eq!(scalar("123"), "\"123\"");
        assert_eq!(scalar("no"), "\"no\"");
        assert_eq!(scalar(""), "\"\"");
        assert_eq!(scalar("pa$h"), "pa$$h");
        assert_eq!(scalar("x: \"y\"\n"), r#""x: \"y\"\n""#);
    }

    #[test]
    fn durations_in_job_file_units() {
        assert_eq!(duration(Duration::from_millis(500)), "500ms");
        assert_eq!(duration(Duration::from_secs(30)), "30s");
        assert_eq!(duration(Duration::from_secs(60)), "1m");
        assert_eq!(duration(Duration::from_secs(90)), "90s");
        assert_eq!(duration(Duration::from_secs(7200)), "2h");
        assert_eq!(duration(Duration::ZERO), "0s");
        assert_eq!(duration(Duration::from_micros(1500)), "0.0015s");
    }
}
