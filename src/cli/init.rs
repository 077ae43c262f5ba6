//! `ftpsync init`: writes a commented job file for `--push|--pull LOCAL URL`
//! that `ftpsync validate` accepts, and never overwrites a file.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use ftpsync::error::Error;
use ftpsync::job::{Direction, Job, TlsMode};

use super::oneoff::parse_url;
use super::validate::scalar;

/// What `ftpsync init` was asked to write.
pub struct InitArgs<'a> {
    pub file: &'a Path,
    pub direction: Direction,
    pub local: &'a str,
    pub url: &'a str,
    pub delete: bool,
    pub password_env: &'a str,
}

/// Writes the job file (creating its directory), refusing to replace one.
pub fn init(a: &InitArgs) -> Result<(), Error> {
    let t = parse_url(a.url)?;
    if let Some(dir) = a.file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
    }
    let text = job_text(a, &t, &local_path(a.local, a.file))?;
    // The job must load as written (a bug here must not leave a bad file).
    Job::from_str(&text, a.file)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(a.file)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Usage(format!(
                "{}: already exists; not overwritten",
                a.file.display()
            )),
            _ => Error::Io(format!("{}: {e}", a.file.display())),
        })?;
    f.write_all(text.as_bytes())
        .map_err(|e| Error::Io(format!("{}: {e}", a.file.display())))
}

fn job_text(a: &InitArgs, t: &super::oneoff::Target, local: &str) -> Result<String, Error> {
    if a.password_env.is_empty()
        || !a
            .password_env
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(Error::Usage(format!(
            "--password-env `{}`: not an environment variable name",
            a.password_env
        )));
    }
    let mut o = String::new();
    let line = |o: &mut String, text: String, comment: &str| {
        let _ = writeln!(o, "{text:<30} # {comment}");
    };
    o.push_str("# ftpsync job written by `ftpsync init`. Check it with `ftpsync validate FILE`,\n");
    o.push_str(
        "# preview with `ftpsync plan FILE`. All keys: \"Job file reference\" in the README.\n",
    );
    let direction = match a.direction {
        Direction::Push => "push",
        Direction::Pull => "pull",
    };
    line(
        &mut o,
        format!("direction: {direction}"),
        "push = local → remote, pull = remote → local",
    );
    line(
        &mut o,
        format!("delete: {}", a.delete),
        "true: also remove on the target what the source no longer has",
    );
    o.push_str("local:\n");
    line(
        &mut o,
        format!("  path: {}", scalar(local)),
        "a relative path is relative to this file",
    );
    o.push_str("remote:\n");
    let _ = writeln!(o, "  host: {}", scalar(&t.host));
    let _ = writeln!(o, "  port: {}", t.port);
    let _ = writeln!(o, "  user: {}", scalar(&t.user));
    let password = format!("password_env: {}", a.password_env);
    if t.user == "anonymous" {
        let _ = writeln!(o, "  # {password}");
    } else {
        line(
            &mut o,
            format!("  {password}"),
            "the environment variable that holds the password",
        );
    }
    line(
        &mut o,
        format!("  root: {}", scalar(&t.root)),
        "the remote directory that mirrors local.path",
    );
    let tls = match t.tls {
        TlsMode::None => (
            "none",
            "explicit: FTPS (AUTH TLS); with none the password goes in clear",
        ),
        TlsMode::Explicit => (
            "explicit",
            "FTPS (AUTH TLS); fails if the server refuses it",
        ),
        TlsMode::Implicit => ("implicit", "FTPS with TLS from the first byte (port 990)"),
    };
    line(&mut o, format!("  tls: {}", tls.0), tls.1);
    o.push_str("filters:\n");
    line(
        &mut o,
        "  exclude: [\".git/**\", \"**/*.tmp\"]".into(),
        "globs relative to the roots",
    );
    o.push_str("# For `ftpsync daemon`: when to run (crontab syntax).\n");
    o.push_str("# schedule: \"*/15 * * * *\"\n");
    Ok(o)
}

/// LOCAL as the job file must write it: relative to the job file's directory
/// when given relative (to the current directory), absolute when absolute.
fn local_path(local: &str, file: &Path) -> String {
    let local_path = Path::new(local);
    if local_path.is_absolute() {
        return local.to_owned();
    }
    let real = |p: &Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    relative_to(&real(local_path), &real(dir))
        .to_string_lossy()
        .into_owned()
}

/// `target` relative to the directory `base`, both absolute.
fn relative_to(target: &Path, base: &Path) -> PathBuf {
    let t: Vec<Component> = target.components().collect();
    let b: Vec<Component> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let r = |t: &str, b: &str| relative_to(Path::new(t), Path::new(b));
        assert_eq!(
            r("/home/me/public", "/home/me/jobs"),
            Path::new("../public")
        );
        assert_eq!(r("/home/me/jobs/site", "/home/me/jobs"), Path::new("site"));
        assert_eq!(r("/home/me", "/home/me"), Path::new("."));
        assert_eq!(
            r("/srv/www", "/home/me/jobs"),
            Path::new("../../../srv/www")
        );
    }
}
