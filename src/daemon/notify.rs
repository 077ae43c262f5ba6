//! systemd's notification protocol (`sd_notify(3)`): readiness, reloading,
//! stopping, a status line for `systemctl status`, and watchdog pings.
//!
//! Every call is a no-op when `NOTIFY_SOCKET` is unset (not started by
//! systemd, or `Type=simple`), and a failure to notify is logged at debug and
//! otherwise ignored: the daemon's work never depends on the service manager
//! listening. The environment is only read, never changed, so hooks and other
//! children inherit it as the daemon got it.
//!
//! The messages come from the `sd-notify` crate's [`NotifyState`]; the
//! datagram is sent here, because `sd_notify::notify` reads the socket from
//! the environment (so it cannot be tested without changing it) and takes
//! an `@` socket for a file name instead of Linux's abstract namespace.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use sd_notify::NotifyState;

/// Startup is done: jobs are scheduled and the HTTP endpoint is listening.
/// With `Type=notify`, systemd holds back units ordered after ftpsync until
/// this arrives. Send it again after a reload has finished.
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

/// The job files are being reloaded (SIGHUP). Carries `MONOTONIC_USEC`, which
/// systemd 253+ requires with `RELOADING=1` for `Type=notify-reload`; follow
/// it with [`ready`] when the reload is done.
pub fn reloading() {
    notify(&reloading_states());
}

/// Shutdown has begun: runs are being stopped.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// A one-line status for `systemctl status`, e.g. "3 jobs; next: site at
/// 10:00". Line breaks would end the message's field, so they become spaces.
pub fn status(text: &str) {
    let line = one_line(text);
    notify(&[NotifyState::Status(&line)]);
}

/// How often to call [`watchdog_ping`], if systemd runs a watchdog for us
/// (`WatchdogSec=`): half the watchdog's interval, as `sd_watchdog_enabled(3)`
/// recommends. `None` without a watchdog, or when `WATCHDOG_PID` names
/// another process.
pub fn watchdog_interval() -> Option<Duration> {
    ping_interval(sd_notify::watchdog_enabled())
}

/// Tells the watchdog the daemon is alive. Send it from the scheduler loop,
/// not from a timer task of its own, so a stuck scheduler stops the pings
/// and systemd restarts the service.
pub fn watchdog_ping() {
    notify(&[NotifyState::Watchdog]);
}

fn reloading_states() -> Vec<NotifyState<'static>> {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => vec![NotifyState::Reloading, now],
        Err(e) => {
            tracing::debug!("reading the monotonic clock for RELOADING=1 failed: {e}");
            vec![NotifyState::Reloading]
        }
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

fn ping_interval(watchdog: Option<Duration>) -> Option<Duration> {
    watchdog.filter(|d| !d.is_zero()).map(|d| d / 2)
}

/// Reads `NOTIFY_SOCKET` (once per message) and sends.
fn notify(states: &[NotifyState]) {
    let socket = std::env::var_os("NOTIFY_SOCKET");
    if let Err(e) = send_to(socket.as_deref(), states) {
        tracing::debug!("systemd notification failed: {e}");
    }
}

/// Sends one datagram of `NAME=value` lines to the socket, if there is one.
/// A socket starting with `@` is in Linux's abstract namespace. The socket is
/// non-blocking: a service manager that does not drain its queue makes this
/// fail, not wait.
fn send_to(socket: Option<&OsStr>, states: &[NotifyState]) -> io::Result<()> {
    let Some(socket) = socket.filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    let sent = match socket.as_bytes().strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(message.as_bytes(), &addr)?
        }
        _ => sock.send_to(message.as_bytes(), Path::new(socket))?,
    };
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification truncated",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        (dir, path, sock)
    }

    fn receive(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a datagram");
        String::from_utf8(buf[..n].to_vec()).expect("UTF-8")
    }

    #[test]
    fn ready_is_one_datagram() {
        let (_dir, path, sock) = listener();
        send_to(Some(path.as_os_str()), &[NotifyState::Ready]).expect("send");
        assert_eq!(receive(&sock), "READY=1\n");
    }

    #[test]
    fn reloading_carries_the_monotonic_time() {
        let (_dir, path, sock) = listener();
        send_to(Some(path.as_os_str()), &reloading_states()).expect("send");
        let text = receive(&sock);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .expect("MONOTONIC_USEC line");
        assert!(usec.parse::<u64>().is_ok_and(|u| u > 0), "{text}");
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn status_is_kept_on_one_line() {
        let (_dir, path, sock) = listener();
        let line = one_line("2 jobs\nnext: site");
        send_to(Some(path.as_os_str()), &[NotifyState::Status(&line)]).expect("send");
        assert_eq!(receive(&sock), "STATUS=2 jobs next: site\n");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_at_sign_means_the_abstract_namespace() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ftpsync-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let socket = format!("@{name}");
        send_to(Some(OsStr::new(&socket)), &[NotifyState::Watchdog]).expect("send");
        assert_eq!(receive(&sock), "WATCHDOG=1\n");
    }

    #[test]
    fn no_socket_is_a_no_op() {
        assert!(send_to(None, &[NotifyState::Ready]).is_ok());
        assert!(send_to(Some(OsStr::new("")), &[NotifyState::Ready]).is_ok());
    }

    #[test]
    fn a_missing_socket_is_an_error_for_the_caller_to_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nobody-listens");
        assert!(send_to(Some(path.as_os_str()), &[NotifyState::Ready]).is_err());
    }

    #[test]
    fn pings_at_half_the_watchdog_interval() {
        assert_eq!(
            ping_interval(Some(Duration::from_secs(30))),
            Some(Duration::from_secs(15))
        );
        assert_eq!(ping_interval(Some(Duration::ZERO)), None);
        assert_eq!(ping_interval(None), None);
    }
}
