//! The SMTP session: reads commands, answers them, and holds the state of
//! the mail transaction.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_lifecycle::ShutdownHandle;
use slog::{error, info, Logger};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::{BodySink, Rejected};
use super::command::{parse, Command, ParseError, MAX_COMMAND_LINE};
use super::{SmtpContext, SmtpTls};
use crate::session::{Cut, EndReason};
use crate::tls::Upgradable;
use crate::wire::Wire;

/// How far into an upgrade drain a session may still start its one more
/// transaction (a client accepted just before the listeners stopped sends
/// its `MAIL` within milliseconds); a later `MAIL` gets 421.
pub(crate) const UPGRADE_NEW_MAIL_WINDOW: Duration = Duration::from_secs(1);

/// After this many errors the session is closed (421).
const MAX_ERRORS: u32 = 20;
/// Longest message line, including CRLF (RFC 5321 §4.5.3.1.6).
const MAX_DATA_LINE: usize = 1000;

type Step = Result<(), EndReason>;

pub(super) struct Session<S> {
    wire: Wire<Upgradable<S>>,
    ctx: Arc<SmtpContext>,
    shutdown: ShutdownHandle,
    pub(super) log: Logger,
    helo: Option<String>,
    from: Option<String>,
    rcpts: Vec<String>,
    errors: u32,
    pub(super) messages: u32,
    /// TLS runs on the connection (implicit, or after STARTTLS).
    tls_active: bool,
    /// In an upgrade drain: the message count at which the next `MAIL` is
    /// refused (set when the session first sees the drain).
    drain_limit: Option<u32>,
    /// The client's address, for the `Received:` line.
    client: Option<IpAddr>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) fn new(
        io: Upgradable<S>,
        shutdown: ShutdownHandle,
        ctx: Arc<SmtpContext>,
        log: Logger,
    ) -> Self {
        let mut wire = Wire::new(io, shutdown.abort_token(), ctx.idle_timeout);
        wire.limit_session(ctx.max_session);
        Session {
            wire,
            shutdown,
            log,
            helo: None,
            from: None,
            rcpts: Vec::new(),
            errors: 0,
            messages: 0,
            tls_active: matches!(ctx.tls, SmtpTls::Implicit),
            drain_limit: None,
            client: None,
            ctx,
        }
    }

    /// The client's address, named in each message's `Received:` line.
    pub(super) fn set_client(&mut self, client: Option<IpAddr>) {
        self.client = client;
    }

    pub(super) fn ctx(&self) -> &SmtpContext {
        &self.ctx
    }

    pub(super) async fn run(&mut self) -> EndReason {
        let end = self.converse().await;
        let why = match &end {
            EndReason::IdleTimeout => Some("idle timeout".to_owned()),
            EndReason::Cut(Cut::DataDeadline) => Some(format!(
                "data deadline of {} exceeded",
                humantime::format_duration(self.ctx.data_limits.deadline)
            )),
            EndReason::Cut(Cut::MinDataRate) => Some(format!(
                "data rate below {} octets per second",
                self.ctx.data_limits.min_rate
            )),
            EndReason::Cut(_) => Some("session lifetime exceeded".to_owned()),
            _ => None,
        };
        if let Some(why) = why {
            let text = format!("4.4.2 {} {why}, closing connection", self.ctx.hostname);
            self.reply(421, &text);
        }
        self.wire.finish(&end).await;
        end
    }

    async fn converse(&mut self) -> EndReason {
        if self.shutdown.is_draining() && !self.ctx.upgrade_drain.is_upgrade() {
            self.reply(421, "4.3.2 shutting down");
            return EndReason::Draining;
        }
        let greeting = format!("{} ESMTP lifecycle-gateway ready", self.ctx.hostname);
        self.reply(220, &greeting);
        loop {
            let line = match self.wire.line(MAX_COMMAND_LINE).await {
                Ok(line) => line,
                Err(end) => return end,
            };
            let step = match line {
                None => self.error(
                    500,
                    "5.5.2 line too long (limit 1000 octets including CRLF)",
                ),
                Some(line) => match parse(&line) {
                    Ok(Command::Quit) => {
                        let text = format!("2.0.0 {} closing connection", self.ctx.hostname);
                        self.reply(221, &text);
                        Err(EndReason::Quit)
                    }
                    parsed if self.refused_while_draining(parsed.as_ref().ok()) => {
                        self.reply(421, "4.3.2 shutting down");
                        Err(EndReason::Draining)
                    }
                    Ok(cmd) => self.handle(cmd).await,
                    Err(ParseError::Unknown) => self.error(500, "5.5.1 command not recognized"),
                    Err(ParseError::Syntax(why)) => {
                        self.error(501, &format!("5.5.4 syntax error: {why}"))
                    }
                    Err(ParseError::Parameter(p)) => {
                        self.error(555, &format!("5.5.4 parameter {p} not supported"))
                    }
                },
            };
            if let Err(end) = step {
                return end;
            }
            if let Err(end) = self.wire.flush_if_full().await {
                return end;
            }
        }
    }

    /// Whether the drain refuses this command (`None`: it did not parse).
    /// A stop refuses everything but QUIT; an upgrade drain refuses only a
    /// `MAIL` after the session's one more transaction, or one that starts
    /// later than [`UPGRADE_NEW_MAIL_WINDOW`] into the drain (it could be
    /// cut off by the abort; a clean 421 sends it to the new generation).
    fn refused_while_draining(&mut self, cmd: Option<&Command>) -> bool {
        if !self.shutdown.is_draining() {
            return false;
        }
        if !self.ctx.upgrade_drain.is_upgrade() {
            return true;
        }
        let limit = *self.drain_limit.get_or_insert(self.messages + 1);
        let late =
            (self.ctx.upgrade_drain.upgrade_age()).is_some_and(|age| age > UPGRADE_NEW_MAIL_WINDOW);
        matches!(cmd, Some(Command::Mail { .. })) && (self.messages >= limit || late)
    }

    async fn handle(&mut self, cmd: Command) -> Step {
        match cmd {
            Command::Ehlo(domain) => {
                self.reset();
                let mut lines = vec![
                    format!("{} greets {domain}", self.ctx.hostname),
                    "PIPELINING".to_owned(),
                    format!("SIZE {}", self.ctx.max_message_size),
                    "8BITMIME".to_owned(),
                    "ENHANCEDSTATUSCODES".to_owned(),
                ];
                if self.offers_starttls() {
                    lines.push("STARTTLS".to_owned());
                }
                self.reply_lines(250, &lines);
                self.helo = Some(domain);
            }
            Command::Helo(domain) => {
                self.reset();
                let text = self.ctx.hostname.clone();
                self.reply(250, &text);
                self.helo = Some(domain);
            }
            Command::Mail { from, size } => {
                if self.helo.is_none() {
                    return self.error(503, "5.5.1 send EHLO or HELO first");
                }
                if self.from.is_some() {
                    return self.error(503, "5.5.1 sender already given; send RSET to start over");
                }
                if size.is_some_and(|s| s > self.ctx.max_message_size as u64) {
                    let text = format!(
                        "5.3.4 message size exceeds the limit of {} octets",
                        self.ctx.max_message_size
                    );
                    self.reply(552, &text);
                    return Ok(());
                }
                self.from = Some(from);
                self.reply(250, "2.1.0 sender ok");
            }
            Command::Rcpt(to) => {
                if self.from.is_none() {
                    return self.error(503, "5.5.1 send MAIL FROM first");
                }
                if self.rcpts.len() >= self.ctx.max_recipients {
                    let text = format!(
                        "4.5.3 too many recipients (limit {})",
                        self.ctx.max_recipients
                    );
                    self.reply(452, &text);
                    return Ok(());
                }
                self.rcpts.push(to);
                self.reply(250, "2.1.5 recipient ok");
            }
            Command::Data => {
                if self.from.is_none() {
                    return self.error(503, "5.5.1 send MAIL FROM first");
                }
                if self.rcpts.is_empty() {
                    return self.error(503, "5.5.1 no valid recipients; send RCPT TO first");
                }
                // Boxed, like STARTTLS: the transfer's state (the sink, the
                // spool file) exists only while it runs, not in the future
                // every idle session holds.
                return Box::pin(self.data()).await;
            }
            Command::Rset => {
                self.reset();
                self.reply(250, "2.0.0 ok");
            }
            Command::Noop => self.reply(250, "2.0.0 ok"),
            Command::Vrfy => self.reply(
                252,
                "2.5.0 cannot verify the user, but will accept the message",
            ),
            Command::Help => self.reply(
                214,
                "2.0.0 commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
            ),
            Command::Starttls => return Box::pin(self.starttls()).await,
            Command::Quit => {
                // Answered before dispatch; kept for completeness.
                self.reply(221, "2.0.0 bye");
                return Err(EndReason::Quit);
            }
        }
        Ok(())
    }

    fn offers_starttls(&self) -> bool {
        !self.tls_active && matches!(self.ctx.tls, SmtpTls::Starttls(_))
    }

    /// RFC 3207: `220`, the handshake, then a fresh session (the client must
    /// say EHLO again). Refused when TLS already runs, and the connection
    /// is closed when more input follows STARTTLS in the same read: those
    /// bytes arrived in plain text and must not be taken as commands of the
    /// TLS session (the STARTTLS command injection, CVE-2011-0411).
    async fn starttls(&mut self) -> Step {
        if self.tls_active {
            return self.error(503, "5.5.1 TLS is already active");
        }
        let acceptor = match &self.ctx.tls {
            SmtpTls::Starttls(acceptor) => acceptor.clone(),
            _ => return self.error(502, "5.5.1 STARTTLS is not offered on this listener"),
        };
        if self.wire.has_buffered_input() {
            info!(self.log, "refusing STARTTLS followed by pipelined input");
            self.reply(
                554,
                "5.5.0 commands after STARTTLS must wait for the handshake; closing connection",
            );
            return Err(EndReason::PipelinedStarttls);
        }
        self.reply(220, "2.0.0 ready to start TLS");
        self.wire.start_tls(&acceptor).await?;
        self.tls_active = true;
        self.helo = None;
        self.reset();
        if let Some((version, suite)) = self.wire.tls_details() {
            info!(self.log, "tls started"; "version" => version, "cipher" => suite);
        }
        Ok(())
    }

    /// Receives the message after `354`, streaming it to the spool, and
    /// answers. Whatever ends the transfer early (the client, a deadline, an
    /// abort) drops the sink, which removes the temporary file.
    async fn data(&mut self) -> Step {
        self.reply(354, "start mail input; end with <CRLF>.<CRLF>");
        let max = self.ctx.max_message_size;
        let mut sink = BodySink::new(&self.ctx.spool, self.ctx.bare_newlines, max);
        for line in self.envelope_header() {
            sink.push_raw(line.as_bytes()).await;
        }
        self.wire.start_data(self.ctx.data_limits);
        let result = self.receive(&mut sink).await;
        self.wire.end_data();
        result?;
        let recipients = self.rcpts.len();
        self.reset();
        let body_len = sink.received();
        // Aborted until the commit starts: the 250 could not reach the
        // client, which would send the message again; nothing is stored.
        // The commit itself (fsync, rename, directory fsync) is the only
        // window left for such a duplicate.
        let abort = self.wire.abort_token();
        match sink.finish(|| abort.is_cancelled()).await {
            Ok(stored) => {
                self.count("accepted");
                if let Some(m) = &self.ctx.metrics {
                    m.spooled(stored.len);
                }
                self.messages += 1;
                info!(self.log, "message spooled"; "id" => &stored.id, "bytes" => body_len, "recipients" => recipients);
                let text = format!("2.0.0 ok: queued as {}", stored.id);
                self.reply(250, &text);
            }
            Err(Rejected::Aborted) => {
                info!(
                    self.log,
                    "message not stored: the session was aborted before its commit"
                );
                return Err(EndReason::Aborted);
            }
            Err(Rejected::LineTooLong) => {
                self.count("line_too_long");
                return self.error(
                    500,
                    "5.5.2 message has a line longer than 1000 octets including CRLF",
                );
            }
            Err(Rejected::TooBig) => {
                self.count("too_big");
                let text = format!("5.3.4 message exceeds the limit of {max} octets");
                self.reply(552, &text);
            }
            Err(Rejected::BareNewline) => {
                self.count("bare_newline");
                info!(self.log, "message with a bare CR or LF rejected");
                self.reply(
                    550,
                    "5.5.2 message contains a bare CR or LF; end every line with CRLF",
                );
            }
            Err(Rejected::Spool(e)) => {
                self.count("spool_error");
                error!(self.log, "cannot spool message"; "error" => %e);
                let text = if e.is_full() {
                    "4.3.1 insufficient system storage, try again later"
                } else {
                    "4.3.1 cannot store the message now, try again later"
                };
                self.reply(452, text);
            }
        }
        Ok(())
    }

    /// Reads the message up to its final dot into `sink`: dot-unstuffing,
    /// the line length limit, and the end only at `CRLF.CRLF`.
    async fn receive(&mut self, sink: &mut BodySink) -> Step {
        // Position in the message: at the start of a line, and whether the
        // previous line ended with CRLF (only then is "." special).
        let mut line_start = true;
        let mut after_crlf = true;
        let mut line_len = 0usize;
        // The previous piece ended with CR (a CRLF split across pieces).
        let mut prev_cr = false;
        loop {
            let (bytes, complete) = self.wire.segment(MAX_DATA_LINE).await?;
            let special = line_start && after_crlf;
            if special && bytes == b".\r\n" {
                return Ok(());
            }
            let body = if special && bytes.first() == Some(&b'.') {
                &bytes[1..]
            } else {
                bytes
            };
            // The line as the message holds it: a dot added for
            // transparency does not count (RFC 5321 §4.5.3.1.6).
            line_len += body.len();
            let ends_cr = bytes.last() == Some(&b'\r');
            let too_long;
            if complete {
                after_crlf = bytes.ends_with(b"\r\n") || (bytes == b"\n" && prev_cr);
                line_start = true;
                too_long = line_len > MAX_DATA_LINE;
                line_len = 0;
            } else {
                line_start = false;
                // 1000 octets and still no line feed: longer than 998 + CRLF.
                too_long = line_len >= MAX_DATA_LINE;
            }
            prev_cr = ends_cr;
            if too_long {
                sink.line_too_long();
            }
            sink.push(body).await;
        }
    }

    /// The envelope lines written before the message, then the trace line
    /// of RFC 5321 §4.4: `Received: from HELO ([client address]) by HOST
    /// with ESMTP[S]; DATE`.
    fn envelope_header(&self) -> Vec<String> {
        let from = self.from.as_deref().unwrap_or("");
        let helo = self.helo.as_deref().unwrap_or("unknown");
        let tcp_info = match self.client {
            Some(IpAddr::V4(ip)) => format!(" ([{ip}])"),
            Some(IpAddr::V6(ip)) => format!(" ([IPv6:{ip}])"),
            None => String::new(),
        };
        let with = if self.tls_active { "ESMTPS" } else { "ESMTP" };
        let received = format!(
            "Received: from {helo}{tcp_info}\r\n\tby {} with {with}; {}\r\n",
            self.ctx.hostname,
            rfc5322_date(std::time::SystemTime::now())
        );
        std::iter::once(format!("Return-Path: <{from}>\r\n"))
            .chain(self.rcpts.iter().map(|r| format!("Delivered-To: {r}\r\n")))
            .chain(std::iter::once(received))
            .collect()
    }

    fn count(&self, outcome: &str) {
        if let Some(m) = &self.ctx.metrics {
            m.message(outcome);
        }
    }

    fn reset(&mut self) {
        self.from = None;
        self.rcpts.clear();
    }

    fn error(&mut self, code: u16, text: &str) -> Step {
        self.reply(code, text);
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.reply(421, "4.7.0 too many errors, closing connection");
            return Err(EndReason::TooManyErrors);
        }
        Ok(())
    }

    fn reply(&mut self, code: u16, text: &str) {
        self.wire.reply(&format!("{code} {text}"));
    }

    fn reply_lines(&mut self, code: u16, lines: &[String]) {
        let last = lines.len().saturating_sub(1);
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.wire.reply(&format!("{code}{sep}{line}"));
        }
    }
}

/// `time` as an RFC 5322 date in UTC: `Fri, 04 Dec 2026 17:32:37 +0000`.
fn rfc5322_date(time: std::time::SystemTime) -> String {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod date_tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn dates_are_rfc5322() {
        let at = |s| super::rfc5322_date(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(at(1_796_405_557), "Fri, 04 Dec 2026 17:32:37 +0000");
    }
}
