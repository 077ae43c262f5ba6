//! One-off runs without a job file: `--push LOCAL URL` and `--pull LOCAL URL`
//! (`ftp://user@host[:port]/path`, `ftps://` for explicit TLS), with the
//! password from `FTPSYNC_PASSWORD` or a prompt on the terminal.

use std::io::IsTerminal;
use std::path::PathBuf;

use ftpsync::error::Error;
use ftpsync::job::{Direction, Job, OneOff, PasswordSource, Secret, TlsMode};

/// The environment variable that holds a one-off run's password.
pub const PASSWORD_ENV: &str = "FTPSYNC_PASSWORD";

/// `--push LOCAL URL` / `--pull LOCAL URL`.
#[derive(clap::Args, Debug, Clone)]
pub struct OneOffArgs {
    /// Push LOCAL to URL without a job file: ftp://user@host[:port]/path
    /// (ftps:// for explicit TLS); the password comes from FTPSYNC_PASSWORD
    /// or is asked on the terminal.
    #[arg(long, num_args = 2, value_names = ["LOCAL", "URL"], conflicts_with = "pull")]
    pub push: Option<Vec<String>>,
    /// Pull URL into LOCAL without a job file (URL as for --push).
    #[arg(long, num_args = 2, value_names = ["LOCAL", "URL"])]
    pub pull: Option<Vec<String>>,
}

impl OneOffArgs {
    /// The direction, local path and URL, when given.
    pub fn given(&self) -> Option<(Direction, &str, &str)> {
        let (direction, values) = match (&self.push, &self.pull) {
            (Some(v), _) => (Direction::Push, v),
            (None, Some(v)) => (Direction::Pull, v),
            (None, None) => return None,
        };
        match &values[..] {
            [local, url] => Some((direction, local.as_str(), url.as_str())),
            _ => None,
        }
    }
}

/// The server side of a URL.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub root: String,
    pub tls: TlsMode,
}

/// Parses `ftp://user@host[:port]/path` (`ftps://`: explicit TLS; no user:
/// anonymous; the path is the remote root, `/` when absent). User and path
/// are percent-decoded. A password in the URL is refused, and no error
/// message repeats the URL's user part.
pub fn parse_url(url: &str) -> Result<Target, Error> {
    let bad = |m: &str| Error::Usage(format!("URL: {m}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected ftp://user@host[:port]/path or ftps://…"))?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "ftp" => TlsMode::None,
        "ftps" => TlsMode::Explicit,
        _ => return Err(bad("the scheme must be ftp:// or ftps:// (explicit TLS)")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => {
            return Err(bad(
                "a password in the URL is refused (other users can read the command line): \
                 set FTPSYNC_PASSWORD, or leave it unset to be asked",
            ));
        }
        Some((userinfo, hostport)) => (decode(userinfo, "the user")?, hostport),
        None => ("anonymous".to_owned(), authority),
    };
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs its closing `]`"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("junk after `]`"))?,
                    ),
                ),
            }
        }
        None => match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        },
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None | Some("") => 21,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(&format!("port `{p}` must be 1..65535")))?,
    };
    let mut root = decode(path, "the path")?;
    while root.len() > 1 && root.ends_with('/') {
        root.pop();
    }
    Ok(Target {
        host: host.to_owned(),
        port,
        user,
        root,
        tls,
    })
}

fn decode(s: &str, what: &str) -> Result<String, Error> {
    let v = percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map_err(|_| Error::Usage(format!("URL: {what} is not UTF-8 once decoded")))?;
    if v.contains(['\r', '\n', '\0']) {
        return Err(Error::Usage(format!(
            "URL: {what} must not contain CR, LF or NUL"
        )));
    }
    Ok(v.into_owned())
}

/// The job of `--push/--pull LOCAL URL`.
pub fn job(direction: Direction, local: &str, url: &str) -> Result<Job, Error> {
    let t = parse_url(url)?;
    let password = password(&t)?;
    Ok(Job::one_off(OneOff {
        direction,
        local: PathBuf::from(local),
        host: t.host,
        port: t.port,
        user: t.user,
        password,
        root: t.root,
        tls: t.tls,
    })?)
}

/// `FTPSYNC_PASSWORD` when set; else nothing for an anonymous login; else
/// asked on the terminal without echo; with no terminal, an error.
fn password(t: &Target) -> Result<PasswordSource, Error> {
    if std::env::var_os(PASSWORD_ENV).is_some() {
        return Ok(PasswordSource::Env(PASSWORD_ENV.into()));
    }
    if t.user == "anonymous" {
        return Ok(PasswordSource::None);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "set {PASSWORD_ENV} to the password of {} on {} (there is no terminal to ask on)",
            t.user, t.host
        )));
    }
    let p = rpassword::prompt_password(format!("password of {} on {}: ", t.user, t.host))
        .map_err(|e| Error::Io(format!("cannot read the password: {e}")))?;
    Ok(PasswordSource::Inline(Secret::new(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, port: u16, user: &str, root: &str, tls: TlsMode) -> Target {
        Target {
            host: host.into(),
            port,
            user: user.into(),
            root: root.into(),
            tls,
        }
    }

    #[test]
    fn urls() {
        let ok = |u: &str| parse_url(u).unwrap();
        assert_eq!(
            ok("ftp://deploy@ftp.example.com/www"),
            target("ftp.example.com", 21, "deploy", "/www", TlsMode::None)
        );
        assert_eq!(
            ok("FTPS://me%40corp@h:2121/a%20b/"),
            target("h", 2121, "me@corp", "/a b", TlsMode::Explicit)
        );
        assert_eq!(
            ok("ftp://h"),
            target("h", 21, "anonymous", "/", TlsMode::None)
        );
        assert_eq!(
            ok("ftp://u@[::1]:2121/"),
            target("::1", 2121, "u", "/", TlsMode::None)
        );
        let err = |u: &str| parse_url(u).unwrap_err().to_string();
        let e = err("ftp://u:hunter2@h/www");
        assert!(e.contains("password in the URL is refused"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(
            err("sftp://h/"),
            "URL: the scheme must be ftp:// or ftps:// (explicit TLS)"
        );
        assert_eq!(
            err("h/www"),
            "URL: expected ftp://user@host[:port]/path or ftps://…"
        );
        assert_eq!(err("ftp://h:0/"), "URL: port `0` must be 1..65535");
        assert_eq!(err("ftp://h:99999/"), "URL: port `99999` must be 1..65535");
        assert_eq!(err("ftp://u@/x"), "URL: no host");
        assert_eq!(
            err("ftp://h/a%0D%0ADELE%20x"),
            "URL: the path must not contain CR, LF or NUL"
        );
    }
}
