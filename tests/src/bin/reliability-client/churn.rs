//! `churn`: many short SMTP and IMAP sessions, every tenth reset.
//!
//! Commands on stdin: `term` (the test is about to send SIGTERM; answered
//! `term-ack`) and `exited` (the server has exited: sessions not yet
//! started are skipped, because a connect to the freed port tests the
//! kernel, not the server, and can reach whatever bound that port since).

use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{parse, say, READ_TIMEOUT};

#[derive(Debug)]
enum Outcome {
    /// The session went as planned (including its goodbye).
    Ok,
    /// The planned reset (SO_LINGER 0) was done.
    Reset,
    /// The server said 421 / BYE: it is shutting down.
    Draining,
    /// The connection was refused.
    Refused,
    /// The connection ended without a goodbye (EOF, reset by the server).
    Cut,
    /// No reply within READ_TIMEOUT; what was waited for, and where.
    Timeout(String),
    /// Anything else, with what was seen.
    Unexpected(String),
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    reset: AtomicU64,
    draining: AtomicU64,
    refused: AtomicU64,
    cut: AtomicU64,
    timeout: AtomicU64,
    unexpected: AtomicU64,
}

impl Tally {
    fn add(&self, o: &Outcome) {
        let c = match o {
            Outcome::Ok => &self.ok,
            Outcome::Reset => &self.reset,
            Outcome::Draining => &self.draining,
            Outcome::Refused => &self.refused,
            Outcome::Cut => &self.cut,
            Outcome::Timeout(_) => &self.timeout,
            Outcome::Unexpected(_) => &self.unexpected,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn report(&self, prefix: &str) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{prefix}_ok={} {prefix}_reset={} {prefix}_draining={} {prefix}_refused={} \
             {prefix}_cut={} {prefix}_timeout={} {prefix}_unexpected={}",
            g(&self.ok),
            g(&self.reset),
            g(&self.draining),
            g(&self.refused),
            g(&self.cut),
            g(&self.timeout),
            g(&self.unexpected)
        )
    }
}

struct Churn {
    smtp: SocketAddr,
    imap: SocketAddr,
    total: usize,
    next: AtomicUsize,
    ended: AtomicUsize,
    term: AtomicBool,
    /// The test saw the server exit: start no more sessions.
    exited: AtomicBool,
    /// Sessions not started because the server had exited.
    skipped: AtomicU64,
    /// When the test announced the signal.
    term_at: Mutex<Option<Instant>>,
    before: Tally,
    after: Tally,
    connected: [AtomicU64; 2],
    first_unexpected: Mutex<Option<String>>,
    first_timeout: Mutex<Option<String>>,
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let smtp: SocketAddr = parse(args, 0, "SMTP address")?;
    let imap: SocketAddr = parse(args, 1, "IMAP address")?;
    let total: usize = parse(args, 2, "total sessions")?;
    let concurrency: usize = parse(args, 3, "concurrency")?;
    let state = Arc::new(Churn {
        smtp,
        imap,
        total,
        next: AtomicUsize::new(0),
        ended: AtomicUsize::new(0),
        term: AtomicBool::new(false),
        exited: AtomicBool::new(false),
        skipped: AtomicU64::new(0),
        term_at: Mutex::new(None),
        before: Tally::default(),
        after: Tally::default(),
        connected: [AtomicU64::new(0), AtomicU64::new(0)],
        first_unexpected: Mutex::new(None),
        first_timeout: Mutex::new(None),
    });
    {
        let state = Arc::clone(&state);
        std::thread::spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match line.trim() {
                    "term" => {
                        if let Ok(mut at) = state.term_at.lock() {
                            *at = Some(Instant::now());
                        }
                        state.term.store(true, Ordering::SeqCst);
                        say("term-ack");
                    }
                    "exited" => state.exited.store(true, Ordering::SeqCst),
                    _ => {}
                }
            }
        });
    }
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let state = Arc::clone(&state);
            std::thread::spawn(move || churn_worker(&state))
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let elapsed = start.elapsed();
    let first = |f: &Mutex<Option<String>>| {
        f.lock()
            .map(|f| f.clone().unwrap_or_default())
            .unwrap_or_default()
    };
    say(&format!(
        "result total={} elapsed_ms={} smtp_connected={} imap_connected={} skipped={} {} {} \
         first_unexpected={:?} first_timeout={:?}",
        total,
        elapsed.as_millis(),
        state.connected[0].load(Ordering::Relaxed),
        state.connected[1].load(Ordering::Relaxed),
        state.skipped.load(Ordering::Relaxed),
        state.before.report("before"),
        state.after.report("after"),
        first(&state.first_unexpected),
        first(&state.first_timeout),
    ));
    Ok(())
}

fn churn_worker(state: &Churn) {
    loop {
        let i = state.next.fetch_add(1, Ordering::Relaxed);
        if i >= state.total {
            return;
        }
        if state.exited.load(Ordering::SeqCst) {
            state.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let outcome = session(state, i);
        let first = match &outcome {
            Outcome::Unexpected(what) => Some((&state.first_unexpected, what)),
            Outcome::Timeout(what) => Some((&state.first_timeout, what)),
            _ => None,
        };
        if let Some((slot, what)) = first {
            let since_term = state.term_at.lock().ok().and_then(|at| *at).map_or_else(
                || "before the signal".to_owned(),
                |at| format!("{:?} after the signal", at.elapsed()),
            );
            if let Ok(mut first) = slot.lock() {
                first.get_or_insert_with(|| format!("session {i}: {what} (ended {since_term})"));
            }
        }
        // Read after the session ended: `false` means it ended before the
        // test announced the signal.
        if state.term.load(Ordering::SeqCst) {
            state.after.add(&outcome);
        } else {
            state.before.add(&outcome);
        }
        let ended = state.ended.fetch_add(1, Ordering::SeqCst) + 1;
        if ended == state.total / 2 {
            say("half");
        }
    }
}

/// The classification of an I/O error in mid-session; `at` says where it
/// happened (kept for a timeout).
fn io_outcome(e: &io::Error, at: impl FnOnce() -> String) -> Outcome {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Outcome::Timeout(at()),
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::UnexpectedEof => Outcome::Cut,
        ErrorKind::ConnectionRefused => Outcome::Refused,
        _ => Outcome::Unexpected(format!("i/o error: {e}")),
    }
}

struct Line {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// Where the session stood: the last command sent, if any.
    last_sent: &'static str,
}

impl Line {
    fn connect(addr: SocketAddr) -> io::Result<Line> {
        let s = TcpStream::connect_timeout(&addr, READ_TIMEOUT)?;
        // Once the server has exited, its port is closed; a connect to a
        // closed loopback port in the ephemeral range can pick that very
        // port as its source and "succeed" by TCP simultaneous open, talking
        // to itself (about once in 28,000 tries; these runs make 50,000).
        // For the server that is a refused connection.
        if s.local_addr()? == s.peer_addr()? {
            return Err(io::Error::new(
                ErrorKind::ConnectionRefused,
                "connected to itself: the port is closed",
            ));
        }
        s.set_read_timeout(Some(READ_TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(Line {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
            last_sent: "",
        })
    }

    fn send(&mut self, text: &'static str) -> io::Result<()> {
        self.last_sent = text;
        self.writer.write_all(text.as_bytes())
    }

    /// Where the session stands, for a timeout report: addresses, and
    /// what was sent last.
    fn position(&self) -> String {
        let local = self.writer.local_addr().map(|a| a.to_string());
        let peer = self.writer.peer_addr().map(|a| a.to_string());
        format!(
            "{} -> {}, waiting after {:?}",
            local.unwrap_or_else(|e| e.to_string()),
            peer.unwrap_or_else(|e| e.to_string()),
            if self.last_sent.is_empty() {
                "connect (greeting)"
            } else {
                self.last_sent.trim_end()
            },
        )
    }

    /// One line; end of input is `UnexpectedEof`.
    fn line(&mut self) -> io::Result<String> {
        let mut l = String::new();
        if self.reader.read_line(&mut l)? == 0 {
            return Err(io::Error::from(ErrorKind::UnexpectedEof));
        }
        Ok(l)
    }

    /// A whole SMTP reply (continuation lines joined).
    fn reply(&mut self) -> io::Result<String> {
        lifecycle_tests::read_reply(&mut self.reader)
    }

    /// Resets the connection: SO_LINGER 0, then close.
    fn reset(self) -> io::Result<()> {
        socket2::SockRef::from(&self.writer).set_linger(Some(Duration::ZERO))?;
        Ok(())
    }
}

fn session(state: &Churn, i: usize) -> Outcome {
    let smtp = i % 2 == 0;
    let addr = if smtp { state.smtp } else { state.imap };
    let mut c = match Line::connect(addr) {
        Ok(c) => c,
        Err(e) => return io_outcome(&e, || format!("connect to {addr}")),
    };
    state.connected[usize::from(!smtp)].fetch_add(1, Ordering::Relaxed);
    let reset = i % 10 == 9;
    let quit = i % 4 < 2;
    let r = if smtp {
        smtp_session(&mut c, reset, quit)
    } else {
        imap_session(&mut c, reset, quit)
    };
    match r {
        Ok(Outcome::Reset) => match c.reset() {
            Ok(()) => Outcome::Reset,
            Err(e) => Outcome::Unexpected(format!("cannot set SO_LINGER: {e}")),
        },
        Ok(o) => o,
        Err(e) => io_outcome(&e, || c.position()),
    }
}

fn smtp_session(c: &mut Line, reset: bool, quit: bool) -> io::Result<Outcome> {
    let expect = |reply: &str, code: &str| -> Option<Outcome> {
        if reply.starts_with(code) {
            None
        } else if reply.starts_with("421") {
            Some(Outcome::Draining)
        } else {
            Some(Outcome::Unexpected(format!("wanted {code}, got {reply:?}")))
        }
    };
    let greeting = c.reply()?;
    if let Some(o) = expect(&greeting, "220 ") {
        return Ok(o);
    }
    if reset {
        c.send("EHLO half-a-comm")?;
        return Ok(Outcome::Reset);
    }
    c.send("EHLO client.test\r\n")?;
    if let Some(o) = expect(&c.reply()?, "250") {
        return Ok(o);
    }
    c.send("NOOP\r\n")?;
    if let Some(o) = expect(&c.reply()?, "250 ") {
        return Ok(o);
    }
    if quit {
        c.send("QUIT\r\n")?;
        if let Some(o) = expect(&c.reply()?, "221 ") {
            return Ok(o);
        }
    }
    Ok(Outcome::Ok)
}

fn imap_session(c: &mut Line, reset: bool, quit: bool) -> io::Result<Outcome> {
    let bye = |l: &str| l.starts_with("* BYE shutting down");
    let greeting = c.line()?;
    if bye(&greeting) {
        return Ok(Outcome::Draining);
    }
    if !greeting.starts_with("* OK") {
        return Ok(Outcome::Unexpected(format!("greeting {greeting:?}")));
    }
    if reset {
        c.send("a1 CAPA")?;
        return Ok(Outcome::Reset);
    }
    let steps: &[(&str, &[&str])] = if quit {
        &[
            ("a1 CAPABILITY\r\n", &["* CAPABILITY", "a1 OK"]),
            ("a2 NOOP\r\n", &["a2 OK"]),
            ("a3 LOGOUT\r\n", &["* BYE logging out", "a3 OK"]),
        ]
    } else {
        &[
            ("a1 CAPABILITY\r\n", &["* CAPABILITY", "a1 OK"]),
            ("a2 NOOP\r\n", &["a2 OK"]),
        ]
    };
    for (command, replies) in steps {
        c.send(command)?;
        for want in *replies {
            let l = c.line()?;
            if bye(&l) {
                return Ok(Outcome::Draining);
            }
            if !l.starts_with(want) {
                return Ok(Outcome::Unexpected(format!("wanted {want}, got {l:?}")));
            }
        }
    }
    Ok(Outcome::Ok)
}
