#![allow(dead_code)]
//! A scriptable fault-injecting FTP proxy for the integration tests.
//!
//! The proxy sits between an FTP client (ftpsync, or suppaftp in the tests below) and a real FTP
//! server. It relays the control channel reply by reply and the passive-mode data connections
//! byte by byte, and lets a test inject faults at run time with [`Rule`]s: canned replies, lost
//! connections, lost replies, cut or forged data, truncated listings and delays.
//!
//! ```ignore
//! let proxy = FaultProxy::start(upstream_addr).await?;
//! proxy.add_rule(Rule::new("STOR", Action::Reply("451 Transient error".into())).times(1));
//! proxy.add_rule(Rule::new("RETR", Action::CutData { after_bytes: 1000, kill_control: false }));
//! // point the client at proxy.addr() ...
//! assert!(proxy.commands().contains(&"PASS ****".to_string()));
//! ```
//!
//! Data connections: when the server answers `PASV` (227) or `EPSV` (229) the proxy opens its own
//! listener on 127.0.0.1, rewrites the reply to point at it, and pipes the client's connection to
//! the port the server named, always at the IP of the upstream *control* address (the IP inside a
//! 227 reply is ignored). The data connection belongs to the next data command (`LIST`, `NLST`,
//! `MLSD`, `RETR`, `STOR`, `APPE`, `STOU`). `PORT`/`EPRT` are passed through untouched, so active
//! mode works but its data connections bypass the proxy (no data faults there). `AUTH` is refused
//! with `534 TLS not available through the proxy`.
//!
//! Pipelining: a client may send several commands before reading their replies (e.g.
//! `EPSV\r\nSTOR f\r\n` or `RNFR a\r\nRNTO b\r\n` in one write). The proxy keeps one queue
//! entry per command, in command order: forwarded commands wait for the server's final reply,
//! and replies the proxy makes up itself (a [`Action::Reply`] rule, the `534` to `AUTH`) wait
//! behind them, so the client always gets its replies in command order. After an injected `421`
//! the proxy reads no further commands and closes once the earlier replies are relayed. A data
//! command sent before the server answered its `PASV`/`EPSV` gets the data connection that
//! reply opens, and the client may send upload bytes before the server's `150`.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

/// Commands whose data connection is the pending passive one.
const DATA_VERBS: [&str; 7] = ["LIST", "NLST", "MLSD", "RETR", "STOR", "APPE", "STOU"];
/// Data commands whose payload flows from the client to the server.
const UPLOAD_VERBS: [&str; 3] = ["STOR", "APPE", "STOU"];
/// How long a cut data connection stays open after its last byte, so that the bytes reach the
/// peer before the reset.
const CUT_GRACE: Duration = Duration::from_millis(50);
/// How long the final reply of a `kill_control` data command is held back waiting for its data
/// connection to be cut or to end.
const HOLD_LIMIT: Duration = Duration::from_secs(5);
/// Seed used until [`FaultProxy::set_seed`] is called.
const DEFAULT_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// What a firing [`Rule`] does to the command it matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Don't forward the command; answer it with this reply line (e.g. "451 Transient error",
    /// "550 Nope", "421 Too many connections"), after the replies to earlier commands. For data
    /// commands, the pending data listener is dropped (or, if the server has not answered the
    /// `PASV`/`EPSV` yet, closed as soon as it opens: connecting to it is refused). A reply
    /// starting with `421` also closes the control connection afterwards, as a real server does.
    Reply(String),
    /// Close the client's control connection (and the upstream one) without a reply.
    DropControl,
    /// Forward the command, but close the control connection right after the server's final
    /// (non-1xx) reply to it arrives, without passing that reply to the client (the "reply was
    /// lost" case: the server did the DELE/RNTO, the client never heard).
    DropAfterForward,
    /// Forward, and relay this line in place of the server's final (non-1xx) reply: the
    /// server did the work, the client hears otherwise (e.g. "452 Insufficient storage"
    /// after a STOR's data went through).
    ReplaceFinal(String),
    /// Forward; on its data connection, pass this many bytes (counted over both directions)
    /// then reset both data sockets (and, if `kill_control` is true, also drop the control
    /// connection; the server's final reply to the command, if it comes before the cut, is held
    /// back and never relayed). `after_bytes: 0` resets the data connection before any byte
    /// passes. A payload shorter than `after_bytes` passes untouched.
    CutData {
        after_bytes: u64,
        kill_control: bool,
    },
    /// Forward; replace the whole data payload the server sends (listing or RETR) with these
    /// bytes. Uploads are not affected.
    ReplaceData(Vec<u8>),
    /// Forward; pass only the first N lines of the listing data (the rest is discarded).
    TruncateLines(usize),
    /// Wait this long before forwarding (to test timeouts). Unlike the other actions a delay
    /// does not end rule matching: later rules can still fire on the same command. Commands
    /// pipelined after it wait too; replies to earlier commands are relayed meanwhile.
    Delay(Duration),
}

/// A fault to inject into matching client commands.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The command verb, matched case-insensitively, e.g. "STOR"; "*" matches any command.
    pub verb: String,
    /// A substring that the command's argument must contain (case-sensitive).
    pub arg_contains: Option<String>,
    /// The directory the command's connection last asked to change to
    /// (its last CWD's argument, exactly), for a listing command of one
    /// directory whatever order the client lists directories in.
    pub in_dir: Option<String>,
    /// What to do when the rule fires.
    pub action: Action,
    /// Fire at most this many times (None = every time).
    pub times: Option<usize>,
    /// 1.0 = always; else fire with this probability, drawn from the proxy's seeded xorshift
    /// generator (see [`FaultProxy::set_seed`]) so tests are reproducible.
    pub probability: f64,
    /// Let this many matching commands pass before the rule starts firing.
    pub skip: usize,
}

impl Rule {
    /// A rule that fires on every `verb` command, with no argument filter.
    pub fn new(verb: impl Into<String>, action: Action) -> Rule {
        Rule {
            verb: verb.into(),
            arg_contains: None,
            in_dir: None,
            action,
            times: None,
            probability: 1.0,
            skip: 0,
        }
    }

    /// Let the first `n` matching commands pass untouched.
    pub fn skip(mut self, n: usize) -> Rule {
        self.skip = n;
        self
    }

    /// Only match commands whose argument contains `s`.
    pub fn arg(mut self, s: impl Into<String>) -> Rule {
        self.arg_contains = Some(s.into());
        self
    }

    /// Only match commands sent on a connection whose last CWD was to `dir`.
    pub fn in_dir(mut self, dir: impl Into<String>) -> Rule {
        self.in_dir = Some(dir.into());
        self
    }

    /// Fire at most `n` times.
    pub fn times(mut self, n: usize) -> Rule {
        self.times = Some(n);
        self
    }

    /// Fire with probability `p` (0.0..=1.0) each time the rule matches.
    pub fn probability(mut self, p: f64) -> Rule {
        self.probability = p;
        self
    }

    fn matches(&self, verb: &str, arg: &str, cwd: &str) -> bool {
        (self.verb == "*" || self.verb.eq_ignore_ascii_case(verb))
            && self.arg_contains.as_deref().is_none_or(|s| arg.contains(s))
            && self.in_dir.as_deref().is_none_or(|d| d == cwd)
    }
}

/// The proxy. Dropping it stops every task it started and closes every socket it holds.
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl FaultProxy {
    /// Starts a proxy for the FTP server at `upstream`, listening on 127.0.0.1 on a free port.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            rules: Mutex::new(Vec::new()),
            rng: Mutex::new(DEFAULT_SEED),
            commands: Mutex::new(Vec::new()),
            origins: Mutex::new(Vec::new()),
            pipelined: Mutex::new(Vec::new()),
            fired: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            open_sessions: AtomicUsize::new(0),
            peak_sessions: AtomicUsize::new(0),
            max_sessions: AtomicUsize::new(usize::MAX),
            rejected: AtomicUsize::new(0),
            tasks: Tasks::default(),
            pasv_ip: Mutex::new([127, 0, 0, 1]),
            inbound_closes: Arc::new(Mutex::new(Vec::new())),
            watch_closes: std::sync::atomic::AtomicBool::new(false),
        });
        shared
            .tasks
            .spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(FaultProxy { shared, addr })
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a rule after the existing ones. Rules are tried in order; the first non-`Delay`
    /// rule that fires decides what happens to the command.
    pub fn add_rule(&self, rule: Rule) {
        lock(&self.shared.rules).push(RuleSlot {
            rule,
            fired: 0,
            skipped: 0,
        });
    }

    /// Removes every rule.
    pub fn clear_rules(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Reseeds the generator used for rules with a probability below 1.0.
    pub fn set_seed(&self, seed: u64) {
        *lock(&self.shared.rng) = if seed == 0 { DEFAULT_SEED } else { seed };
    }

    /// Every command line the clients sent, in order, with PASS arguments replaced by
    /// "PASS ****" (e.g. "STOR /a/b.txt"). Commands pipelined after an injected `421` are not
    /// read, so not listed.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.shared.commands).clone()
    }

    /// [`Self::commands`], each with the session it came on (numbered from 1 in the order
    /// the proxy accepted them) and when it arrived: "#2 +0.153s MLSD".
    pub fn commands_by_session(&self) -> Vec<String> {
        let log = lock(&self.shared.commands);
        let origins = lock(&self.shared.origins);
        let start = origins.first().map(|(_, at)| *at);
        log.iter()
            .zip(origins.iter())
            .map(|(cmd, (session, at))| {
                let since = start.map_or(Duration::ZERO, |s| at.duration_since(s));
                format!("#{session} +{:.3}s {cmd}", since.as_secs_f64())
            })
            .collect()
    }

    /// The commands (as in [`Self::commands`]) that arrived while a reply to an earlier command
    /// was still owed: the ones the client pipelined.
    pub fn pipelined(&self) -> Vec<String> {
        let log = lock(&self.shared.commands);
        lock(&self.shared.pipelined)
            .iter()
            .map(|&i| log[i].clone())
            .collect()
    }

    /// Positions in [`Self::commands`] of the commands in [`Self::pipelined`].
    pub fn pipelined_at(&self) -> Vec<usize> {
        lock(&self.shared.pipelined).clone()
    }

    /// How many times rules have fired.
    pub fn fired(&self) -> usize {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// Makes rewritten 227 (PASV) replies advertise `ip` while the data listener stays on
    /// 127.0.0.1: a client that trusts the address in the reply cannot connect.
    pub fn set_pasv_advertised_ip(&self, ip: [u8; 4]) {
        *lock(&self.shared.pasv_ip) = ip;
    }

    /// From now on, records for each download or listing data connection
    /// (not uploads) whether the client closes its sending half before it
    /// could have seen the end of the data: the end of the server's data
    /// is passed on only once the client's close has arrived, or after
    /// [`CLOSE_WAIT`] without it (a client that waits for the end). Read
    /// with [`Self::inbound_closes`].
    pub fn watch_inbound_closes(&self) {
        self.shared.watch_closes.store(true, Ordering::SeqCst);
    }

    /// What [`Self::watch_inbound_closes`] saw, one entry per data
    /// connection in the order their data ended: true if the client closed first.
    pub fn inbound_closes(&self) -> Vec<bool> {
        lock(&self.shared.inbound_closes).clone()
    }

    /// Number of client control connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Limits the sessions open at once, as servers limit connections per
    /// IP: one more is greeted with "421 Too many connections (N) from this
    /// IP" and closed, without reaching the server.
    pub fn set_max_sessions(&self, n: usize) {
        self.shared.max_sessions.store(n, Ordering::SeqCst);
    }

    /// Sessions turned away by [`FaultProxy::set_max_sessions`].
    pub fn rejected_sessions(&self) -> usize {
        self.shared.rejected.load(Ordering::SeqCst)
    }

    /// The most client sessions that were open at once (rejected ones not counted), as
    /// seen by each session at its first command.
    pub fn peak_sessions(&self) -> usize {
        self.shared.peak_sessions.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.tasks.shutdown();
    }
}

struct RuleSlot {
    rule: Rule,
    fired: usize,
    skipped: usize,
}

struct Shared {
    upstream: SocketAddr,
    rules: Mutex<Vec<RuleSlot>>,
    rng: Mutex<u64>,
    commands: Mutex<Vec<String>>,
    /// The session (numbered from 1 in the order accepted) and arrival time of each command.
    origins: Mutex<Vec<(usize, std::time::Instant)>>,
    pipelined: Mutex<Vec<usize>>,
    fired: AtomicUsize,
    connections: AtomicUsize,
    /// Client sessions open now, the most ever open at once, the limit
    /// (`usize::MAX`: none) and how many were turned away by it.
    open_sessions: AtomicUsize,
    peak_sessions: AtomicUsize,
    max_sessions: AtomicUsize,
    rejected: AtomicUsize,
    tasks: Tasks,
    /// The address advertised in rewritten 227 replies (the proxy listens on 127.0.0.1 only).
    pasv_ip: Mutex<[u8; 4]>,
    /// See [`FaultProxy::watch_inbound_closes`].
    inbound_closes: Arc<Mutex<Vec<bool>>>,
    watch_closes: std::sync::atomic::AtomicBool,
}

/// The outcome of matching one command against the rules.
struct Decision {
    delay: Duration,
    action: Option<Action>,
}

impl Shared {
    fn decide(&self, verb: &str, arg: &str, cwd: &str) -> Decision {
        let mut rules = lock(&self.rules);
        let mut delay = Duration::ZERO;
        for slot in rules.iter_mut() {
            if !slot.rule.matches(verb, arg, cwd)
                || slot.rule.times.is_some_and(|t| slot.fired >= t)
            {
                continue;
            }
            if slot.skipped < slot.rule.skip {
                slot.skipped += 1;
                continue;
            }
            if !self.roll(slot.rule.probability) {
                continue;
            }
            slot.fired += 1;
            self.fired.fetch_add(1, Ordering::SeqCst);
            match &slot.rule.action {
                Action::Delay(d) => delay += *d,
                other => {
                    return Decision {
                        delay,
                        action: Some(other.clone()),
                    };
                }
            }
        }
        Decision {
            delay,
            action: None,
        }
    }

    /// True with probability `p`. Only probabilities strictly between 0 and 1 draw a number.
    fn roll(&self, p: f64) -> bool {
        if p >= 1.0 {
            return true;
        }
        if p.is_nan() || p <= 0.0 {
            return false;
        }
        let mut state = lock(&self.rng);
        xorshift_unit(&mut state) < p
    }

    fn record(&self, session: usize, line: String, pipelined: bool) {
        let mut log = lock(&self.commands);
        if pipelined {
            lock(&self.pipelined).push(log.len());
        }
        lock(&self.origins).push((session, std::time::Instant::now()));
        log.push(line);
    }
}

/// xorshift64: advances `state` and returns a number in [0, 1).
fn xorshift_unit(state: &mut u64) -> f64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every task the proxy spawns, so that dropping the proxy can abort them all.
#[derive(Default)]
struct Tasks {
    inner: Mutex<TaskList>,
}

#[derive(Default)]
struct TaskList {
    closed: bool,
    handles: Vec<AbortHandle>,
}

impl Tasks {
    /// Spawns `fut` unless the proxy is shutting down.
    fn spawn<F>(&self, fut: F) -> Option<AbortHandle>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut list = lock(&self.inner);
        if list.closed {
            return None;
        }
        let handle = tokio::spawn(fut).abort_handle();
        list.handles.retain(|h| !h.is_finished());
        list.handles.push(handle.clone());
        Some(handle)
    }

    fn shutdown(&self) {
        let handles = {
            let mut list = lock(&self.inner);
            list.closed = true;
            std::mem::take(&mut list.handles)
        };
        for handle in handles {
            handle.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((mut client, _)) => {
                let id = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let limit = shared.max_sessions.load(Ordering::SeqCst);
                let open = shared.open_sessions.fetch_add(1, Ordering::SeqCst) + 1;
                if open > limit {
                    shared.open_sessions.fetch_sub(1, Ordering::SeqCst);
                    shared.rejected.fetch_add(1, Ordering::SeqCst);
                    let msg = format!("421 Too many connections ({limit}) from this IP\r\n");
                    shared.tasks.spawn(async move {
                        let _ = client.write_all(msg.as_bytes()).await;
                        let _ = client.shutdown().await;
                    });
                    continue;
                }
                let session_shared = Arc::clone(&shared);
                shared.tasks.spawn(async move {
                    let counted = Arc::clone(&session_shared);
                    let ended = Arc::new(AtomicBool::new(false));
                    run_session(session_shared, client, id, Arc::clone(&ended)).await;
                    if !ended.swap(true, Ordering::SeqCst) {
                        counted.open_sessions.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
            // E.g. out of file descriptors: don't spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// `ended`: the session no longer counts as open (set at its QUIT, or
/// when it closes).
async fn run_session(
    shared: Arc<Shared>,
    mut client: TcpStream,
    id: usize,
    ended: Arc<AtomicBool>,
) {
    let _ = client.set_nodelay(true);
    let server = match TcpStream::connect(shared.upstream).await {
        Ok(server) => server,
        Err(e) => {
            let reply = format!("421 Proxy cannot reach the upstream server: {e}\r\n");
            let _ = client.write_all(reply.as_bytes()).await;
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let (kill_tx, kill_rx) = mpsc::unbounded_channel();
    let mut session = Session {
        id,
        shared,
        client_r: BufReader::new(client_r),
        client_w,
        server_r: BufReader::new(server_r),
        server_w,
        replies: ReplyAssembler::default(),
        // The server's greeting comes first: a reply made up for a command the client sends
        // before it arrives must wait behind it.
        queue: VecDeque::from([Slot::Forwarded {
            fate: Fate::Relay,
            passive: None,
        }]),
        pending: None,
        delayed: None,
        closing: false,
        cwd: String::new(),
        kill_tx,
        kill_rx,
        ended,
        counted_peak: false,
    };
    let _ = session.run().await;
}

/// Whether the session goes on after handling an event.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

enum Event {
    Client(io::Result<usize>),
    Server(io::Result<usize>),
    /// The delayed command is due.
    Due,
    Kill,
}

/// What to do with the final reply to a forwarded command.
enum Fate {
    Relay,
    /// `DropAfterForward`: close the control connection instead.
    Drop,
    /// `ReplaceFinal`: relay this reply instead.
    Replace(Vec<u8>),
    /// A `CutData { kill_control: true }` command: wait until its data connection reports
    /// whether it was cut (true: close instead of relaying) or ended without a cut.
    Hold(oneshot::Receiver<bool>),
}

/// One entry of the reply queue: a command whose reply the client has not been sent yet.
enum Slot {
    /// A forwarded command awaiting the server's final reply.
    Forwarded {
        fate: Fate,
        /// For `PASV`/`EPSV`: who gets the data connection its reply opens.
        passive: Option<Claim>,
    },
    /// A reply the proxy made up, written once every earlier reply has been relayed; `close`
    /// closes the control connection right after it (`421`).
    Injected { reply: Vec<u8>, close: bool },
}

/// Who owns the data connection of a `PASV`/`EPSV` the server has not answered yet.
#[derive(Debug)]
enum Claim {
    /// No data command yet: the connection becomes the session's pending one.
    Unclaimed,
    /// A data command was pipelined behind it: the plan goes to the connection when it opens.
    Plan(DataPlan),
    /// The data command behind it was answered by a `Reply` rule: the listener is closed at once.
    Refused,
}

/// A passive data connection whose data command has not been seen yet.
struct PendingData {
    plan_tx: oneshot::Sender<DataPlan>,
    handle: Option<AbortHandle>,
}

/// A command held back by a `Delay` rule; the client is not read until it is dispatched.
struct Delayed {
    until: tokio::time::Instant,
    line: Vec<u8>,
    action: Option<Action>,
}

/// What a data connection must do, known once its data command arrives.
#[derive(Debug)]
struct DataPlan {
    upload: bool,
    fault: Option<DataFault>,
    /// Told whether the connection was cut (true) or ended otherwise (false).
    outcome: Option<oneshot::Sender<bool>>,
    /// Where a download or listing records who closed first, when watched
    /// ([`FaultProxy::watch_inbound_closes`]).
    closes: Option<Arc<Mutex<Vec<bool>>>>,
}

/// How long a watched download or listing holds the end of the server's
/// data for the client's close ([`FaultProxy::watch_inbound_closes`]).
pub const CLOSE_WAIT: Duration = Duration::from_millis(300);

/// Whether the client closed its sending half of a data connection.
#[derive(Default)]
struct ClientClose {
    closed: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl ClientClose {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether the client closes within [`CLOSE_WAIT`].
    async fn wait(&self) -> bool {
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
        loop {
            let notified = self.notify.notified();
            if self.closed.load(Ordering::SeqCst) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.closed.load(Ordering::SeqCst);
            }
        }
    }
}

#[derive(Debug)]
enum DataFault {
    Cut {
        after_bytes: u64,
        kill_control: bool,
    },
    Replace(Vec<u8>),
    Truncate(usize),
}

/// One client control connection and its upstream twin.
struct Session {
    /// Numbered from 1 in the order the proxy accepted sessions.
    id: usize,
    shared: Arc<Shared>,
    client_r: BufReader<OwnedReadHalf>,
    client_w: OwnedWriteHalf,
    server_r: BufReader<OwnedReadHalf>,
    server_w: OwnedWriteHalf,
    replies: ReplyAssembler,
    /// One entry per command still owed a reply, in command order.
    queue: VecDeque<Slot>,
    pending: Option<PendingData>,
    delayed: Option<Delayed>,
    /// An injected `421` is queued: further commands are ignored, as by a closing server.
    closing: bool,
    /// The argument of the last CWD sent (see [`Rule::in_dir`]).
    cwd: String,
    kill_tx: mpsc::UnboundedSender<()>,
    kill_rx: mpsc::UnboundedReceiver<()>,
    /// Set once the session stops counting as open: a client that sent
    /// QUIT has let the connection go (a client that closes once the
    /// reply comes may open its next one before this proxy sees the close).
    ended: Arc<AtomicBool>,
    /// Whether this session's first command was counted in the peak.
    counted_peak: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        // An unclaimed data listener dies with its control connection. Transfers in flight
        // run on, as they would on a server, until their sockets close or the proxy is dropped.
        self.drop_pending();
    }
}

/// The upper-cased verb and the argument of a command line.
fn split_command(line: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\r', '\n']);
    match text.split_once(' ') {
        Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.to_string()),
        None => (text.to_ascii_uppercase(), String::new()),
    }
}

impl Session {
    async fn run(&mut self) -> io::Result<()> {
        let mut cbuf = Vec::new();
        let mut sbuf = Vec::new();
        loop {
            let due = self.delayed.as_ref().map(|d| d.until);
            // `read_until` keeps partially read bytes in the buffer when cancelled, and the
            // buffers outlive the loop iteration, so no byte is lost to `select!`. While a
            // command is delayed the client is not read, so later commands stay behind it.
            let event = tokio::select! {
                r = self.client_r.read_until(b'\n', &mut cbuf), if due.is_none() => {
                    Event::Client(r)
                }
                r = self.server_r.read_until(b'\n', &mut sbuf) => Event::Server(r),
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)),
                    if due.is_some() => Event::Due,
                _ = self.kill_rx.recv() => Event::Kill,
            };
            let flow = match event {
                Event::Client(r) => {
                    if r? == 0 {
                        return Ok(());
                    }
                    let line = std::mem::take(&mut cbuf);
                    self.on_command(line).await?
                }
                Event::Server(r) => {
                    if r? == 0 {
                        // Upstream closed: pass on any unterminated tail, then close.
                        if !self.replies.lines.is_empty() || !sbuf.is_empty() {
                            let mut tail = self.replies.lines.concat();
                            tail.extend_from_slice(&sbuf);
                            let _ = self.client_w.write_all(&tail).await;
                        }
                        return Ok(());
                    }
                    let line = std::mem::take(&mut sbuf);
                    match self.replies.push(line) {
                        Some(reply) => self.on_reply(reply).await?,
                        None => Flow::Continue,
                    }
                }
                Event::Due => match self.delayed.take() {
                    Some(delayed) => self.dispatch(delayed.line, delayed.action).await?,
                    None => Flow::Continue,
                },
                Event::Kill => Flow::Close,
            };
            if flow == Flow::Close {
                return Ok(());
            }
        }
    }

    async fn on_command(&mut self, line: Vec<u8>) -> io::Result<Flow> {
        if self.closing {
            return Ok(Flow::Continue);
        }
        if !self.counted_peak {
            // Counted at its first command, not at accept: a client that
            // closed a connection without QUIT may open its next one before
            // this proxy has seen the close, but not before the new one's
            // greeting has come through.
            self.counted_peak = true;
            let open = self.shared.open_sessions.load(Ordering::SeqCst);
            self.shared.peak_sessions.fetch_max(open, Ordering::SeqCst);
        }
        let (verb, arg) = split_command(&line);
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if !text.is_empty() {
            self.shared.record(
                self.id,
                if verb == "PASS" {
                    "PASS ****".to_string()
                } else {
                    text.to_string()
                },
                !self.queue.is_empty(),
            );
        }
        if verb.eq_ignore_ascii_case("CWD") {
            self.cwd = arg.clone();
        }
        if verb == "QUIT" && !self.ended.swap(true, Ordering::SeqCst) {
            self.shared.open_sessions.fetch_sub(1, Ordering::SeqCst);
        }
        let decision = self.shared.decide(&verb, &arg, &self.cwd);
        if !decision.delay.is_zero() {
            self.delayed = Some(Delayed {
                until: tokio::time::Instant::now() + decision.delay,
                line,
                action: decision.action,
            });
            return Ok(Flow::Continue);
        }
        self.dispatch(line, decision.action).await
    }

    /// Carries out the rules' decision about a command: forward it or answer it.
    async fn dispatch(&mut self, line: Vec<u8>, action: Option<Action>) -> io::Result<Flow> {
        let (verb, _) = split_command(&line);
        let is_data = DATA_VERBS.contains(&verb.as_str());
        let mut fate = Fate::Relay;
        let mut fault = None;
        match action {
            Some(Action::Reply(reply)) => {
                if is_data {
                    self.refuse_data();
                }
                let reply = reply.trim_end_matches(['\r', '\n']).replace('\n', "\r\n");
                let close = reply.starts_with("421");
                return self
                    .inject(format!("{reply}\r\n").into_bytes(), close)
                    .await;
            }
            Some(Action::DropControl) => return Ok(Flow::Close),
            Some(Action::DropAfterForward) => fate = Fate::Drop,
            Some(Action::ReplaceFinal(reply)) => {
                let reply = reply.trim_end_matches(['\r', '\n']).replace('\n', "\r\n");
                fate = Fate::Replace(format!("{reply}\r\n").into_bytes());
            }
            Some(Action::CutData {
                after_bytes,
                kill_control,
            }) => {
                fault = Some(DataFault::Cut {
                    after_bytes,
                    kill_control,
                })
            }
            Some(Action::ReplaceData(bytes)) => fault = Some(DataFault::Replace(bytes)),
            Some(Action::TruncateLines(n)) => fault = Some(DataFault::Truncate(n)),
            Some(Action::Delay(_)) | None => {
                if verb == "AUTH" {
                    return self
                        .inject(
                            b"534 TLS not available through the proxy\r\n".to_vec(),
                            false,
                        )
                        .await;
                }
            }
        }
        if is_data {
            let mut outcome = None;
            let mut cut = None;
            if let Some(DataFault::Cut {
                kill_control: true, ..
            }) = fault
            {
                let (tx, rx) = oneshot::channel();
                outcome = Some(tx);
                cut = Some(rx);
            }
            let plan = DataPlan {
                upload: UPLOAD_VERBS.contains(&verb.as_str()),
                fault,
                outcome,
                closes: (self.shared.watch_closes.load(Ordering::SeqCst)
                    && !UPLOAD_VERBS.contains(&verb.as_str()))
                .then(|| Arc::clone(&self.shared.inbound_closes)),
            };
            if self.claim_data(plan)
                && let Some(cut) = cut
            {
                fate = Fate::Hold(cut);
            }
        }
        self.server_w.write_all(&line).await?;
        let passive = matches!(verb.as_str(), "PASV" | "EPSV").then_some(Claim::Unclaimed);
        self.queue.push_back(Slot::Forwarded { fate, passive });
        Ok(Flow::Continue)
    }

    async fn on_reply(&mut self, lines: Vec<Vec<u8>>) -> io::Result<Flow> {
        let Some(code) = reply_code(&lines[0]).filter(|code| *code >= 200) else {
            // Preliminary (1xx) or unparsable: it belongs to the oldest command, relay it now.
            self.client_w.write_all(&lines.concat()).await?;
            return Ok(Flow::Continue);
        };
        let mut claim = Claim::Unclaimed;
        // The head is never an injected reply: those are flushed as soon as they get there.
        if let Some(Slot::Forwarded { .. }) = self.queue.front()
            && let Some(Slot::Forwarded { fate, passive }) = self.queue.pop_front()
        {
            match fate {
                Fate::Drop => return Ok(Flow::Close),
                Fate::Replace(reply) => {
                    self.client_w.write_all(&reply).await?;
                    return self.flush().await;
                }
                Fate::Hold(cut) => {
                    if let Ok(Ok(true)) = tokio::time::timeout(HOLD_LIMIT, cut).await {
                        return Ok(Flow::Close);
                    }
                }
                Fate::Relay => {}
            }
            if let Some(passive) = passive {
                claim = passive;
            }
        }
        let mut relayed = false;
        if lines.len() == 1 && (code == 227 || code == 229) {
            let text = String::from_utf8_lossy(&lines[0]);
            let port = if code == 227 {
                parse_227_port(&text)
            } else {
                parse_229_port(&text)
            };
            if let Some(port) = port {
                let ip = *lock(&self.shared.pasv_ip);
                let reply = match self.open_data(port, claim).await {
                    Ok(local) if code == 227 => format!(
                        "227 Entering Passive Mode ({},{},{},{},{},{}).\r\n",
                        ip[0],
                        ip[1],
                        ip[2],
                        ip[3],
                        local >> 8,
                        local & 0xff
                    ),
                    Ok(local) => {
                        format!("229 Entering Extended Passive Mode (|||{local}|)\r\n")
                    }
                    Err(e) => format!("425 Proxy cannot open a data listener: {e}\r\n"),
                };
                self.client_w.write_all(reply.as_bytes()).await?;
                relayed = true;
            }
        }
        if !relayed {
            self.client_w.write_all(&lines.concat()).await?;
        }
        self.flush().await
    }

    /// Queues a reply the proxy makes up, behind the replies still owed to earlier commands.
    async fn inject(&mut self, reply: Vec<u8>, close: bool) -> io::Result<Flow> {
        self.closing |= close;
        self.queue.push_back(Slot::Injected { reply, close });
        self.flush().await
    }

    /// Writes the injected replies at the head of the queue (every earlier reply is relayed).
    async fn flush(&mut self) -> io::Result<Flow> {
        while let Some(Slot::Injected { .. }) = self.queue.front() {
            if let Some(Slot::Injected { reply, close }) = self.queue.pop_front() {
                self.client_w.write_all(&reply).await?;
                if close {
                    return Ok(Flow::Close);
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// The claim on the data connection of the latest `PASV`/`EPSV` if the server has not
    /// answered it yet (else that connection, if unclaimed, is `self.pending`).
    fn unanswered_passive(&mut self) -> Option<&mut Claim> {
        self.queue.iter_mut().rev().find_map(|slot| match slot {
            Slot::Forwarded {
                passive: Some(claim),
                ..
            } => Some(claim),
            _ => None,
        })
    }

    /// Gives `plan` to the data connection of the latest `PASV`/`EPSV`, open or still to be
    /// opened. False (and the plan dropped) if there is none or another command claimed it.
    fn claim_data(&mut self, plan: DataPlan) -> bool {
        match self.unanswered_passive() {
            Some(claim @ Claim::Unclaimed) => {
                *claim = Claim::Plan(plan);
                true
            }
            Some(_) => false,
            None => match self.pending.take() {
                Some(pending) => {
                    // The data task runs on by itself from here.
                    let _ = pending.plan_tx.send(plan);
                    true
                }
                None => false,
            },
        }
    }

    /// A data command was refused: its data connection goes, now or as soon as it opens.
    fn refuse_data(&mut self) {
        match self.unanswered_passive() {
            Some(claim @ Claim::Unclaimed) => *claim = Claim::Refused,
            Some(_) => {}
            None => self.drop_pending(),
        }
    }

    /// Opens a local listener relaying to the upstream data port, for `claim`; returns the
    /// local port.
    async fn open_data(&mut self, upstream_port: u16, claim: Claim) -> io::Result<u16> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let local = listener.local_addr()?.port();
        // A new PASV/EPSV replaces a data connection that no command claimed.
        self.drop_pending();
        if let Claim::Refused = claim {
            // As if the listener had been opened, then dropped with the refusal.
            return Ok(local);
        }
        let upstream = SocketAddr::new(self.shared.upstream.ip(), upstream_port);
        let (plan_tx, plan_rx) = oneshot::channel();
        let handle =
            self.shared
                .tasks
                .spawn(data_task(listener, upstream, plan_rx, self.kill_tx.clone()));
        match claim {
            // The data task runs on by itself from here.
            Claim::Plan(plan) => {
                let _ = plan_tx.send(plan);
            }
            _ => self.pending = Some(PendingData { plan_tx, handle }),
        }
        Ok(local)
    }

    fn drop_pending(&mut self) {
        if let Some(pending) = self.pending.take()
            && let Some(handle) = pending.handle
        {
            handle.abort();
        }
    }
}

/// Groups reply lines into complete (possibly multi-line) replies.
#[derive(Default)]
struct ReplyAssembler {
    code: Option<[u8; 3]>,
    lines: Vec<Vec<u8>>,
}

impl ReplyAssembler {
    fn push(&mut self, line: Vec<u8>) -> Option<Vec<Vec<u8>>> {
        match self.code {
            None => {
                if reply_code(&line).is_some() && line.get(3) == Some(&b'-') {
                    self.code = Some([line[0], line[1], line[2]]);
                    self.lines.push(line);
                    None
                } else {
                    Some(vec![line])
                }
            }
            Some(code) => {
                let last = line.len() >= 3 && line[..3] == code && line.get(3) != Some(&b'-');
                self.lines.push(line);
                if last {
                    self.code = None;
                    Some(std::mem::take(&mut self.lines))
                } else {
                    None
                }
            }
        }
    }
}

fn reply_code(line: &[u8]) -> Option<u16> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The port of a `227 ... (h1,h2,h3,h4,p1,p2)` reply (parentheses optional).
fn parse_227_port(reply: &str) -> Option<u16> {
    let rest = reply.get(3..)?;
    rest.split(|c: char| !(c.is_ascii_digit() || c == ','))
        .find_map(|token| {
            let fields: Vec<u16> = token
                .split(',')
                .map(|f| f.parse::<u16>().ok().filter(|v| *v <= 255))
                .collect::<Option<_>>()?;
            (fields.len() == 6).then(|| fields[4] << 8 | fields[5])
        })
}

/// The port of a `229 ... (|||port|)` reply (any delimiter character).
fn parse_229_port(reply: &str) -> Option<u16> {
    let inner = &reply[reply.find('(')? + 1..];
    let inner = &inner[..inner.find(')')?];
    let delim = inner.chars().next()?;
    let fields: Vec<&str> = inner.split(delim).collect();
    if fields.len() != 5 {
        return None;
    }
    fields[3].parse().ok().filter(|p| *p != 0)
}

/// Why a data relay stopped early.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// A `CutData` rule fired.
    Cut,
    /// A socket failed; the failure is passed on as a reset.
    Reset,
}

/// How the server-to-client direction is rewritten.
enum DownMode<'a> {
    Pass,
    Replace(&'a [u8]),
    Truncate(usize),
}

async fn data_task(
    listener: TcpListener,
    upstream: SocketAddr,
    plan_rx: oneshot::Receiver<DataPlan>,
    kill_tx: mpsc::UnboundedSender<()>,
) {
    let Ok((client, _)) = listener.accept().await else {
        return;
    };
    drop(listener);
    // No plan means the command was refused or the session ended: close the client's side.
    // The server's side is connected only once a data command goes to the server: a server
    // holds a data connection it accepted for its next data command, so one connected for a
    // command the proxy refused would carry that next command's transfer (an empty upload).
    let Ok(plan) = plan_rx.await else {
        return;
    };
    let server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(_) => {
            let _ = client.set_zero_linger();
            return;
        }
    };
    relay_data(client, server, plan, kill_tx).await;
}

async fn relay_data(
    mut client: TcpStream,
    mut server: TcpStream,
    plan: DataPlan,
    kill_tx: mpsc::UnboundedSender<()>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (limit, kill_control) = match plan.fault {
        Some(DataFault::Cut {
            after_bytes,
            kill_control,
        }) => (Some(after_bytes), kill_control),
        _ => (None, false),
    };
    let down_mode = match &plan.fault {
        Some(DataFault::Replace(bytes)) if !plan.upload => DownMode::Replace(bytes),
        Some(DataFault::Truncate(n)) if !plan.upload => DownMode::Truncate(*n),
        _ => DownMode::Pass,
    };
    let outcome = Mutex::new(plan.outcome);
    let counter = AtomicU64::new(0);
    let client_close = ClientClose::default();
    let watch = plan.closes.as_ref().map(|closes| (&client_close, closes));
    let result = if limit == Some(0) {
        Err(Stop::Cut)
    } else {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let up = async {
            let r = pump(
                &mut cr,
                &mut sw,
                DownMode::Pass,
                &counter,
                limit,
                &outcome,
                None,
            )
            .await;
            client_close.close();
            r
        };
        let down = pump(
            &mut sr, &mut cw, down_mode, &counter, limit, &outcome, watch,
        );
        tokio::try_join!(up, down).map(|_| ())
    };
    if let Err(stop) = result {
        // SO_LINGER 0: closing sends RST instead of FIN (also if the task is aborted below).
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
        if stop == Stop::Cut {
            report(&outcome, true);
            if kill_control {
                let _ = kill_tx.send(());
            }
            tokio::time::sleep(CUT_GRACE).await;
        }
    }
    report(&outcome, false);
}

/// Tells a held control reply whether its data connection was cut; only the first call counts.
fn report(outcome: &Mutex<Option<oneshot::Sender<bool>>>, cut: bool) {
    if let Some(tx) = lock(outcome).take() {
        let _ = tx.send(cut);
    }
}

/// Copies `r` to `w` until EOF, applying `mode`, then shuts `w` down. With `limit`, stops with
/// [`Stop::Cut`] once `counter` (shared by both directions) reaches it. Reports "not cut" to
/// `outcome` when `r` ends. With `watch`, waits for the client's close before shutting `w`
/// down and records whether it came ([`FaultProxy::watch_inbound_closes`]).
async fn pump<R, W>(
    r: &mut R,
    w: &mut W,
    mode: DownMode<'_>,
    counter: &AtomicU64,
    limit: Option<u64>,
    outcome: &Mutex<Option<oneshot::Sender<bool>>>,
    watch: Option<(&ClientClose, &Arc<Mutex<Vec<bool>>>)>,
) -> Result<(), Stop>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 32 * 1024];
    let mut lines_left = match mode {
        DownMode::Truncate(n) => n,
        _ => 0,
    };
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => {
                report(outcome, false);
                return Err(Stop::Reset);
            }
        };
        let chunk = match mode {
            DownMode::Pass => &buf[..n],
            DownMode::Replace(_) => continue,
            DownMode::Truncate(_) => {
                let mut end = 0;
                while lines_left > 0 && end < n {
                    match buf[end..n].iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            end += i + 1;
                            lines_left -= 1;
                        }
                        None => end = n,
                    }
                }
                &buf[..end]
            }
        };
        if chunk.is_empty() {
            continue;
        }
        if let Some(limit) = limit {
            let used = counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            if used + chunk.len() as u64 >= limit {
                let allow = limit.saturating_sub(used).min(chunk.len() as u64) as usize;
                let _ = w.write_all(&chunk[..allow]).await;
                let _ = w.flush().await;
                return Err(Stop::Cut);
            }
        }
        w.write_all(chunk).await.map_err(|_| Stop::Reset)?;
    }
    report(outcome, false);
    if let DownMode::Replace(bytes) = mode {
        w.write_all(bytes).await.map_err(|_| Stop::Reset)?;
    }
    if let Some((client, closes)) = watch {
        let early = client.wait().await;
        lock(closes).push(early);
    }
    let _ = w.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use suppaftp::tokio::AsyncFtpStream;
    use suppaftp::types::FileType;
    use suppaftp::{FtpError, FtpResult, Mode, Status};

    // ---- pyftpdlib upstream -------------------------------------------------------------

    /// A pyftpdlib server (user `u`, password `p`, write access) serving a fresh temp dir.
    /// Killed, and its directory removed, on drop.
    struct PyFtpd {
        child: Child,
        addr: SocketAddr,
        base: PathBuf,
        root: PathBuf,
    }

    impl Drop for PyFtpd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    /// The python that can import pyftpdlib (the suite's one lookup).
    fn find_python() -> Result<PathBuf, String> {
        crate::support::servers::find_python()
    }

    /// The port pyftpdlib reports in ">>> starting FTP server on 127.0.0.1:PORT, pid=N <<<".
    fn logged_port(log: &str) -> Option<u16> {
        let rest = &log[log.find("starting FTP server on ")? + "starting FTP server on ".len()..];
        let addr = rest.split([',', ' ', '\n']).next()?;
        addr.rsplit_once(':')?.1.parse().ok()
    }

    /// True once `addr` accepts a connection and greets with 220.
    fn greets(addr: SocketAddr) -> bool {
        use std::io::Read;
        let Ok(mut probe) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        else {
            return false;
        };
        let _ = probe.set_read_timeout(Some(Duration::from_secs(2)));
        let mut greeting = [0u8; 4];
        probe.read_exact(&mut greeting).is_ok() && greeting.starts_with(b"220")
    }

    /// Starts pyftpdlib on a port of its own choosing (-p 0, read back from its log, so no
    /// other process can take the port in between), or returns None after printing "SKIPPED:"
    /// when no python can import it (panics instead when FTPSYNC_REQUIRE_INTEROP=1).
    fn start_pyftpdlib(test: &str) -> Option<PyFtpd> {
        let python = match find_python() {
            Ok(python) => python,
            Err(reason) => {
                if std::env::var("FTPSYNC_REQUIRE_INTEROP").as_deref() == Ok("1") {
                    panic!("{test}: pyftpdlib is required (FTPSYNC_REQUIRE_INTEROP=1): {reason}");
                }
                eprintln!("SKIPPED: {test}: pyftpdlib not available: {reason}");
                return None;
            }
        };
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let base = std::env::temp_dir().join(format!(
            "ftpsync-fault-proxy-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let root = base.join("root");
        std::fs::create_dir_all(&root).expect("create the pyftpdlib root");
        let log_path = base.join("pyftpdlib.log");
        let log = std::fs::File::create(&log_path).expect("create the pyftpdlib log");
        let child = Command::new(&python)
            .args(["-m", "pyftpdlib", "-i", "127.0.0.1", "-p", "0", "-w", "-d"])
            .arg(&root)
            .args(["-u", "u", "-P", "p"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn python -m pyftpdlib");
        // From here on, dropping `server` kills the child and removes `base`.
        let mut server = PyFtpd {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            base,
            root,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if server.child.try_wait().ok().flatten().is_some() {
                break;
            }
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(port) = logged_port(&log) {
                server.addr.set_port(port);
                if greets(server.addr) {
                    return Some(server);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        panic!("{test}: pyftpdlib did not start; its log:\n{log}");
    }

    // ---- helpers ------------------------------------------------------------------------

    const STEP: Duration = Duration::from_secs(20);

    /// Awaits `fut`, failing the test if it takes longer than [`STEP`].
    async fn t<F: Future>(fut: F) -> F::Output {
        tokio::time::timeout(STEP, fut)
            .await
            .expect("FTP operation through the proxy timed out")
    }

    async fn setup(test: &str) -> Option<(PyFtpd, FaultProxy)> {
        let server = start_pyftpdlib(test)?;
        let proxy = FaultProxy::start(server.addr).await.expect("start proxy");
        Some((server, proxy))
    }

    async fn login(proxy: &FaultProxy, mode: Mode) -> AsyncFtpStream {
        let mut ftp = t(AsyncFtpStream::connect(proxy.addr()))
            .await
            .expect("connect through the proxy");
        t(ftp.login("u", "p")).await.expect("login");
        t(ftp.transfer_type(FileType::Binary))
            .await
            .expect("TYPE I");
        ftp.set_mode(mode);
        ftp
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn code(err: &FtpError) -> Option<u32> {
        match err {
            FtpError::UnexpectedResponse(r) => {
                std::str::from_utf8(r.body.get(..3)?).ok()?.parse().ok()
            }
            _ => None,
        }
    }

    async fn put(ftp: &mut AsyncFtpStream, name: &str, data: &[u8]) -> FtpResult<u64> {
        let mut reader = data;
        t(ftp.put_file(name, &mut reader)).await
    }

    async fn get(ftp: &mut AsyncFtpStream, name: &str) -> FtpResult<Vec<u8>> {
        let mut stream = t(ftp.retr_as_stream(name)).await?;
        let mut buf = Vec::new();
        t(stream.read_to_end(&mut buf))
            .await
            .map_err(FtpError::ConnectionError)?;
        t(stream.finish()).await?;
        Ok(buf)
    }

    fn names_in(listing: &[String], suffix: &str) -> usize {
        listing.iter().filter(|l| l.ends_with(suffix)).count()
    }

    fn exists(root: &Path, name: &str) -> bool {
        root.join(name).exists()
    }

    // ---- tests without an FTP server ----------------------------------------------------

    #[test]
    fn reads_the_port_from_the_pyftpdlib_log() {
        let log = "[I 2026-01-01 00:00:00] passive ports: None\n\
                   [I 2026-01-01 00:00:00] >>> starting FTP server on 127.0.0.1:39367, pid=3194 <<<\n";
        assert_eq!(logged_port(log), Some(39367));
        assert_eq!(logged_port("[I] concurrency model: async\n"), None);
    }

    #[test]
    fn parses_passive_replies() {
        assert_eq!(
            parse_227_port("227 Entering Passive Mode (127,0,0,1,195,80).\r\n"),
            Some(195 * 256 + 80)
        );
        assert_eq!(parse_227_port("227 =10,0,0,9,4,1\r\n"), Some(1025));
        assert_eq!(parse_227_port("227 Entering Passive Mode\r\n"), None);
        assert_eq!(parse_227_port("227 (1,2,3,4,300,1)\r\n"), None);
        assert_eq!(
            parse_229_port("229 Entering extended passive mode (|||50021|).\r\n"),
            Some(50021)
        );
        assert_eq!(parse_229_port("229 ok (!!!2121!)\r\n"), Some(2121));
        assert_eq!(parse_229_port("229 ok (|||x|)\r\n"), None);
    }

    #[test]
    fn assembles_multi_line_replies() {
        let mut asm = ReplyAssembler::default();
        assert_eq!(
            asm.push(b"220 hi\r\n".to_vec()),
            Some(vec![b"220 hi\r\n".to_vec()])
        );
        assert_eq!(asm.push(b"211-Features:\r\n".to_vec()), None);
        assert_eq!(asm.push(b" MDTM\r\n".to_vec()), None);
        assert_eq!(asm.push(b"211-not yet\r\n".to_vec()), None);
        let reply = asm.push(b"211 End\r\n".to_vec()).expect("complete");
        assert_eq!(reply.len(), 4);
        assert_eq!(reply_code(&reply[0]), Some(211));
        assert_eq!(
            asm.push(b"hello\r\n".to_vec()),
            Some(vec![b"hello\r\n".to_vec()])
        );
    }

    #[test]
    fn rule_builder_and_matching() {
        let rule = Rule::new("stor", Action::DropControl)
            .arg("b.txt")
            .times(2)
            .probability(0.25);
        assert_eq!(rule.times, Some(2));
        assert_eq!(rule.probability, 0.25);
        assert!(rule.matches("STOR", "/a/b.txt", ""));
        assert!(!rule.matches("STOR", "/a/c.txt", ""));
        assert!(!rule.matches("RETR", "/a/b.txt", ""));
        let any = Rule::new("*", Action::DropControl);
        assert_eq!((any.times, any.probability), (None, 1.0));
        assert!(any.matches("NOOP", "", ""));
        let here = Rule::new("MLSD", Action::TruncateLines(0)).in_dir("/www/d");
        assert!(here.matches("MLSD", "", "/www/d"));
        assert!(!here.matches("MLSD", "", "/www"));
        assert!(!here.matches("MLSD", "", "/www/d2"));
    }

    #[test]
    fn xorshift_is_reproducible() {
        let (mut a, mut b) = (42u64, 42u64);
        let xs: Vec<f64> = (0..100).map(|_| xorshift_unit(&mut a)).collect();
        let ys: Vec<f64> = (0..100).map(|_| xorshift_unit(&mut b)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let below = xs.iter().filter(|x| **x < 0.5).count();
        assert!((25..=75).contains(&below), "{below}");
    }

    /// A scripted upstream: multi-line greeting, a PASV naming a foreign IP, a RETR.
    #[tokio::test]
    async fn relays_multi_line_replies_and_rewrites_pasv_to_the_control_ip() {
        let control = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let upstream = control.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (sock, _) = control.accept().await.unwrap();
            let (r, mut w) = sock.into_split();
            let mut r = BufReader::new(r);
            let data = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let port = data.local_addr().unwrap().port();
            w.write_all(b"220-Welcome\r\n220-second line\r\n220 ready\r\n")
                .await
                .unwrap();
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            assert_eq!(line, "PASV\r\n");
            // An IP the proxy must not use: the data connection goes to the control IP.
            let reply = format!(
                "227 Entering Passive Mode (10,0,0,9,{},{}).\r\n",
                port >> 8,
                port & 0xff
            );
            w.write_all(reply.as_bytes()).await.unwrap();
            line.clear();
            r.read_line(&mut line).await.unwrap();
            assert_eq!(line, "RETR x\r\n");
            w.write_all(b"150 here it comes\r\n").await.unwrap();
            let (mut d, _) = data.accept().await.unwrap();
            d.write_all(b"hello world").await.unwrap();
            drop(d);
            w.write_all(b"226 done\r\n").await.unwrap();
            line.clear();
            r.read_line(&mut line).await.unwrap();
            assert_eq!(line, "QUIT\r\n");
            w.write_all(b"221 bye\r\n").await.unwrap();
        });

        let proxy = FaultProxy::start(upstream).await.unwrap();
        let sock = t(TcpStream::connect(proxy.addr())).await.unwrap();
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        let mut read_line = async || {
            let mut line = String::new();
            t(r.read_line(&mut line)).await.unwrap();
            line
        };
        assert_eq!(read_line().await, "220-Welcome\r\n");
        assert_eq!(read_line().await, "220-second line\r\n");
        assert_eq!(read_line().await, "220 ready\r\n");
        w.write_all(b"PASV\r\n").await.unwrap();
        let pasv = read_line().await;
        assert!(
            pasv.starts_with("227 Entering Passive Mode (127,0,0,1,"),
            "{pasv}"
        );
        let port = parse_227_port(&pasv).unwrap();
        let mut data = t(TcpStream::connect((Ipv4Addr::LOCALHOST, port)))
            .await
            .unwrap();
        w.write_all(b"RETR x\r\n").await.unwrap();
        assert_eq!(read_line().await, "150 here it comes\r\n");
        let mut got = Vec::new();
        t(data.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, b"hello world");
        assert_eq!(read_line().await, "226 done\r\n");
        w.write_all(b"QUIT\r\n").await.unwrap();
        assert_eq!(read_line().await, "221 bye\r\n");
        assert_eq!(read_line().await, "", "proxy closes after the server does");
        t(server).await.unwrap();
        assert_eq!(proxy.commands(), ["PASV", "RETR x", "QUIT"]);
        assert_eq!(proxy.connections(), 1);
    }

    // ---- tests against pyftpdlib --------------------------------------------------------

    #[tokio::test]
    async fn relays_uploads_downloads_and_listings_in_pasv_and_epsv() {
        let Some((server, proxy)) = setup("relays_uploads_downloads_and_listings").await else {
            return;
        };
        for (i, (mode, tag)) in [(Mode::Passive, "pasv"), (Mode::ExtendedPassive, "epsv")]
            .into_iter()
            .enumerate()
        {
            let mut ftp = login(&proxy, mode).await;
            let name = format!("{tag}.bin");
            let data = payload(300_000 + i);
            assert_eq!(
                put(&mut ftp, &name, &data).await.unwrap(),
                data.len() as u64
            );
            assert_eq!(std::fs::read(server.root.join(&name)).unwrap(), data);
            assert_eq!(get(&mut ftp, &name).await.unwrap(), data);
            let list = t(ftp.list(None)).await.unwrap();
            assert_eq!(names_in(&list, &format!(" {name}")), 1, "{list:?}");
            let mlsd = t(ftp.mlsd(None)).await.unwrap();
            assert_eq!(names_in(&mlsd, &format!(" {name}")), 1, "{mlsd:?}");
            let nlst = t(ftp.nlst(None)).await.unwrap();
            assert!(nlst.contains(&name), "{nlst:?}");
            // FEAT's multi-line reply comes through whole.
            let feat = t(ftp.feat()).await.unwrap();
            assert!(
                feat.contains_key("MLST") && feat.contains_key("EPSV"),
                "{feat:?}"
            );
            t(ftp.quit()).await.unwrap();
        }
        let cmds = proxy.commands();
        for expected in [
            "PASV",
            "EPSV",
            "STOR pasv.bin",
            "RETR epsv.bin",
            "MLSD",
            "FEAT",
        ] {
            assert!(cmds.iter().any(|c| c == expected), "{expected} in {cmds:?}");
        }
        assert_eq!(proxy.fired(), 0);
        assert_eq!(proxy.connections(), 2);
    }

    #[tokio::test]
    async fn reply_rule_answers_in_place_of_the_server() {
        let Some((server, proxy)) = setup("reply_rule_answers_in_place_of_the_server").await else {
            return;
        };
        proxy.add_rule(
            Rule::new("stor", Action::Reply("451 Transient error".into()))
                .arg("flaky")
                .times(1),
        );
        let mut ftp = login(&proxy, Mode::ExtendedPassive).await;
        let err = put(&mut ftp, "flaky.txt", b"one").await.unwrap_err();
        assert_eq!(code(&err), Some(451), "{err}");
        assert!(
            !exists(&server.root, "flaky.txt"),
            "STOR reached the server"
        );
        assert_eq!(proxy.fired(), 1);
        // The control connection stays in step, and times(1) is used up.
        t(ftp.noop()).await.unwrap();
        put(&mut ftp, "flaky.txt", b"two").await.unwrap();
        assert_eq!(
            std::fs::read(server.root.join("flaky.txt")).unwrap(),
            b"two"
        );
        assert_eq!(proxy.fired(), 1);

        proxy.add_rule(Rule::new("DELE", Action::Reply("550 Nope".into())));
        let err = t(ftp.rm("flaky.txt")).await.unwrap_err();
        assert_eq!(code(&err), Some(550), "{err}");
        assert!(exists(&server.root, "flaky.txt"));
        proxy.clear_rules();
        t(ftp.rm("flaky.txt")).await.unwrap();
        assert!(!exists(&server.root, "flaky.txt"));

        // 421 is answered and the control connection closed, like a real server does.
        proxy.add_rule(Rule::new(
            "NOOP",
            Action::Reply("421 Too many connections".into()),
        ));
        let err = t(ftp.noop()).await.unwrap_err();
        assert_eq!(code(&err), Some(421), "{err}");
        assert!(t(ftp.noop()).await.is_err());
        assert_eq!(proxy.fired(), 3);
        let cmds = proxy.commands();
        assert_eq!(cmds.iter().filter(|c| *c == "STOR flaky.txt").count(), 2);
    }

    #[tokio::test]
    async fn drop_control_closes_without_reply() {
        let Some((_server, proxy)) = setup("drop_control_closes_without_reply").await else {
            return;
        };
        proxy.add_rule(Rule::new("CWD", Action::DropControl).times(1));
        let mut ftp = login(&proxy, Mode::ExtendedPassive).await;
        let err = t(ftp.cwd("/")).await.unwrap_err();
        assert!(matches!(err, FtpError::ConnectionError(_)), "{err}");
        assert!(t(ftp.noop()).await.is_err());
        let mut ftp = login(&proxy, Mode::ExtendedPassive).await;
        t(ftp.cwd("/")).await.unwrap();
        assert_eq!(proxy.connections(), 2);
        assert_eq!(proxy.fired(), 1);
    }

    #[tokio::test]
    async fn replace_final_changes_the_reply_not_the_effect() {
        let Some((server, proxy)) = setup("replace_final").await else {
            return;
        };
        std::fs::write(server.root.join("victim.txt"), b"x").unwrap();
        proxy.add_rule(Rule::new("DELE", Action::ReplaceFinal("452 Not today".into())).times(1));
        let mut ftp = login(&proxy, Mode::ExtendedPassive).await;
        let err = t(ftp.rm("victim.txt")).await.unwrap_err();
        assert!(err.to_string().contains("452"), "{err}");
        assert!(
            !server.root.join("victim.txt").exists(),
            "the server did it"
        );
        // The session stays in step: the next command gets its own reply.
        assert_eq!(t(ftp.pwd()).await.unwrap(), "/");
        assert_eq!(proxy.fired(), 1);
    }

    #[tokio::test]
    async fn drop_after_forward_loses_the_reply_not_the_effect() {
        let Some((server, proxy)) = setup("drop_after_forward").await else {
            return;
        };
        std::fs::write(server.root.join("victim.txt"), b"x").unwrap();
        std::fs::write(server.root.join("a.txt"), b"a").unwrap();
        proxy.add_rule(Rule::new("DELE", Action::DropAfterForward).arg("victim"));
        proxy.add_rule(Rule::new("RNTO", Action::DropAfterForward));

        let mut ftp = login(&proxy, Mode::ExtendedPassive).await;
        let err = t(ftp.rm("victim.txt")).await.unwrap_err();
        assert!(matches!(err, FtpError::ConnectionError(_)), "{err}");
        assert!(!exists(&server.root, "victim.txt"), "DELE was not executed");

        let mut ftp = login(&proxy, Mode::ExtendedPassive).await;
        assert!(t(ftp.rename("a.txt", "b.txt")).await.is_err());
        assert!(!exists(&server.root, "a.txt") && exists(&server.root, "b.txt"));
        let cmds = proxy.commands();
        for expected in ["DELE victim.txt", "RNFR a.txt", "RNTO b.txt"] {
            assert!(cmds.iter().any(|c| c == expected), "{expected} in {cmds:?}");
        }
        assert_eq!(proxy.fired(), 2);
    }

    #[tokio::test]
    async fn cut_data_gives_short_data_and_can_kill_control() {
        let Some((server, proxy)) = setup("cut_data").await else {
            return;
        };
        let data = payload(400_000);
        std::fs::write(server.root.join("big.bin"), &data).unwrap();
        proxy.add_rule(
            Rule::new(
                "RETR",
                Action::CutData {
                    after_bytes: 10_000,
                    kill_control: false,
                },
            )
            .times(1),
        );
        let mut ftp = login(&proxy, Mode::ExtendedPassive).await;
        let mut stream = t(ftp.retr_as_stream("big.bin")).await.unwrap();
        let mut got = Vec::new();
        let read = t(stream.read_to_end(&mut got)).await;
        let finish = t(stream.finish()).await;
        assert!(got.len() <= 10_000, "{} bytes passed", got.len());
        assert_eq!(got[..], data[..got.len()]);
        assert!(read.is_err() || finish.is_err(), "{read:?} {finish:?}");
        // Control survives: the next download is whole.
        t(ftp.noop()).await.unwrap();
        assert_eq!(get(&mut ftp, "big.bin").await.unwrap(), data);

        // On STOR: the server keeps at most the bytes that passed.
        proxy.add_rule(
            Rule::new(
                "STOR",
                Action::CutData {
                    after_bytes: 1_000,
                    kill_control: false,
                },
            )
            .times(1),
        );
        // pyftpdlib answers 226 even though its data socket was reset, so the client may be
        // told the upload succeeded: only the stored size tells.
        let _ = put(&mut ftp, "up.bin", &data).await;
        t(ftp.noop()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stored = std::fs::metadata(server.root.join("up.bin")).map_or(0, |m| m.len());
        assert!(stored <= 1_000, "{stored}");

        // kill_control: the control connection goes too.
        proxy.add_rule(Rule::new(
            "RETR",
            Action::CutData {
                after_bytes: 5_000,
                kill_control: true,
            },
        ));
        let mut ftp = login(&proxy, Mode::Passive).await;
        let result = get(&mut ftp, "big.bin").await;
        assert!(
            result.is_err(),
            "download succeeded: {:?}",
            result.as_ref().map(Vec::len)
        );
        assert!(
            t(ftp.noop()).await.is_err(),
            "control survived kill_control"
        );
        assert_eq!(proxy.fired(), 3);
    }

    #[tokio::test]
    async fn replace_data_forges_listings_and_downloads() {
        let Some((server, proxy)) = setup("replace_data").await else {
            return;
        };
        std::fs::write(server.root.join("real.txt"), b"real content").unwrap();
        let ghost = "-rw-r--r--   1 u  g   42 Jan 01 00:00 ghost.txt";
        let phantom = "type=file;size=3;modify=20240101000000; phantom.bin";

        for mode in [Mode::Passive, Mode::ExtendedPassive] {
            proxy.clear_rules();
            proxy.add_rule(
                Rule::new(
                    "LIST",
                    Action::ReplaceData(format!("{ghost}\r\n").into_bytes()),
                )
                .times(1),
            );
            proxy.add_rule(Rule::new(
                "mlsd",
                Action::ReplaceData(format!("{phantom}\r\n").into_bytes()),
            ));
            proxy.add_rule(Rule::new("RETR", Action::ReplaceData(b"forged".to_vec())).arg("real"));
            let mut ftp = login(&proxy, mode).await;
            assert_eq!(t(ftp.list(None)).await.unwrap(), [ghost]);
            let list = t(ftp.list(None)).await.unwrap();
            assert_eq!(names_in(&list, " real.txt"), 1, "{list:?}");
            assert_eq!(t(ftp.mlsd(None)).await.unwrap(), [phantom]);
            assert_eq!(get(&mut ftp, "real.txt").await.unwrap(), b"forged");
            assert_eq!(
                std::fs::read(server.root.join("real.txt")).unwrap(),
                b"real content"
            );
            t(ftp.noop()).await.unwrap();
        }
        assert_eq!(proxy.fired(), 6);
    }

    #[tokio::test]
    async fn truncate_lines_shortens_listings() {
        let Some((server, proxy)) = setup("truncate_lines").await else {
            return;
        };
        for i in 1..=5 {
            std::fs::write(server.root.join(format!("f{i}.txt")), b"x").unwrap();
        }
        let mut ftp = login(&proxy, Mode::ExtendedPassive).await;
        let full = t(ftp.list(None)).await.unwrap();
        assert_eq!(full.len(), 5, "{full:?}");
        proxy.add_rule(Rule::new("LIST", Action::TruncateLines(2)));
        proxy.add_rule(Rule::new("MLSD", Action::TruncateLines(0)));
        assert_eq!(t(ftp.list(None)).await.unwrap(), full[..2]);
        assert!(t(ftp.mlsd(None)).await.unwrap().is_empty());
        t(ftp.noop()).await.unwrap();
        assert_eq!(proxy.fired(), 2);
    }

    #[tokio::test]
    async fn commands_are_logged_with_the_password_masked_and_auth_refused() {
        let Some((_server, proxy)) = setup("commands_are_logged").await else {
            return;
        };
        let mut ftp = t(AsyncFtpStream::connect(proxy.addr())).await.unwrap();
        t(ftp.login("u", "p")).await.unwrap();
        t(ftp.pwd()).await.unwrap();
        let err = t(ftp.custom_command("AUTH TLS", &[Status::AuthOk]))
            .await
            .unwrap_err();
        let FtpError::UnexpectedResponse(resp) = &err else {
            panic!("{err}");
        };
        assert_eq!(
            String::from_utf8_lossy(&resp.body).trim_end(),
            "534 TLS not available through the proxy"
        );
        t(ftp.noop()).await.unwrap();
        t(ftp.quit()).await.unwrap();
        assert_eq!(
            proxy.commands(),
            ["USER u", "PASS ****", "PWD", "AUTH TLS", "NOOP", "QUIT"]
        );
    }

    #[tokio::test]
    async fn delay_and_seeded_probability() {
        let Some((_server, proxy)) = setup("delay_and_seeded_probability").await else {
            return;
        };
        let mut ftp = login(&proxy, Mode::ExtendedPassive).await;
        proxy.add_rule(Rule::new("NOOP", Action::Delay(Duration::from_millis(300))).times(1));
        let started = Instant::now();
        t(ftp.noop()).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        // A client timeout shorter than the delay fires.
        proxy.add_rule(Rule::new("PWD", Action::Delay(Duration::from_secs(5))).times(1));
        assert!(
            tokio::time::timeout(Duration::from_millis(200), ftp.pwd())
                .await
                .is_err()
        );
        drop(ftp);

        let mut ftp = login(&proxy, Mode::ExtendedPassive).await;
        let mut patterns = Vec::new();
        for _ in 0..2 {
            proxy.clear_rules();
            proxy.set_seed(42);
            proxy.add_rule(Rule::new("NOOP", Action::Reply("500 chaos".into())).probability(0.5));
            let before = proxy.fired();
            let mut pattern = Vec::new();
            for _ in 0..32 {
                pattern.push(t(ftp.noop()).await.is_err());
            }
            let errors = pattern.iter().filter(|e| **e).count();
            assert_eq!(proxy.fired() - before, errors);
            assert!((4..=28).contains(&errors), "{pattern:?}");
            patterns.push(pattern);
        }
        assert_eq!(patterns[0], patterns[1], "same seed, same faults");
    }

    #[tokio::test]
    async fn drop_stops_every_task_and_closes_every_socket() {
        let Some((server, proxy)) = setup("drop_stops_every_task").await else {
            return;
        };
        let metrics = tokio::runtime::Handle::current().metrics();
        let mut ftp = login(&proxy, Mode::ExtendedPassive).await;
        // Leave a data listener pending and a transfer half done.
        t(ftp.custom_command("EPSV", &[Status::ExtendedPassiveMode]))
            .await
            .unwrap();
        let mut other = login(&proxy, Mode::ExtendedPassive).await;
        std::fs::write(server.root.join("big.bin"), payload(4_000_000)).unwrap();
        let _stream = t(other.retr_as_stream("big.bin")).await.unwrap();
        assert!(
            metrics.num_alive_tasks() >= 3,
            "{}",
            metrics.num_alive_tasks()
        );
        let addr = proxy.addr();
        drop(proxy);
        let deadline = Instant::now() + Duration::from_secs(5);
        while metrics.num_alive_tasks() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(metrics.num_alive_tasks(), 0);
        assert!(
            t(ftp.noop()).await.is_err(),
            "control connection still open"
        );
        assert!(
            t(TcpStream::connect(addr)).await.is_err(),
            "listener still open"
        );
    }

    // ---- pipelining -----------------------------------------------------------------------

    /// A bare control connection, for writing several commands in one write.
    struct Raw {
        r: BufReader<OwnedReadHalf>,
        w: OwnedWriteHalf,
    }

    impl Raw {
        async fn connect(addr: SocketAddr) -> Raw {
            let sock = t(TcpStream::connect(addr)).await.expect("connect");
            let (r, w) = sock.into_split();
            Raw {
                r: BufReader::new(r),
                w,
            }
        }

        /// Writes `text` in one write.
        async fn send(&mut self, text: &str) {
            t(self.w.write_all(text.as_bytes())).await.expect("write");
        }

        /// The next whole (possibly multi-line) reply, or "" at EOF.
        async fn reply(&mut self) -> String {
            let mut reply = String::new();
            loop {
                let mut line = String::new();
                if t(self.r.read_line(&mut line)).await.unwrap_or(0) == 0 {
                    return reply;
                }
                reply.push_str(&line);
                let first = reply.as_bytes();
                let multi = first.get(3) == Some(&b'-');
                let last = line.len() >= 4
                    && line.as_bytes()[..3] == first[..3]
                    && line.as_bytes()[3] == b' ';
                if !multi || last {
                    return reply;
                }
            }
        }

        async fn cmd(&mut self, command: &str) -> String {
            self.send(&format!("{command}\r\n")).await;
            self.reply().await
        }
    }

    /// Logs in as u/p through the proxy, in binary mode, one command at a time.
    async fn raw_login(proxy: &FaultProxy) -> Raw {
        let mut raw = Raw::connect(proxy.addr()).await;
        let greeting = raw.reply().await;
        assert!(greeting.starts_with("220"), "{greeting}");
        assert!(raw.cmd("USER u").await.starts_with("331"));
        assert!(raw.cmd("PASS p").await.starts_with("230"));
        assert!(raw.cmd("TYPE I").await.starts_with("200"));
        raw
    }

    fn first_code(reply: &str) -> Option<u16> {
        reply.get(..3)?.parse().ok()
    }

    /// The data port of a rewritten 227/229 reply, on 127.0.0.1.
    fn data_addr(reply: &str) -> SocketAddr {
        let port = match first_code(reply) {
            Some(227) => parse_227_port(reply),
            Some(229) => parse_229_port(reply),
            _ => None,
        };
        SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            port.unwrap_or_else(|| panic!("{reply}")),
        ))
    }

    /// A seed under which rules with probability 0.5 fire exactly on the `hits` draws.
    fn seed_for(hits: &[bool]) -> u64 {
        (1u64..)
            .find(|&seed| {
                let mut state = seed;
                hits.iter()
                    .all(|&hit| (xorshift_unit(&mut state) < 0.5) == hit)
            })
            .expect("a seed")
    }

    /// A scripted upstream for one control connection: greets with "220 fake" and answers
    /// the n-th command (from 1) with "<code> reply n", each after `lag` (so replies the proxy
    /// makes up would overtake them if it did not queue them). Returns its address and the
    /// commands it got.
    async fn fake_upstream(lag: Duration, code: u16) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&got);
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let (r, mut w) = sock.into_split();
            let mut r = BufReader::new(r);
            tokio::time::sleep(lag).await;
            w.write_all(b"220 fake\r\n").await.unwrap();
            for n in 1.. {
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                lock(&log).push(line.trim_end().to_string());
                tokio::time::sleep(lag).await;
                let reply = format!("{code} reply {n}\r\n");
                if w.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        (addr, got)
    }

    #[tokio::test]
    async fn pipelined_injected_reply_waits_for_earlier_replies() {
        let (upstream, got) = fake_upstream(Duration::from_millis(100), 200).await;
        let proxy = FaultProxy::start(upstream).await.unwrap();
        proxy.set_seed(seed_for(&[false, true, false]));
        proxy.add_rule(Rule::new("NOOP", Action::Reply("502 injected".into())).probability(0.5));
        // Sent before the greeting arrives: the greeting is owed first.
        let mut raw = Raw::connect(proxy.addr()).await;
        raw.send("NOOP\r\nNOOP\r\nNOOP\r\n").await;
        assert_eq!(raw.reply().await, "220 fake\r\n");
        assert_eq!(raw.reply().await, "200 reply 1\r\n");
        assert_eq!(raw.reply().await, "502 injected\r\n");
        assert_eq!(raw.reply().await, "200 reply 2\r\n");
        assert_eq!(proxy.fired(), 1);
        assert_eq!(proxy.commands(), ["NOOP", "NOOP", "NOOP"]);
        assert_eq!(*lock(&got), ["NOOP", "NOOP"]);
        // An injected reply with nothing owed before it goes out at once.
        proxy.clear_rules();
        proxy.add_rule(Rule::new("AUTH", Action::Delay(Duration::from_millis(1))));
        assert_eq!(
            raw.cmd("AUTH TLS").await,
            "534 TLS not available through the proxy\r\n"
        );
        assert_eq!(raw.cmd("NOOP").await, "200 reply 3\r\n");
    }

    #[tokio::test]
    async fn pipelined_421_closes_after_the_earlier_replies() {
        let (upstream, got) = fake_upstream(Duration::from_millis(100), 200).await;
        let proxy = FaultProxy::start(upstream).await.unwrap();
        proxy.set_seed(seed_for(&[false, true]));
        proxy.add_rule(
            Rule::new("NOOP", Action::Reply("421 Too many connections".into())).probability(0.5),
        );
        let mut raw = Raw::connect(proxy.addr()).await;
        assert_eq!(raw.reply().await, "220 fake\r\n");
        raw.send("NOOP\r\nNOOP\r\nNOOP\r\n").await;
        assert_eq!(raw.reply().await, "200 reply 1\r\n");
        assert_eq!(raw.reply().await, "421 Too many connections\r\n");
        assert_eq!(raw.reply().await, "", "closed after the 421");
        assert_eq!(proxy.fired(), 1);
        // Like a closing server, the proxy read no command after the 421.
        assert_eq!(proxy.commands(), ["NOOP", "NOOP"]);
        assert_eq!(*lock(&got), ["NOOP"]);
    }

    #[tokio::test]
    async fn pipelined_delay_holds_back_only_later_commands() {
        let (upstream, got) = fake_upstream(Duration::ZERO, 213).await;
        let proxy = FaultProxy::start(upstream).await.unwrap();
        proxy.add_rule(Rule::new("SIZE", Action::Delay(Duration::from_millis(500))));
        let mut raw = Raw::connect(proxy.addr()).await;
        assert_eq!(raw.reply().await, "220 fake\r\n");
        let started = Instant::now();
        raw.send("MDTM 20240101000000 x\r\nSIZE x\r\nNOOP\r\n")
            .await;
        assert_eq!(raw.reply().await, "213 reply 1\r\n");
        let first = started.elapsed();
        assert!(first < Duration::from_millis(400), "{first:?}");
        assert_eq!(raw.reply().await, "213 reply 2\r\n");
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert_eq!(raw.reply().await, "213 reply 3\r\n");
        assert_eq!(*lock(&got), ["MDTM 20240101000000 x", "SIZE x", "NOOP"]);
    }

    #[tokio::test]
    async fn pipelined_data_commands_get_their_data_connection() {
        let Some((server, proxy)) = setup("pipelined_data_commands").await else {
            return;
        };
        for (i, pasv) in ["EPSV", "PASV"].into_iter().enumerate() {
            let mut raw = raw_login(&proxy).await;
            let name = format!("{}.bin", pasv.to_ascii_lowercase());
            let data = payload(300_000 + i);
            // Upload: the bytes go out before the server's 1xx is read.
            raw.send(&format!("{pasv}\r\nSTOR {name}\r\n")).await;
            let reply = raw.reply().await;
            let mut conn = t(TcpStream::connect(data_addr(&reply))).await.unwrap();
            t(conn.write_all(&data)).await.unwrap();
            drop(conn);
            let reply = raw.reply().await;
            assert!(matches!(first_code(&reply), Some(125 | 150)), "{reply}");
            let reply = raw.reply().await;
            assert!(reply.starts_with("226"), "{reply}");
            assert_eq!(std::fs::read(server.root.join(&name)).unwrap(), data);
            // Download and listing, pipelined the same way.
            raw.send(&format!("{pasv}\r\nRETR {name}\r\n")).await;
            let reply = raw.reply().await;
            let mut conn = t(TcpStream::connect(data_addr(&reply))).await.unwrap();
            let mut got = Vec::new();
            t(conn.read_to_end(&mut got)).await.unwrap();
            assert_eq!(got, data);
            assert!(matches!(first_code(&raw.reply().await), Some(125 | 150)));
            assert!(raw.reply().await.starts_with("226"));
            raw.send(&format!("{pasv}\r\nNLST\r\n")).await;
            let reply = raw.reply().await;
            let mut conn = t(TcpStream::connect(data_addr(&reply))).await.unwrap();
            let mut listing = String::new();
            t(conn.read_to_string(&mut listing)).await.unwrap();
            assert!(listing.lines().any(|l| l == name), "{listing:?}");
            assert!(matches!(first_code(&raw.reply().await), Some(125 | 150)));
            assert!(raw.reply().await.starts_with("226"));
            assert!(raw.cmd("NOOP").await.starts_with("200"));
        }
        assert_eq!(proxy.fired(), 0);
    }

    #[tokio::test]
    async fn pipelined_rename_replies_stay_in_order() {
        let Some((server, proxy)) = setup("pipelined_rename_replies_stay_in_order").await else {
            return;
        };
        std::fs::write(server.root.join("a.txt"), b"a").unwrap();
        proxy.add_rule(Rule::new("RNTO", Action::Reply("553 nope".into())).times(1));
        let mut raw = raw_login(&proxy).await;
        raw.send("RNFR a.txt\r\nRNTO b.txt\r\n").await;
        let reply = raw.reply().await;
        assert!(reply.starts_with("350 "), "{reply}");
        assert_eq!(raw.reply().await, "553 nope\r\n");
        assert!(raw.cmd("NOOP").await.starts_with("200"));
        assert!(exists(&server.root, "a.txt") && !exists(&server.root, "b.txt"));

        // The reply to the RNTO is lost; the one to the RNFR still came through.
        proxy.add_rule(Rule::new("RNTO", Action::DropAfterForward).times(1));
        raw.send("RNFR a.txt\r\nRNTO b.txt\r\nNOOP\r\n").await;
        let reply = raw.reply().await;
        assert!(reply.starts_with("350 "), "{reply}");
        assert_eq!(raw.reply().await, "", "closed instead of the RNTO reply");
        assert!(!exists(&server.root, "a.txt") && exists(&server.root, "b.txt"));
        assert_eq!(proxy.fired(), 2);
    }

    #[tokio::test]
    async fn pipelined_refused_data_command_loses_its_data_connection() {
        let Some((server, proxy)) = setup("pipelined_refused_data_command").await else {
            return;
        };
        proxy.add_rule(Rule::new("STOR", Action::Reply("451 Transient error".into())).times(1));
        let mut raw = raw_login(&proxy).await;
        raw.send("EPSV\r\nSTOR x.bin\r\n").await;
        let reply = raw.reply().await;
        let addr = data_addr(&reply);
        assert_eq!(raw.reply().await, "451 Transient error\r\n");
        assert!(t(TcpStream::connect(addr)).await.is_err(), "listener open");
        assert!(raw.cmd("NOOP").await.starts_with("200"));
        // The next data command has a data connection again.
        raw.send("EPSV\r\nSTOR x.bin\r\n").await;
        let reply = raw.reply().await;
        let mut conn = t(TcpStream::connect(data_addr(&reply))).await.unwrap();
        t(conn.write_all(b"second")).await.unwrap();
        drop(conn);
        assert!(matches!(first_code(&raw.reply().await), Some(125 | 150)));
        assert!(raw.reply().await.starts_with("226"));
        assert_eq!(std::fs::read(server.root.join("x.bin")).unwrap(), b"second");
        assert_eq!(proxy.fired(), 1);
    }

    #[tokio::test]
    async fn pipelined_stor_with_cut_data_is_cut() {
        let Some((server, proxy)) = setup("pipelined_stor_with_cut_data_is_cut").await else {
            return;
        };
        let data = payload(400_000);
        for (name, kill_control) in [("cut.bin", false), ("killed.bin", true)] {
            proxy.clear_rules();
            proxy.add_rule(Rule::new(
                "STOR",
                Action::CutData {
                    after_bytes: 1_000,
                    kill_control,
                },
            ));
            let mut raw = raw_login(&proxy).await;
            raw.send(&format!("EPSV\r\nSTOR {name}\r\n")).await;
            let reply = raw.reply().await;
            let mut conn = t(TcpStream::connect(data_addr(&reply))).await.unwrap();
            // The reset may come while writing.
            let _ = t(conn.write_all(&data)).await;
            drop(conn);
            if kill_control {
                // The 1xx may or may not beat the cut; the final reply never comes.
                let mut reply = raw.reply().await;
                if matches!(first_code(&reply), Some(125 | 150)) {
                    reply = raw.reply().await;
                }
                assert_eq!(reply, "", "control survived kill_control");
            } else {
                let reply = raw.reply().await;
                assert!(matches!(first_code(&reply), Some(125 | 150)), "{reply}");
                // pyftpdlib may report success on a reset socket: only the size tells.
                let reply = raw.reply().await;
                assert!(matches!(first_code(&reply), Some(200..=599)), "{reply}");
                assert!(raw.cmd("NOOP").await.starts_with("200"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let stored = std::fs::metadata(server.root.join(name)).map_or(0, |m| m.len());
            assert!(stored <= 1_000, "{name}: {stored}");
        }
        assert_eq!(proxy.fired(), 2);
    }
}
