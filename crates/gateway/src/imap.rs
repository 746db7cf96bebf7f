//! The IMAP greeting service: enough IMAP4rev1 for probes and clients to
//! connect, ask for capabilities and log out (greeting, CAPABILITY, NOOP,
//! LOGOUT; LIST answers an empty list so that `curl imap://host/` works as
//! a probe; anything else is `BAD`). While draining, new sessions and the
//! next command of open ones get `* BYE shutting down`; in an upgrade drain
//! (see [`UpgradeDrain`]) a session accepted just before the listener
//! stopped is still greeted, and its next command gets the `BYE`. A session
//! that stays idle gets its `BYE` at an instant drawn uniformly from the
//! drain window ([`ShutdownHandle::draining_paced`]), so that the clients
//! of a stopping instance reconnect elsewhere spread out, not as one storm.

use std::sync::Arc;
use std::time::Duration;

use actix_lifecycle::{Phase, ShutdownHandle};
use slog::{info, o, Logger};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::ImapConfig;
use crate::metrics::GatewayMetrics;
use crate::session::{EndReason, SessionSummary};
use crate::upgrade::UpgradeDrain;
use crate::wire::Wire;

/// Longest command line accepted.
const MAX_LINE: usize = 8 * 1024;
/// After this many `BAD` replies the session is closed.
const MAX_ERRORS: u32 = 20;
/// Largest non-synchronizing literal read and thrown away (the limit RFC
/// 7888 sets for LITERAL-); a larger one ends the session, so that one
/// `BAD` cannot cost an unbounded amount of input.
const MAX_DISCARDED_LITERAL: u64 = 4096;
const CAPABILITY: &str = "IMAP4rev1";

/// What every IMAP session of a listener shares.
///
/// ```
/// use std::time::Duration;
/// let log = slog::Logger::root(slog::Discard, slog::o!());
/// let ctx = lifecycle_gateway::ImapContext::new(log).idle_timeout(Duration::from_secs(60));
/// # let _ = ctx;
/// ```
#[derive(Debug)]
pub struct ImapContext {
    idle_timeout: Duration,
    max_session: Duration,
    logger: Logger,
    metrics: Option<GatewayMetrics>,
    upgrade_drain: UpgradeDrain,
}

impl ImapContext {
    /// A context with a 30 minute idle timeout and a 24 hour session limit.
    pub fn new(logger: Logger) -> Self {
        ImapContext {
            idle_timeout: Duration::from_secs(1800),
            max_session: Duration::from_secs(24 * 3600),
            logger,
            metrics: None,
            upgrade_drain: UpgradeDrain::default(),
        }
    }

    /// A context with the settings of an `[imap]` config table.
    pub fn from_config(config: &ImapConfig, logger: Logger) -> Self {
        Self::new(logger)
            .idle_timeout(config.idle_timeout())
            .max_session(config.max_session())
    }

    /// The longest a session may last, however busy (default 24 hours);
    /// then `* BYE` at its next wait for the client.
    pub fn max_session(mut self, max: Duration) -> Self {
        self.max_session = max;
        self
    }

    /// Counts sessions cut by a timer in these metrics (default: not counted).
    pub fn metrics(mut self, metrics: GatewayMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// How long a session waits for the client (default 30 minutes).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Tells an upgrade drain from a stop (default: every drain is a stop).
    pub fn upgrade_drain(mut self, drain: UpgradeDrain) -> Self {
        self.upgrade_drain = drain;
        self
    }
}

/// Serves one IMAP session on `stream`; see the module documentation.
/// Logs one line when the session opens and one when it closes.
pub async fn serve_imap<S>(
    stream: S,
    peer: String,
    shutdown: ShutdownHandle,
    ctx: Arc<ImapContext>,
) -> SessionSummary
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let log = ctx.logger.new(o!("protocol" => "imap", "peer" => peer));
    info!(log, "connection open");
    let mut wire = Wire::new(stream, shutdown.abort_token(), ctx.idle_timeout);
    wire.limit_session(ctx.max_session);
    let reason = converse(&mut wire, &shutdown, &ctx.upgrade_drain).await;
    match reason {
        EndReason::IdleTimeout => wire.reply("* BYE idle timeout, closing connection"),
        EndReason::Cut(_) => wire.reply("* BYE session lifetime exceeded, closing connection"),
        EndReason::TooManyErrors => wire.reply("* BYE too many errors, closing connection"),
        EndReason::LiteralTooLarge => wire.reply("* BYE literal too large, closing connection"),
        _ => {}
    }
    if let Some(label) = reason.cut_label() {
        info!(log, "session cut"; "reason" => label);
        if let Some(m) = &ctx.metrics {
            m.session_cut("imap", label);
        }
    }
    wire.finish(&reason).await;
    info!(log, "connection closed"; "reason" => %reason);
    SessionSummary {
        reason,
        messages: 0,
    }
}

async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    shutdown: &ShutdownHandle,
    upgrade_drain: &UpgradeDrain,
) -> EndReason {
    if shutdown.is_draining() && !upgrade_drain.is_upgrade() {
        wire.reply("* BYE shutting down");
        return EndReason::Draining;
    }
    wire.reply(&format!(
        "* OK [CAPABILITY {CAPABILITY}] lifecycle-gateway ready"
    ));
    let mut errors = 0;
    // Drawn once per session: the instant of the drain at which an idle
    // session is told goodbye.
    let paced_bye = shutdown.draining_paced();
    tokio::pin!(paced_bye);
    loop {
        let read = tokio::select! {
            biased;
            r = wire.line(MAX_LINE) => r,
            () = &mut paced_bye => {
                if shutdown.phase() >= Phase::Aborting {
                    return EndReason::Aborted;
                }
                wire.reply("* BYE shutting down");
                return EndReason::Draining;
            }
        };
        let line = match read {
            Ok(Some(line)) => line,
            Ok(None) => {
                wire.reply("* BAD line too long");
                errors += 1;
                if errors >= MAX_ERRORS {
                    return EndReason::TooManyErrors;
                }
                continue;
            }
            Err(end) => return end,
        };
        let text = String::from_utf8_lossy(&line);
        let (tag, rest) = text.split_once(' ').unwrap_or((&text, ""));
        let command = rest.split(' ').next().unwrap_or("").to_ascii_uppercase();
        if shutdown.is_draining() && command != "LOGOUT" {
            wire.reply("* BYE shutting down");
            return EndReason::Draining;
        }
        if let Some((octets, synchronizing)) = literal(&line) {
            // No command here takes a literal. A synchronizing one is never
            // sent (no `+` continuation); a non-synchronizing one follows at
            // once and is read and thrown away through the fixed buffer, up
            // to MAX_DISCARDED_LITERAL octets; a larger one ends the session.
            wire.reply(&format!(
                "{} BAD literals are not accepted by this server ({octets} octets refused)",
                if valid_tag(tag) { tag } else { "*" }
            ));
            errors += 1;
            if !synchronizing && octets > MAX_DISCARDED_LITERAL {
                return EndReason::LiteralTooLarge;
            }
            if !synchronizing {
                if let Err(end) = wire.discard(octets).await {
                    return end;
                }
            }
        } else if !valid_tag(tag) {
            wire.reply("* BAD missing or invalid tag");
            errors += 1;
        } else {
            match command.as_str() {
                "CAPABILITY" => {
                    wire.reply(&format!("* CAPABILITY {CAPABILITY}"));
                    wire.reply(&format!("{tag} OK CAPABILITY completed"));
                }
                "NOOP" => wire.reply(&format!("{tag} OK NOOP completed")),
                // There are no mailboxes: an empty list (curl's probe asks).
                "LIST" => wire.reply(&format!("{tag} OK LIST completed")),
                "LOGOUT" => {
                    wire.reply("* BYE logging out");
                    wire.reply(&format!("{tag} OK LOGOUT completed"));
                    return EndReason::Quit;
                }
                _ => {
                    wire.reply(&format!("{tag} BAD command unknown or not supported"));
                    errors += 1;
                }
            }
        }
        if errors >= MAX_ERRORS {
            return EndReason::TooManyErrors;
        }
        if let Err(end) = wire.flush_if_full().await {
            return end;
        }
    }
}

/// The literal a command line announces at its end: `{N}` (synchronizing,
/// `true`) or `{N+}` (RFC 7888 non-synchronizing, `false`).
fn literal(line: &[u8]) -> Option<(u64, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let spec = &inner[open + 1..];
    let (digits, synchronizing) = match spec.strip_suffix(b"+") {
        Some(d) => (d, false),
        None => (spec, true),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let octets = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((octets, synchronizing))
}

/// A tag is one or more ASTRING-CHARs other than `+` (RFC 9051).
fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 64
        && tag.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b'+')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_lifecycle::{Phase, PhaseController};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    fn start(
        phases: &PhaseController,
        idle: Duration,
    ) -> (
        BufReader<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<SessionSummary>,
    ) {
        let (client, server) = tokio::io::duplex(16 * 1024);
        let ctx = Arc::new(ImapContext::new(Logger::root(slog::Discard, o!())).idle_timeout(idle));
        let task = tokio::spawn(serve_imap(server, "t".into(), phases.handle(), ctx));
        (BufReader::new(client), task)
    }

    async fn line(c: &mut BufReader<tokio::io::DuplexStream>) -> String {
        let mut s = String::new();
        c.read_line(&mut s).await.unwrap();
        s
    }

    async fn eof(c: &mut BufReader<tokio::io::DuplexStream>) -> bool {
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.is_ok() && rest.is_empty()
    }

    #[tokio::test]
    async fn greeting_capability_noop_logout() {
        let phases = PhaseController::new();
        let (mut c, task) = start(&phases, Duration::from_secs(20));
        assert_eq!(
            line(&mut c).await,
            "* OK [CAPABILITY IMAP4rev1] lifecycle-gateway ready\r\n"
        );
        // Pipelined commands are answered in order.
        c.get_mut()
            .write_all(
                b"a1 CAPABILITY\r\na2 noop\r\na3 LOGIN u p\r\nbad\r\n\r\na5 LIST \"\" *\r\na4 LOGOUT\r\n",
            )
            .await
            .unwrap();
        assert_eq!(line(&mut c).await, "* CAPABILITY IMAP4rev1\r\n");
        assert_eq!(line(&mut c).await, "a1 OK CAPABILITY completed\r\n");
        assert_eq!(line(&mut c).await, "a2 OK NOOP completed\r\n");
        assert_eq!(
            line(&mut c).await,
            "a3 BAD command unknown or not supported\r\n"
        );
        assert_eq!(
            line(&mut c).await,
            "bad BAD command unknown or not supported\r\n"
        );
        assert_eq!(line(&mut c).await, "* BAD missing or invalid tag\r\n");
        assert_eq!(line(&mut c).await, "a5 OK LIST completed\r\n");
        assert_eq!(line(&mut c).await, "* BYE logging out\r\n");
        assert_eq!(line(&mut c).await, "a4 OK LOGOUT completed\r\n");
        assert!(eof(&mut c).await);
        assert_eq!(task.await.unwrap().reason, EndReason::Quit);
    }

    #[tokio::test]
    async fn draining_says_bye_to_new_and_open_sessions() {
        let phases = PhaseController::new();
        let (mut open, open_task) = start(&phases, Duration::from_secs(20));
        assert!(line(&mut open).await.starts_with("* OK"));
        phases.advance(Phase::Draining);
        let (mut late, late_task) = start(&phases, Duration::from_secs(20));
        assert_eq!(line(&mut late).await, "* BYE shutting down\r\n");
        assert!(eof(&mut late).await);
        assert_eq!(late_task.await.unwrap().reason, EndReason::Draining);
        // No drain grace known to the controller: the idle one is told at once.
        assert_eq!(line(&mut open).await, "* BYE shutting down\r\n");
        assert!(eof(&mut open).await);
        assert_eq!(open_task.await.unwrap().reason, EndReason::Draining);
    }

    #[tokio::test]
    async fn an_upgrade_drain_greets_a_late_session_then_says_bye() {
        let phases = PhaseController::new();
        // Its paced goodbye falls somewhere in the first 54 minutes: the
        // command comes first.
        phases.set_drain_grace(Duration::from_secs(3600));
        phases.advance(Phase::Draining);
        let (client, server) = tokio::io::duplex(16 * 1024);
        let ctx = ImapContext::new(Logger::root(slog::Discard, o!()))
            .upgrade_drain(UpgradeDrain::upgrading());
        let task = tokio::spawn(serve_imap(
            server,
            "t".into(),
            phases.handle(),
            Arc::new(ctx),
        ));
        let mut late = BufReader::new(client);
        assert!(line(&mut late).await.starts_with("* OK"));
        late.get_mut().write_all(b"a1 NOOP\r\n").await.unwrap();
        assert_eq!(line(&mut late).await, "* BYE shutting down\r\n");
        assert!(eof(&mut late).await);
        assert_eq!(task.await.unwrap().reason, EndReason::Draining);
    }

    #[tokio::test]
    async fn aborting_ends_a_silent_session() {
        let phases = PhaseController::new();
        let (mut c, task) = start(&phases, Duration::from_secs(20));
        assert!(line(&mut c).await.starts_with("* OK"));
        phases.advance(Phase::Aborting);
        assert_eq!(task.await.unwrap().reason, EndReason::Aborted);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_sessions_get_bye_paced_within_the_drain_window() {
        let phases = PhaseController::new();
        let grace = Duration::from_secs(2);
        phases.set_drain_grace(grace);
        let (mut c, task) = start(&phases, Duration::from_secs(600));
        assert!(line(&mut c).await.starts_with("* OK"));
        let began = tokio::time::Instant::now();
        phases.advance(Phase::Draining);
        assert_eq!(line(&mut c).await, "* BYE shutting down\r\n");
        assert!(
            began.elapsed() < grace,
            "before the abort: {:?}",
            began.elapsed()
        );
        assert!(eof(&mut c).await);
        assert_eq!(task.await.unwrap().reason, EndReason::Draining);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_sessions_get_bye() {
        let phases = PhaseController::new();
        let (mut c, task) = start(&phases, Duration::from_secs(60));
        assert!(line(&mut c).await.starts_with("* OK"));
        assert_eq!(
            line(&mut c).await,
            "* BYE idle timeout, closing connection\r\n"
        );
        assert_eq!(task.await.unwrap().reason, EndReason::IdleTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_session_is_cut_at_its_lifetime() {
        let phases = PhaseController::new();
        let (client, server) = tokio::io::duplex(16 * 1024);
        let registry = prometheus::Registry::new();
        let metrics = GatewayMetrics::register(&registry, "t").unwrap();
        let ctx = ImapContext::new(Logger::root(slog::Discard, o!()))
            .idle_timeout(Duration::from_secs(60))
            .max_session(Duration::from_secs(300))
            .metrics(metrics);
        let task = tokio::spawn(serve_imap(
            server,
            "t".into(),
            phases.handle(),
            Arc::new(ctx),
        ));
        let mut c = BufReader::new(client);
        assert!(line(&mut c).await.starts_with("* OK"));
        // A NOOP every 45 s never lets the idle timeout fire.
        let mut noops = 0;
        let last = loop {
            tokio::time::sleep(Duration::from_secs(45)).await;
            // After the cut the write fails; the BYE is still there to read.
            let _ = c.get_mut().write_all(b"a NOOP\r\n").await;
            let l = line(&mut c).await;
            if !l.starts_with("a OK") {
                break l;
            }
            noops += 1;
        };
        assert_eq!(
            last,
            "* BYE session lifetime exceeded, closing connection\r\n"
        );
        assert_eq!(noops, 6, "cut at 300 s, after the NOOPs at 45..270 s");
        assert_eq!(
            task.await.unwrap().reason,
            EndReason::Cut(crate::session::Cut::MaxSession)
        );
        let cut = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "t_sessions_cut_total")
            .unwrap();
        let counted: Vec<_> = cut
            .get_metric()
            .iter()
            .filter(|m| m.get_counter().get_value() > 0.0)
            .map(|m| {
                m.get_label()
                    .iter()
                    .map(|l| l.value().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            counted,
            vec![vec!["imap".to_owned(), "max_session".to_owned()]]
        );
    }

    #[tokio::test]
    async fn literals_are_refused_and_a_non_synchronizing_one_is_skipped() {
        let phases = PhaseController::new();
        let (mut c, task) = start(&phases, Duration::from_secs(20));
        assert!(line(&mut c).await.starts_with("* OK"));
        // 4 KiB of literal (the most that is skipped), full of what would
        // look like commands: read through the fixed buffer and thrown
        // away, not taken as commands.
        let mut literal = b"a1 LOGIN user {4096+}\r\n".to_vec();
        literal.extend(b"x LOGOUT\r\n".iter().cycle().take(4096));
        c.get_mut().write_all(&literal).await.unwrap();
        c.get_mut()
            .write_all(b"a2 APPEND box {20}\r\na3 NOOP\r\n")
            .await
            .unwrap();
        assert_eq!(
            line(&mut c).await,
            "a1 BAD literals are not accepted by this server (4096 octets refused)\r\n"
        );
        assert_eq!(
            line(&mut c).await,
            "a2 BAD literals are not accepted by this server (20 octets refused)\r\n"
        );
        assert_eq!(line(&mut c).await, "a3 OK NOOP completed\r\n");
        drop(c);
        assert_eq!(task.await.unwrap().reason, EndReason::ClientClosed);
        assert_eq!(literal_of(b"a LOGIN {5}"), Some((5, true)));
        assert_eq!(literal_of(b"a LOGIN {x}"), None);
        assert_eq!(literal_of(b"a NOOP"), None);
    }

    #[tokio::test]
    async fn a_larger_non_synchronizing_literal_ends_the_session() {
        // One octet over what is skipped: one BAD must not buy an
        // unbounded stream of input (a literal announced as 10^19 octets
        // and trickled in would otherwise hold the session to its
        // lifetime).
        let phases = PhaseController::new();
        let (mut c, task) = start(&phases, Duration::from_secs(20));
        assert!(line(&mut c).await.starts_with("* OK"));
        c.get_mut()
            .write_all(b"a1 NOOP {4097+}\r\nx")
            .await
            .unwrap();
        assert_eq!(
            line(&mut c).await,
            "a1 BAD literals are not accepted by this server (4097 octets refused)\r\n"
        );
        assert_eq!(
            line(&mut c).await,
            "* BYE literal too large, closing connection\r\n"
        );
        assert_eq!(line(&mut c).await, "", "the connection is closed");
        assert_eq!(task.await.unwrap().reason, EndReason::LiteralTooLarge);
    }

    fn literal_of(line: &[u8]) -> Option<(u64, bool)> {
        literal(line)
    }

    #[tokio::test]
    async fn overlong_lines_and_garbage_end_in_bye() {
        let phases = PhaseController::new();
        let (mut c, task) = start(&phases, Duration::from_secs(20));
        assert!(line(&mut c).await.starts_with("* OK"));
        c.get_mut().write_all(&vec![b'x'; 100_000]).await.unwrap();
        c.get_mut().write_all(b"\r\n").await.unwrap();
        assert_eq!(line(&mut c).await, "* BAD line too long\r\n");
        c.get_mut()
            .write_all(&b"\x00\xff junk\r\n".repeat(30))
            .await
            .unwrap();
        let mut last = String::new();
        loop {
            let l = line(&mut c).await;
            if l.is_empty() {
                break;
            }
            last = l;
        }
        assert_eq!(last, "* BYE too many errors, closing connection\r\n");
        assert_eq!(task.await.unwrap().reason, EndReason::TooManyErrors);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// Whatever the bytes, the session answers and ends when the client does.
        #[test]
        fn any_bytes_end_cleanly(input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let phases = PhaseController::new();
                let (client, task) = start(&phases, Duration::from_secs(20));
                let (mut rd, mut wr) = tokio::io::split(client.into_inner());
                let writer = tokio::spawn(async move {
                    let _ = wr.write_all(&input).await;
                    let _ = wr.shutdown().await;
                });
                let mut out = Vec::new();
                let read = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut out)).await;
                assert!(read.is_ok(), "the session did not end");
                writer.await.unwrap();
                let summary = task.await.unwrap();
                assert!(out.starts_with(b"* OK "));
                assert!(matches!(summary.reason, EndReason::ClientClosed | EndReason::TooManyErrors | EndReason::Quit | EndReason::Io(_)), "{summary:?}");
            });
        }
    }
}
