//! `hold`: silent connections kept open and used on command.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::{say, READ_TIMEOUT};

/// Silent connections kept open on command of the test.
struct Holder {
    conns: Vec<Option<TcpStream>>,
    greeted: Vec<usize>,
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
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
            "busy" => {
                let (busy, closed, greeted, silent) = holder.take_busy(Duration::from_millis(arg));
                say(&format!(
                    "busy busy={busy} closed={closed} greeted={greeted} silent={silent}"
                ));
            }
            "speak" => {
                let (answered, failed) = holder.speak();
                say(&format!("speak answered={answered} failed={failed}"));
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
            "close-times" => {
                let times = holder.close_times(Duration::from_millis(arg));
                let open = times.iter().filter(|t| t.is_none()).count();
                let ms: Vec<String> = times.iter().flatten().map(u128::to_string).collect();
                say(&format!(
                    "close-times closed={} open={open} ms={}",
                    ms.len(),
                    ms.join(",")
                ));
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

    /// Waits up to `limit` until every connection has its first line;
    /// takes out the busy ones (`421 `), each read to its end (the server
    /// must close it). Returns (busy, busy closed by the server, greeted
    /// with `220 `, still silent).
    fn take_busy(&mut self, limit: Duration) -> (usize, usize, usize, usize) {
        let deadline = Instant::now() + limit;
        let (mut busy, mut closed) = (0, 0);
        loop {
            let mut greeted = 0;
            let mut silent = 0;
            let mut buf = [0u8; 4];
            for c in self.conns.iter_mut() {
                let Some(s) = c else { continue };
                let _ = s.set_nonblocking(true);
                let peeked = s.peek(&mut buf);
                let _ = s.set_nonblocking(false);
                match peeked {
                    Ok(4) if &buf == b"421 " => {
                        busy += 1;
                        let _ = s.set_read_timeout(Some(READ_TIMEOUT));
                        let mut rest = Vec::new();
                        if (&*s).read_to_end(&mut rest).is_ok() {
                            closed += 1;
                        }
                        *c = None;
                    }
                    Ok(4) if &buf == b"220 " => greeted += 1,
                    _ => silent += 1,
                }
            }
            if silent == 0 || Instant::now() >= deadline {
                return (busy, closed, greeted, silent);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// On every held connection: read its greeting and send one NOOP in
    /// its protocol (`220 ` → SMTP `NOOP`, `* OK` → IMAP `h NOOP`), then
    /// read the reply (`250 ` / `h OK`). Returns (answered, failed).
    fn speak(&mut self) -> (usize, usize) {
        let (mut answered, mut failed) = (0, 0);
        for s in self.conns.iter().flatten() {
            let ok = (|| -> io::Result<bool> {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(READ_TIMEOUT))?;
                let mut r = BufReader::new(s.try_clone()?);
                let mut greeting = String::new();
                r.read_line(&mut greeting)?;
                let (command, expected): (&[u8], &str) = if greeting.starts_with("220 ") {
                    (b"NOOP\r\n", "250 ")
                } else if greeting.starts_with("* OK") {
                    (b"h NOOP\r\n", "h OK")
                } else {
                    return Ok(false);
                };
                (&*s).write_all(command)?;
                let mut reply = String::new();
                r.read_line(&mut reply)?;
                Ok(reply.starts_with(expected))
            })();
            if ok.unwrap_or(false) {
                answered += 1;
            } else {
                failed += 1;
            }
        }
        (answered, failed)
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

    /// Like [`peer_closed`](Self::peer_closed), but notes when each
    /// connection was closed (ms since the command, within 10 ms); `None`
    /// for one still open after `limit`. Pending input (a greeting, a
    /// goodbye) is read and dropped.
    fn close_times(&mut self, limit: Duration) -> Vec<Option<u128>> {
        let start = Instant::now();
        let deadline = start + limit;
        let mut times: Vec<Option<u128>> = vec![None; self.conns.len()];
        let mut buf = [0u8; 4096];
        for s in self.conns.iter().flatten() {
            let _ = s.set_nonblocking(true);
        }
        loop {
            for (i, c) in self.conns.iter().enumerate() {
                let Some(s) = c else { continue };
                if times[i].is_some() {
                    continue;
                }
                loop {
                    match (&*s).read(&mut buf) {
                        Ok(0) => {
                            times[i] = Some(start.elapsed().as_millis());
                            break;
                        }
                        Ok(_) => continue,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            times[i] = Some(start.elapsed().as_millis());
                            break;
                        }
                    }
                }
            }
            let open = self
                .conns
                .iter()
                .zip(&times)
                .filter(|(c, t)| c.is_some() && t.is_none())
                .count();
            if open == 0 || Instant::now() >= deadline {
                return times;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
