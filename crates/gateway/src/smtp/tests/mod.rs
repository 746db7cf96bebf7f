use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_lifecycle::{Phase, PhaseController};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;

use super::*;
use crate::session::EndReason;
use crate::spool::TMP_DIR;

fn log() -> Logger {
    Logger::root(slog::Discard, o!())
}

struct Client<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send(&mut self, text: &str) {
        self.io.get_mut().write_all(text.as_bytes()).await.unwrap();
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
    }

    /// One whole reply (all its lines), or "" at end of input.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.io.read_line(&mut line).await.unwrap() == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    async fn expect(&mut self, code: &str) -> String {
        let r = self.reply().await;
        assert!(r.starts_with(code), "expected {code}, got {r:?}");
        r
    }

    /// A transaction from <a@x> to <b@x> up to the 354 that asks for
    /// the message.
    async fn start_data(&mut self) {
        self.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
            .await;
        self.expect("250").await;
        self.expect("250").await;
        self.expect("354").await;
    }

    /// QUIT, answered 221.
    async fn quit(&mut self) {
        self.send("QUIT\r\n").await;
        self.expect("221").await;
    }

    async fn eof(&mut self) -> bool {
        let mut rest = Vec::new();
        self.io.read_to_end(&mut rest).await.is_ok() && rest.is_empty()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    spool_dir: std::path::PathBuf,
    spool: Arc<Spool>,
    phases: PhaseController,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let spool = Arc::new(Spool::open(&spool_dir, &log()).unwrap());
        Setup {
            _dir: dir,
            spool_dir,
            spool,
            phases: PhaseController::new(),
        }
    }

    fn ctx(&self) -> SmtpContext {
        // A hang shows up as a 421 idle timeout rather than a stuck test.
        SmtpContext::new(self.spool.clone(), log())
            .hostname("test.example")
            .idle_timeout(Duration::from_secs(20))
    }

    fn start(
        &self,
        ctx: SmtpContext,
    ) -> (Client<tokio::io::DuplexStream>, JoinHandle<SessionSummary>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(serve_smtp(
            server,
            "test".into(),
            self.phases.handle(),
            Arc::new(ctx),
        ));
        (
            Client {
                io: BufReader::new(client),
            },
            task,
        )
    }

    fn messages(&self) -> Vec<Vec<u8>> {
        self.spool
            .messages()
            .unwrap()
            .iter()
            .map(|p| fs::read(p).unwrap())
            .collect()
    }

    fn tmp_files(&self) -> usize {
        fs::read_dir(self.spool_dir.join(TMP_DIR)).unwrap().count()
    }
}

fn body_of(stored: &[u8]) -> &[u8] {
    // Skip the envelope lines added by the sink (Return-Path, Delivered-To)
    // and the trace line (Received:, folded onto a second line).
    let mut rest = stored;
    while rest.starts_with(b"Return-Path: ")
        || rest.starts_with(b"Delivered-To: ")
        || rest.starts_with(b"Received: ")
        || rest.starts_with(b"\t")
    {
        let i = rest.iter().position(|&b| b == b'\n').unwrap();
        rest = &rest[i + 1..];
    }
    rest
}

async fn hello<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client<S>) {
    c.expect("220 test.example ESMTP").await;
    c.send("EHLO client.example\r\n").await;
    c.expect("250").await;
}

#[tokio::test]
async fn a_message_is_spooled_once_before_250() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx().max_message_size(4096));
    c.expect("220 test.example ESMTP").await;
    c.send("EHLO client.example\r\n").await;
    let ehlo = c.expect("250-test.example greets client.example").await;
    for ext in [
        "250-PIPELINING",
        "250-SIZE 4096",
        "250-8BITMIME",
        "250 ENHANCEDSTATUSCODES",
    ] {
        assert!(ehlo.contains(ext), "{ehlo}");
    }
    c.send("MAIL FROM:<a@example.org>\r\n").await;
    c.expect("250 2.1.0").await;
    c.send("RCPT TO:<b@example.net>\r\n").await;
    c.expect("250 2.1.5").await;
    c.send("DATA\r\n").await;
    c.expect("354").await;
    c.send("Subject: t\r\n\r\n..dot\r\n.\r\n").await;
    let ok = c.expect("250 2.0.0 ok: queued as ").await;
    // The client has read 250: the message must be complete in the spool now.
    let msgs = s.messages();
    assert_eq!(msgs.len(), 1);
    let head = b"Return-Path: <a@example.org>\r\nDelivered-To: b@example.net\r\nReceived: from ";
    assert!(
        msgs[0].starts_with(head),
        "{:?}",
        String::from_utf8_lossy(&msgs[0])
    );
    assert_eq!(body_of(&msgs[0]), b"Subject: t\r\n\r\n.dot\r\n");
    let id = ok.trim_end().rsplit(' ').next().unwrap();
    assert!(s.spool.messages().unwrap()[0].ends_with(format!("{id}.eml")));
    assert_eq!(s.tmp_files(), 0);
    c.quit().await;
    assert!(c.eof().await);
    let summary = task.await.unwrap();
    assert_eq!(
        summary,
        SessionSummary {
            reason: EndReason::Quit,
            messages: 1
        }
    );
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    c.expect("220").await;
    c.send(
        "EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<bad>x\r\nRCPT TO:<c@x>\r\nDATA\r\n",
    )
    .await;
    c.expect("250-").await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("501").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    // Message, then the next transaction and QUIT in one write.
    c.send("one\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<d@x>\r\nDATA\r\n")
        .await;
    c.expect("250 2.0.0").await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    c.send("two\r\n.\r\nQUIT\r\n").await;
    c.expect("250 2.0.0").await;
    c.expect("221").await;
    assert_eq!(task.await.unwrap().messages, 2);
    let bodies: Vec<Vec<u8>> = s.messages().iter().map(|m| body_of(m).to_vec()).collect();
    assert_eq!(bodies, vec![b"one\r\n".to_vec(), b"two\r\n".to_vec()]);
}

#[tokio::test]
async fn dot_handling_is_exact() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    hello(&mut c).await;
    c.start_data().await;
    // ".." at a line start is unstuffed; "." after a bare LF is not the end
    // (no SMTP smuggling) and is kept (the bare LF becomes CRLF); ". " is
    // not the end either.
    c.send("..a\r\nb\n.\r\nc\r\n. \r\n...\r\n.\r\n").await;
    c.expect("250").await;
    c.quit().await;
    task.await.unwrap();
    let msgs = s.messages();
    assert_eq!(body_of(&msgs[0]), b".a\r\nb\r\n.\r\nc\r\n \r\n..\r\n");
}

#[tokio::test]
async fn sequence_syntax_and_unknown_commands() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    c.expect("220").await;
    c.send("MAIL FROM:<a@x>\r\n").await;
    c.expect("503 5.5.1").await;
    c.send("HELO x\n").await; // bare LF is tolerated on commands
    c.expect("250 test.example").await;
    c.send("RCPT TO:<b@x>\r\n").await;
    c.expect("503 5.5.1").await;
    c.send("DATA\r\n").await;
    c.expect("503 5.5.1").await;
    c.send("MAIL FROM:<a@x>\r\n").await;
    c.expect("250").await;
    c.send("MAIL FROM:<a@x>\r\n").await;
    c.expect("503 5.5.1").await;
    c.send("DATA\r\n").await;
    c.expect("503 5.5.1 no valid recipients").await;
    c.send("RCPT TO:b@x\r\n").await;
    c.expect("501 5.5.4").await;
    c.send("RCPT TO:<b@x> NOTIFY=NEVER\r\n").await;
    c.expect("555 5.5.4").await;
    c.send("XYZZY\r\n").await;
    c.expect("500 5.5.1").await;
    c.send("\r\n").await;
    c.expect("500 5.5.1").await;
    c.send("VRFY root\r\n").await;
    c.expect("252").await;
    c.send("NOOP\r\n").await;
    c.expect("250").await;
    c.send("RSET\r\n").await;
    c.expect("250").await;
    c.send("RCPT TO:<b@x>\r\n").await;
    c.expect("503").await; // RSET cleared the sender
    c.send("STARTTLS\r\n").await;
    c.expect("502").await;
    c.quit().await;
    assert_eq!(task.await.unwrap().reason, EndReason::Quit);
}

#[tokio::test]
async fn overlong_command_line_gets_500_and_the_session_goes_on() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    hello(&mut c).await;
    let mut long = "NOOP ".to_owned();
    long.push_str(&"x".repeat(995)); // 1000 + CRLF = 1002 octets
    long.push_str("\r\n");
    c.send(&long).await;
    c.expect("500 5.5.2 line too long").await;
    // Exactly 1000 octets including CRLF is fine.
    let ok = format!("NOOP {}\r\n", "y".repeat(993));
    assert_eq!(ok.len(), 1000);
    c.send(&ok).await;
    c.expect("250").await;
    // A megabyte without any line feed is consumed, not buffered.
    c.send_bytes(&vec![b'z'; 1 << 20]).await;
    c.send("\r\nNOOP\r\n").await;
    c.expect("500 5.5.2").await;
    c.expect("250").await;
    c.quit().await;
    task.await.unwrap();
}

#[tokio::test]
async fn size_limits_give_552_and_store_nothing() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx().max_message_size(1000));
    hello(&mut c).await;
    c.send("MAIL FROM:<a@x> SIZE=1001\r\n").await;
    c.expect("552 5.3.4").await;
    c.send("MAIL FROM:<a@x> SIZE=1000\r\nRCPT TO:<b@x>\r\nDATA\r\n")
        .await;
    c.expect("250").await;
    c.expect("250").await;
    c.expect("354").await;
    // 5 MiB of 100-octet lines: far over the limit, consumed to the dot.
    let line = format!("{}\r\n", "m".repeat(98));
    let chunk = line.repeat(1024);
    for _ in 0..(5 * 1024 * 1024 / chunk.len()) {
        c.send(&chunk).await;
    }
    c.send(".\r\n").await;
    c.expect("552 5.3.4").await;
    assert!(s.messages().is_empty());
    // The transaction was reset; exactly at the limit is accepted.
    c.start_data().await;
    let exact = "e".repeat(998) + "\r\n";
    assert_eq!(exact.len(), 1000);
    c.send(&exact).await;
    c.send(".\r\n").await;
    c.expect("250").await;
    c.quit().await;
    task.await.unwrap();
    assert_eq!(body_of(&s.messages()[0]), exact.as_bytes());
}

#[tokio::test]
async fn a_data_line_over_1000_octets_is_rejected() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    hello(&mut c).await;
    c.start_data().await;
    c.send(&format!("{}\r\n.\r\n", "l".repeat(999))).await;
    c.expect("500 5.5.2").await;
    assert!(s.messages().is_empty());
    c.quit().await;
    task.await.unwrap();
}

#[tokio::test]
async fn a_dot_stuffed_line_is_measured_without_its_added_dot() {
    // RFC 5321 §4.5.3.1.6: the dot a client adds for transparency is not
    // part of the line. A 1000-octet line (998 + CRLF) that starts with a
    // dot travels as 1001 octets and is accepted; one octet more is not.
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    hello(&mut c).await;
    c.start_data().await;
    let line = format!(".{}\r\n", "d".repeat(997));
    assert_eq!(line.len(), 1000);
    c.send(&format!(".{line}.\r\n")).await;
    c.expect("250").await;
    assert_eq!(body_of(&s.messages()[0]), line.as_bytes());
    c.start_data().await;
    c.send(&format!("..{}\r\n.\r\n", "d".repeat(998))).await;
    c.expect("500 5.5.2").await;
    assert_eq!(s.messages().len(), 1);
    c.quit().await;
    task.await.unwrap();
}

#[tokio::test]
async fn too_many_recipients_gives_452() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx().max_recipients(2));
    hello(&mut c).await;
    c.send("MAIL FROM:<a@x>\r\nRCPT TO:<1@x>\r\nRCPT TO:<2@x>\r\nRCPT TO:<3@x>\r\n")
        .await;
    c.expect("250").await;
    c.expect("250").await;
    c.expect("250").await;
    c.expect("452 4.5.3").await;
    c.quit().await;
    task.await.unwrap();
}

#[tokio::test]
async fn too_many_errors_close_the_session() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    c.expect("220").await;
    c.send(&"BAD\r\n".repeat(30)).await;
    for _ in 0..20 {
        c.expect("500").await;
    }
    c.expect("421 4.7.0").await;
    assert!(c.eof().await);
    assert_eq!(task.await.unwrap().reason, EndReason::TooManyErrors);
}

#[tokio::test]
async fn draining_refuses_new_sessions_and_ends_open_ones_at_the_next_command() {
    let s = Setup::new();
    let (mut open, task) = s.start(s.ctx());
    hello(&mut open).await;
    s.phases.advance(Phase::Draining);

    let (mut late, late_task) = s.start(s.ctx());
    assert_eq!(late.reply().await, "421 4.3.2 shutting down\r\n");
    assert!(late.eof().await);
    assert_eq!(late_task.await.unwrap().reason, EndReason::Draining);

    open.send("NOOP\r\n").await;
    open.expect("421 4.3.2 shutting down").await;
    assert!(open.eof().await);
    assert_eq!(task.await.unwrap().reason, EndReason::Draining);
}

#[tokio::test]
async fn quit_while_draining_is_answered_221() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    hello(&mut c).await;
    s.phases.advance(Phase::Draining);
    c.quit().await;
    assert_eq!(task.await.unwrap().reason, EndReason::Quit);
}

#[tokio::test]
async fn a_transfer_in_progress_completes_while_draining() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    hello(&mut c).await;
    c.start_data().await;
    c.send("first half\r\n").await;
    s.phases.advance(Phase::Draining);
    c.send("second half\r\n.\r\n").await;
    c.expect("250 2.0.0").await;
    assert_eq!(body_of(&s.messages()[0]), b"first half\r\nsecond half\r\n");
    c.send("MAIL FROM:<a@x>\r\n").await;
    c.expect("421 4.3.2").await;
    let summary = task.await.unwrap();
    assert_eq!(
        summary,
        SessionSummary {
            reason: EndReason::Draining,
            messages: 1
        }
    );
}

#[tokio::test]
async fn an_upgrade_drain_greets_and_lets_a_session_finish_one_more_transaction() {
    let s = Setup::new();
    let upgrade = || {
        s.ctx()
            .upgrade_drain(crate::upgrade::UpgradeDrain::upgrading())
    };
    // A session in a transaction when the drain starts finishes it; its
    // next MAIL moves it to the successor.
    let (mut open, open_task) = s.start(upgrade());
    hello(&mut open).await;
    open.send("MAIL FROM:<a@x>\r\n").await;
    open.expect("250").await;
    s.phases.advance(Phase::Draining);
    open.send("RCPT TO:<b@x>\r\nDATA\r\n").await;
    open.expect("250").await;
    open.expect("354").await;
    open.send("in progress\r\n.\r\n").await;
    open.expect("250 2.0.0").await;
    open.send("NOOP\r\nMAIL FROM:<a@x>\r\n").await;
    open.expect("250").await;
    open.expect("421 4.3.2 shutting down").await;
    assert!(open.eof().await);

    // A session accepted just before the listener stopped is greeted and
    // makes its one transaction (a one-message client never sees 421).
    let (mut late, late_task) = s.start(upgrade());
    hello(&mut late).await;
    late.start_data().await;
    late.send("late\r\n.\r\nQUIT\r\n").await;
    late.expect("250 2.0.0").await;
    late.expect("221").await;

    assert_eq!(open_task.await.unwrap().reason, EndReason::Draining);
    assert_eq!(
        late_task.await.unwrap(),
        SessionSummary {
            reason: EndReason::Quit,
            messages: 1
        }
    );
    assert_eq!(s.messages().len(), 2);
}

#[tokio::test]
async fn aborting_mid_data_stores_nothing() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    hello(&mut c).await;
    c.start_data().await;
    c.send("partial\r\n").await;
    s.phases.advance(Phase::Aborting);
    assert_eq!(task.await.unwrap().reason, EndReason::Aborted);
    assert!(s.messages().is_empty());
    assert_eq!(s.tmp_files(), 0);
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_data_leaves_nothing() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    hello(&mut c).await;
    c.start_data().await;
    c.send("partial\r\n").await;
    drop(c);
    assert_eq!(task.await.unwrap().reason, EndReason::ClientClosed);
    assert!(s.messages().is_empty());
    assert_eq!(s.tmp_files(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_client_gets_421_after_the_timeout() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx().idle_timeout(Duration::from_secs(30)));
    hello(&mut c).await;
    // Paused time advances by itself while everything waits.
    c.expect("421 4.4.2").await;
    assert!(c.eof().await);
    assert_eq!(task.await.unwrap().reason, EndReason::IdleTimeout);
}

#[tokio::test]
async fn serves_a_real_tcp_connection() {
    let s = Setup::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ctx = Arc::new(s.ctx());
    let handle = s.phases.handle();
    let server = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        serve_smtp(stream, peer.to_string(), handle, ctx).await
    });
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = Client {
        io: BufReader::new(stream),
    };
    hello(&mut c).await;
    c.start_data().await;
    c.send("over tcp\r\n.\r\nQUIT\r\n").await;
    c.expect("250").await;
    c.expect("221").await;
    assert!(c.eof().await);
    assert_eq!(server.await.unwrap().messages, 1);
    assert_eq!(body_of(&s.messages()[0]), b"over tcp\r\n");
}

mod adversarial;
mod deadlines;
mod starttls;
mod storage;
mod streaming;

#[tokio::test]
async fn a_new_transaction_late_in_an_upgrade_drain_gets_421() {
    let s = Setup::new();
    // The drain began longer ago than the window: a session that was idle
    // between transactions is sent to the new generation, not let start a
    // message the abort could cut off.
    let late_drain = crate::smtp::session::UPGRADE_NEW_MAIL_WINDOW * 2;
    let ctx = s
        .ctx()
        .upgrade_drain(crate::upgrade::UpgradeDrain::upgrading_for(late_drain));
    let (mut c, task) = s.start(ctx);
    hello(&mut c).await;
    s.phases.advance(Phase::Draining);
    c.send("NOOP\r\nMAIL FROM:<a@x>\r\n").await;
    c.expect("250").await;
    c.expect("421 4.3.2 shutting down").await;
    assert!(c.eof().await);
    assert_eq!(task.await.unwrap().reason, EndReason::Draining);
    assert!(s.messages().is_empty());
}
