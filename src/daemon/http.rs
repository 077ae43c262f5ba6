//! The daemon's HTTP endpoint: `GET /healthz` for liveness probes and
//! `GET /metrics` for Prometheus. Everything else is 404.
//!
//! Liveness means the scheduler loop is still turning: the scheduler calls
//! [`HttpState::beat`] on every iteration, and `/healthz` answers 503 once the
//! last beat is older than the configured silence. A process that accepts
//! connections but whose scheduler is stuck is not healthy.
//!
//! The server takes a bound listener (tests bind `127.0.0.1:0`) and stops on
//! a cancellation token.

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::metrics::{ExpositionFormat, Metrics};

/// How long connections still open at shutdown may take to finish (a scrape
/// in flight). After that [`serve`] returns anyway, so a stalled client
/// cannot hold up the daemon's exit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the endpoints read: the metrics, and the scheduler's heartbeat.
/// Shared as `Arc<HttpState>` between the scheduler (which beats) and the
/// server (which reads).
#[derive(Debug)]
pub struct HttpState {
    metrics: Arc<Metrics>,
    /// A monotonic clock's zero, so the heartbeat ignores wall-clock steps
    /// (NTP, a suspended VM's clock catching up).
    origin: Instant,
    /// Milliseconds from `origin` to the last beat.
    last_beat_ms: AtomicU64,
    max_silence: Duration,
}

impl HttpState {
    /// State whose scheduler counts as alive while it beats at least every
    /// `max_silence`. Creating it counts as a beat, so `/healthz` is 200 while
    /// the scheduler starts. The scheduler must wake up to beat even when its
    /// next job is hours away (cap its sleep below `max_silence`).
    pub fn new(metrics: Arc<Metrics>, max_silence: Duration) -> Self {
        HttpState {
            metrics,
            origin: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            max_silence,
        }
    }

    /// Records that the scheduler loop just ran.
    pub fn beat(&self) {
        self.last_beat_ms
            .store(millis(self.origin.elapsed()), Ordering::Relaxed);
    }

    /// How long since the last beat.
    pub fn silence(&self) -> Duration {
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    /// Whether the scheduler beat within `max_silence`.
    pub fn is_alive(&self) -> bool {
        self.silence() <= self.max_silence
    }

    /// The metrics `/metrics` renders.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Serves `/healthz` and `/metrics` on `listener` until `cancel` fires, then
/// lets open requests finish for up to a few seconds. Accept errors (such as
/// running out of file descriptors) are retried inside, not returned.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let server = axum::serve(listener, router(state))
        .with_graceful_shutdown(cancel.clone().cancelled_owned())
        .into_future();
    let grace_over = async {
        cancel.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = server => result,
        () = grace_over => {
            tracing::warn!("HTTP connections still open {SHUTDOWN_GRACE:?} after shutdown; leaving them");
            Ok(())
        }
    }
}

fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    if state.is_alive() {
        return (StatusCode::OK, "ok\n").into_response();
    }
    let silence = state.silence().as_secs();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("scheduler silent for {silence}s\n"),
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let format = negotiate(accept);
    let body = state.metrics.render_as(format);
    ([(CONTENT_TYPE, format.content_type())], body).into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Picks the exposition format from an `Accept` header. OpenMetrics only when
/// the client names `application/openmetrics-text` (as Prometheus does, at
/// the highest weight of the formats we have) with a weight at least that of
/// the plain text format; everything else gets the classic text format, which
/// every scraper reads. Never 406: a scrape that gets text beats one that
/// gets nothing.
fn negotiate(accept: Option<&str>) -> ExpositionFormat {
    let Some(accept) = accept else {
        return ExpositionFormat::PrometheusText;
    };
    let mut openmetrics = 0.0_f32;
    let mut text = 0.0_f32;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if openmetrics > 0.0 && openmetrics >= text {
        ExpositionFormat::OpenMetrics
    } else {
        ExpositionFormat::PrometheusText
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    struct Server {
        addr: std::net::SocketAddr,
        cancel: CancellationToken,
        task: JoinHandle<std::io::Result<()>>,
    }

    async fn start(state: Arc<HttpState>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(listener, state, cancel.clone()));
        Server { addr, cancel, task }
    }

    fn state(max_silence: Duration) -> Arc<HttpState> {
        let metrics = Arc::new(Metrics::new());
        metrics.register_job("site");
        Arc::new(HttpState::new(metrics, max_silence))
    }

    /// One HTTP/1.1 request over a raw socket; the server closes after it.
    async fn get(addr: std::net::SocketAddr, path: &str, extra: &str) -> Reply {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra}Connection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .expect("reply in time")
            .expect("read reply");
        let raw = String::from_utf8(raw).expect("UTF-8 reply");
        let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    #[tokio::test]
    async fn healthz_is_ok_while_the_scheduler_beats() {
        let state = state(Duration::from_secs(60));
        state.beat();
        let server = start(state).await;
        let reply = get(server.addr, "/healthz", "").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "ok\n");
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }

    #[tokio::test]
    async fn healthz_is_503_once_the_heartbeat_is_older_than_max_silence() {
        let state = state(Duration::from_millis(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let server = start(state).await;
        let reply = get(server.addr, "/healthz", "").await;
        assert_eq!(reply.status, 503);
        assert!(
            reply.body.starts_with("scheduler silent for "),
            "{}",
            reply.body
        );
    }

    #[test]
    fn a_beat_makes_the_scheduler_alive_again() {
        let state = HttpState::new(Arc::new(Metrics::new()), Duration::from_millis(200));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!state.is_alive());
        state.beat();
        assert!(state.is_alive());
    }

    #[tokio::test]
    async fn metrics_serves_openmetrics_to_prometheus() {
        let server = start(state(Duration::from_secs(60))).await;
        // Prometheus 3's default Accept header.
        let accept = "Accept: application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,\
            application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;\
            escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1\r\n";
        let reply = get(server.addr, "/metrics", accept).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        assert!(reply.body.contains("ftpsync_running{job=\"site\"} 0\n"));
        assert!(reply.body.ends_with("# EOF\n"), "{}", reply.body);
    }

    #[tokio::test]
    async fn metrics_serves_classic_text_to_everyone_else() {
        let server = start(state(Duration::from_secs(60))).await;
        let reply = get(server.addr, "/metrics", "").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(reply.body.contains("# TYPE ftpsync_runs_total counter\n"));
        assert!(!reply.body.contains("# EOF"));
    }

    #[tokio::test]
    async fn other_paths_are_404() {
        let server = start(state(Duration::from_secs(60))).await;
        let reply = get(server.addr, "/", "").await;
        assert_eq!(reply.status, 404);
        let reply = get(server.addr, "/metrics/extra", "").await;
        assert_eq!(reply.status, 404);
    }

    #[tokio::test]
    async fn cancel_stops_the_server() {
        let server = start(state(Duration::from_secs(60))).await;
        assert_eq!(get(server.addr, "/healthz", "").await.status, 200);
        server.cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(2), server.task)
            .await
            .expect("server stops in time")
            .expect("server task");
        assert!(result.is_ok());
        assert!(TcpStream::connect(server.addr).await.is_err());
    }

    #[test]
    fn negotiation_follows_the_accept_header() {
        use ExpositionFormat::{OpenMetrics, PrometheusText};
        assert_eq!(negotiate(None), PrometheusText);
        assert_eq!(negotiate(Some("*/*")), PrometheusText);
        assert_eq!(negotiate(Some("text/plain")), PrometheusText);
        assert_eq!(
            negotiate(Some("application/openmetrics-text; version=0.0.1")),
            OpenMetrics
        );
        // Prometheus 2.x.
        assert_eq!(
            negotiate(Some(
                "application/openmetrics-text; version=0.0.1,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            OpenMetrics
        );
        assert_eq!(
            negotiate(Some(
                "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"
            )),
            PrometheusText
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0")),
            PrometheusText
        );
    }
}
