//! `data`: many SMTP sessions in DATA at the same time, for the memory test.
//!
//! ```text
//! reliability-client data SMTP_ADDR N SIZE
//! ```
//!
//! Opens N sessions, each on its own thread, and sends each a message of
//! SIZE bytes ([`lifecycle_tests::message_lines`] tagged `m<i>`) without the
//! final dot. Prints `mid sent=S failed=F` once every session has sent its
//! body (or failed), then waits for `finish` on stdin: every session sends
//! the final dot and reads the reply, printing `queued I ID` (250) or
//! `failed I WHY`; the last line is `result acked=A failed=F`.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc, RwLock};
use std::time::Duration;

use crate::{parse, say};

/// A reply after the final dot includes fsyncs of every message at once.
const FINAL_TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let addr: SocketAddr = parse(args, 0, "SMTP address")?;
    let n: usize = parse(args, 1, "sessions")?;
    let size: usize = parse(args, 2, "message size")?;
    // Held for writing until `finish`: the sessions wait on it for reading.
    let gate = Arc::new(RwLock::new(()));
    let hold = gate.write().map_err(|_| "poisoned gate")?;
    let (sent_tx, sent_rx) = mpsc::channel::<bool>();
    let (done_tx, done_rx) = mpsc::channel::<String>();
    let mut threads = Vec::with_capacity(n);
    for i in 0..n {
        let gate = Arc::clone(&gate);
        let sent_tx = sent_tx.clone();
        let done_tx = done_tx.clone();
        threads.push(std::thread::spawn(move || {
            let outcome = match send_body(addr, i, size) {
                Ok(c) => {
                    let _ = sent_tx.send(true);
                    drop(gate.read());
                    finish(c, i)
                }
                Err(e) => {
                    let _ = sent_tx.send(false);
                    Err(e)
                }
            };
            let line = match outcome {
                Ok(id) => format!("queued {i} {id}"),
                Err(e) => format!("failed {i} {}", e.replace(char::is_whitespace, "_")),
            };
            let _ = done_tx.send(line);
        }));
    }
    drop((sent_tx, done_tx));
    let mut sent = 0;
    let mut failed = 0;
    for ok in sent_rx.iter().take(n) {
        if ok {
            sent += 1;
        } else {
            failed += 1;
        }
    }
    say(&format!("mid sent={sent} failed={failed}"));
    for line in io::stdin().lock().lines() {
        if line.map_err(|e| e.to_string())?.trim() == "finish" {
            break;
        }
    }
    drop(hold);
    let (mut acked, mut failed) = (0, 0);
    for line in done_rx.iter() {
        if line.starts_with("queued ") {
            acked += 1;
        } else {
            failed += 1;
        }
        say(&line);
    }
    for t in threads {
        let _ = t.join();
    }
    say(&format!("result acked={acked} failed={failed}"));
    Ok(())
}

struct Session {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Session {
    fn reply(&mut self) -> Result<String, String> {
        lifecycle_tests::read_reply(&mut self.reader).map_err(|e| e.to_string())
    }

    fn command(&mut self, command: &str, code: &str) -> Result<(), String> {
        self.writer
            .write_all(format!("{command}\r\n").as_bytes())
            .map_err(|e| format!("{command}: {e}"))?;
        let reply = self.reply()?;
        if reply.starts_with(code) {
            Ok(())
        } else {
            Err(format!("{command}: {reply:?}"))
        }
    }
}

/// Connects, starts DATA and sends the body, streamed in 64 KiB writes.
fn send_body(addr: SocketAddr, i: usize, size: usize) -> Result<Session, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(crate::READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut c = Session {
        writer: s.try_clone().map_err(|e| e.to_string())?,
        reader: BufReader::new(s),
    };
    let greeting = c.reply()?;
    if !greeting.starts_with("220 ") {
        return Err(format!("greeting {greeting:?}"));
    }
    c.command("EHLO memory.test", "250")?;
    c.command("MAIL FROM:<sender@test>", "250 ")?;
    c.command("RCPT TO:<rcpt@test>", "250 ")?;
    c.command("DATA", "354 ")?;
    let mut chunk = Vec::with_capacity(64 * 1024);
    for line in lifecycle_tests::message_lines(&format!("m{i}"), size) {
        chunk.extend_from_slice(&line);
        if chunk.len() >= 64 * 1024 - lifecycle_tests::MESSAGE_LINE_LEN {
            c.writer
                .write_all(&chunk)
                .map_err(|e| format!("body: {e}"))?;
            chunk.clear();
        }
    }
    c.writer
        .write_all(&chunk)
        .map_err(|e| format!("body: {e}"))?;
    Ok(c)
}

/// Sends the final dot; returns the queued id.
fn finish(mut c: Session, i: usize) -> Result<String, String> {
    c.reader
        .get_ref()
        .set_read_timeout(Some(FINAL_TIMEOUT))
        .map_err(|e| e.to_string())?;
    c.writer
        .write_all(b".\r\nQUIT\r\n")
        .map_err(|e| format!("final dot of {i}: {e}"))?;
    let reply = c.reply()?;
    let id = reply
        .strip_prefix("250 ")
        .and_then(|r| r.split("queued as ").nth(1))
        .map(|id| id.trim().to_owned())
        .ok_or_else(|| format!("final dot: {reply:?}"))?;
    Ok(id)
}
