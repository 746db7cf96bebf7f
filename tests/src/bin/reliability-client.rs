//! Load clients for the reliability tests, run as a child process so that
//! their sockets count against their own open-files limit, not the test's.
//!
//! ```text
//! reliability-client churn SMTP_ADDR IMAP_ADDR TOTAL CONCURRENCY
//! reliability-client hold ADDR=N [ADDR=N ...]
//! ```
//!
//! `churn` runs TOTAL short SMTP and IMAP sessions (alternating) on
//! CONCURRENCY threads; every tenth session is reset mid-command with
//! SO_LINGER 0. It prints `half` once half of them ended. A `term` line on
//! stdin marks the moment the test is about to signal the server (answered
//! with `term-ack`): sessions that ended before it must all have gone
//! normally. The last line is `result key=value ...`.
//!
//! `hold` opens N silent connections to each ADDR, prints `held
//! connected=C failed=F`, then obeys stdin commands: `greeted MS`, `probe
//! K`, `deliver K`, `release-except K`, `peer-closed MS`, `exit` (see
//! [`Holder`]).

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Read timeout of every client socket: a reply slower than this is a hang.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    raise_nofile();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("churn") => churn(&args[1..]),
        Some("hold") => hold(&args[1..]),
        _ => Err("usage: reliability-client churn|hold ...".to_owned()),
    };
    if let Err(e) = result {
        eprintln!("reliability-client: {e}");
        std::process::exit(2);
    }
}

/// Soft open-files limit up to the hard limit.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn parse<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("argument {} ({what}) missing or invalid", i + 1))
}

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

// ---------------------------------------------------------------- churn

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
    /// No reply within READ_TIMEOUT.
    Timeout,
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
            Outcome::Timeout => &self.timeout,
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
    before: Tally,
    after: Tally,
    connected: [AtomicU64; 2],
    first_unexpected: Mutex<Option<String>>,
}

fn churn(args: &[String]) -> Result<(), String> {
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
        before: Tally::default(),
        after: Tally::default(),
        connected: [AtomicU64::new(0), AtomicU64::new(0)],
        first_unexpected: Mutex::new(None),
    });
    {
        let state = Arc::clone(&state);
        std::thread::spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if line.trim() == "term" {
                    state.term.store(true, Ordering::SeqCst);
                    say("term-ack");
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
    let first = state
        .first_unexpected
        .lock()
        .map(|f| f.clone().unwrap_or_default())
        .unwrap_or_default();
    say(&format!(
        "result total={} elapsed_ms={} smtp_connected={} imap_connected={} {} {} first_unexpected={:?}",
        total,
        elapsed.as_millis(),
        state.connected[0].load(Ordering::Relaxed),
        state.connected[1].load(Ordering::Relaxed),
        state.before.report("before"),
        state.after.report("after"),
        first,
    ));
    Ok(())
}

fn churn_worker(state: &Churn) {
    loop {
        let i = state.next.fetch_add(1, Ordering::Relaxed);
        if i >= state.total {
            return;
        }
        let outcome = session(state, i);
        if let Outcome::Unexpected(what) = &outcome {
            if let Ok(mut first) = state.first_unexpected.lock() {
                first.get_or_insert_with(|| format!("session {i}: {what}"));
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

/// The classification of an I/O error in mid-session.
fn io_outcome(e: &io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Outcome::Timeout,
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
}

impl Line {
    fn connect(addr: SocketAddr) -> io::Result<Line> {
        let s = TcpStream::connect_timeout(&addr, READ_TIMEOUT)?;
        s.set_read_timeout(Some(READ_TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(Line {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }

    fn send(&mut self, text: &str) -> io::Result<()> {
        self.writer.write_all(text.as_bytes())
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
        let mut all = String::new();
        loop {
            let l = self.line()?;
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok(all);
            }
        }
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
        Err(e) => return io_outcome(&e),
    };
    state.connected[usize::from(!smtp)].fetch_add(1, Ordering::Relaxed);
    let reset = i % 10 == 9;
    let quit = i % 4 < 2;
    let r = if smtp {
        smtp_session(&mut c, i, reset, quit)
    } else {
        imap_session(&mut c, reset, quit)
    };
    match r {
        Ok(Outcome::Reset) => match c.reset() {
            Ok(()) => Outcome::Reset,
            Err(e) => Outcome::Unexpected(format!("cannot set SO_LINGER: {e}")),
        },
        Ok(o) => o,
        Err(e) => io_outcome(&e),
    }
}

fn smtp_session(c: &mut Line, i: usize, reset: bool, quit: bool) -> io::Result<Outcome> {
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
    c.send(&format!("EHLO client{i}.test\r\n"))?;
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

// ----------------------------------------------------------------- hold

/// Silent connections kept open on command of the test.
struct Holder {
    conns: Vec<Option<TcpStream>>,
    greeted: Vec<usize>,
}

fn hold(args: &[String]) -> Result<(), String> {
    let mut targets = Vec::new();
    for a in args {
        let (addr, n) = a
            .split_once('=')
            .ok_or_else(|| format!("`{a}` is not ADDR=N"))?;
        let addr: SocketAddr = addr.parse().map_err(|e| format!("`{addr}`: {e}"))?;
        let n: usize = n.parse().map_err(|e| format!("`{n}`: {e}"))?;
        targets.push((addr, n));
    }
    let mut holder = Holder {
        conns: Vec::new(),
        greeted: Vec::new(),
    };
    let mut failed = 0;
    for (addr, n) in targets {
        for _ in 0..n {
            match TcpStream::connect_timeout(&addr, READ_TIMEOUT) {
                Ok(s) => holder.conns.push(Some(s)),
                Err(_) => failed += 1,
            }
        }
    }
    say(&format!(
        "held connected={} failed={failed}",
        holder.conns.len()
    ));
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or("");
        let arg: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        match command {
            "greeted" => {
                std::thread::sleep(Duration::from_millis(arg));
                holder.find_greeted();
                say(&format!("greeted {}", holder.greeted.len()));
            }
            "probe" => {
                let ok = holder.probe(usize::try_from(arg).unwrap_or(0));
                say(&format!("probe ok={ok}"));
            }
            "deliver" => {
                let replies = holder.deliver(usize::try_from(arg).unwrap_or(0));
                say(&format!("deliver {}", replies.join(" | ")));
            }
            "release-except" => {
                let released = holder.release_except(usize::try_from(arg).unwrap_or(0));
                say(&format!("released {released}"));
            }
            "peer-closed" => {
                let (closed, open) = holder.peer_closed(Duration::from_millis(arg));
                say(&format!("peer-closed closed={closed} open={open}"));
            }
            "exit" => break,
            other => say(&format!("error unknown command {other:?}")),
        }
    }
    Ok(())
}

impl Holder {
    /// Which connections have a greeting waiting to be read.
    fn find_greeted(&mut self) {
        self.greeted.clear();
        let mut buf = [0u8; 1];
        for (i, c) in self.conns.iter().enumerate() {
            let Some(s) = c else { continue };
            if s.set_nonblocking(true).is_ok() {
                if let Ok(1) = s.peek(&mut buf) {
                    self.greeted.push(i);
                }
                let _ = s.set_nonblocking(false);
            }
        }
    }

    /// On the first `k` greeted (SMTP) connections: read the greeting,
    /// send NOOP, expect 250. Returns how many answered.
    fn probe(&mut self, k: usize) -> usize {
        let mut ok = 0;
        for &i in self.greeted.iter().take(k) {
            let Some(Some(s)) = self.conns.get(i) else {
                continue;
            };
            let answered = (|| -> io::Result<bool> {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(READ_TIMEOUT))?;
                let mut r = BufReader::new(s.try_clone()?);
                let mut greeting = String::new();
                r.read_line(&mut greeting)?;
                (&*s).write_all(b"NOOP\r\n")?;
                let mut reply = String::new();
                r.read_line(&mut reply)?;
                Ok(greeting.starts_with("220 ") && reply.starts_with("250 "))
            })();
            if answered.unwrap_or(false) {
                ok += 1;
            }
        }
        ok
    }

    /// On the first `k` greeted connections (after `probe`): one whole
    /// transaction each. Returns the reply to the final dot of each.
    fn deliver(&mut self, k: usize) -> Vec<String> {
        let mut replies = Vec::new();
        for &i in self.greeted.iter().take(k) {
            let Some(Some(s)) = self.conns.get(i) else {
                continue;
            };
            let reply = (|| -> io::Result<String> {
                let mut r = BufReader::new(s.try_clone()?);
                let mut w = s;
                let mut last = String::new();
                for command in [
                    "HELO holder.test\r\n",
                    "MAIL FROM:<holder@test>\r\n",
                    "RCPT TO:<rcpt@test>\r\n",
                    "DATA\r\n",
                    "Subject: stored under exhaustion?\r\n\r\nbody\r\n.\r\n",
                ] {
                    w.write_all(command.as_bytes())?;
                    last.clear();
                    r.read_line(&mut last)?;
                }
                Ok(last.trim_end().to_owned())
            })();
            replies.push(reply.unwrap_or_else(|e| format!("error: {e}")));
        }
        replies
    }

    /// Closes every connection but the first `k` greeted ones.
    fn release_except(&mut self, k: usize) -> usize {
        let keep: Vec<usize> = self.greeted.iter().take(k).copied().collect();
        let mut released = 0;
        for (i, c) in self.conns.iter_mut().enumerate() {
            if !keep.contains(&i) && c.take().is_some() {
                released += 1;
            }
        }
        self.greeted = keep;
        released
    }

    /// Waits up to `limit` until every held connection was closed by the
    /// peer (end of input or reset). Returns (closed, still open).
    fn peer_closed(&mut self, limit: Duration) -> (usize, usize) {
        let deadline = Instant::now() + limit;
        let mut closed = vec![false; self.conns.len()];
        let mut buf = [0u8; 4096];
        loop {
            for (i, c) in self.conns.iter().enumerate() {
                let Some(s) = c else {
                    closed[i] = true;
                    continue;
                };
                if closed[i] || s.set_nonblocking(true).is_err() {
                    continue;
                }
                loop {
                    match (&*s).read(&mut buf) {
                        Ok(0) => {
                            closed[i] = true;
                            break;
                        }
                        Ok(_) => continue,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            closed[i] = true;
                            break;
                        }
                    }
                }
            }
            let n = closed.iter().filter(|c| **c).count();
            if n == closed.len() || Instant::now() >= deadline {
                return (n, closed.len() - n);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
