//! The load client, in its own process.
//!
//! The bench re-executes itself with [`ROLE_VAR`] set; that child reads one
//! command per line on stdin and answers one line per result on stdout. It
//! runs its sockets on a 2-thread tokio runtime, so the server process
//! keeps its file descriptors (and its open-files limit) to itself.
//!
//! Commands and answers:
//!
//! - `accept ADDR N CONC`: open N connections, CONC at a time; each reads
//!   to end of stream and must have received a line. Answer `ok NANOS`.
//! - `hold ADDR N`: open N connections and keep them idle. Answer
//!   `held NANOS` once all are connected, then `closed NANOS` once the
//!   server has ended every one (end of stream or error on read).
//! - `smtp ADDR CLIENTS MSGS SIZE`: CLIENTS concurrent SMTP sessions, each
//!   delivering MSGS messages of SIZE bytes, one at a time. Answer
//!   `ok NANOS`.
//! - `quit`.
//!
//! Failures answer `err MESSAGE`.

use crate::Res;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Set (to [`ROLE_CLIENT`]) in the environment of the re-executed bench.
pub(crate) const ROLE_VAR: &str = "LIFECYCLE_BENCH_ROLE";
/// The value of [`ROLE_VAR`] that makes the bench a load client.
pub(crate) const ROLE_CLIENT: &str = "load-client";
/// Worker threads of the client's runtime.
const CLIENT_THREADS: usize = 2;
/// How many connections `hold` opens at a time.
const HOLD_CONCURRENCY: usize = 256;

/// Entry point of the client process: serve commands until `quit` or EOF.
pub(crate) fn run_client_role() -> Res<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_THREADS)
        .enable_all()
        .build()?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let result = match words.as_slice() {
            ["quit"] | [] => break,
            ["accept", addr, n, conc] => runtime
                .block_on(accept(addr.parse()?, n.parse()?, conc.parse()?))
                .map(|d| format!("ok {}", d.as_nanos())),
            ["hold", addr, n] => {
                let held = runtime.block_on(hold(addr.parse()?, n.parse()?));
                match held {
                    Ok((streams, took)) => {
                        writeln!(out, "held {}", took.as_nanos())?;
                        out.flush()?;
                        runtime
                            .block_on(wait_closed(streams))
                            .map(|d| format!("closed {}", d.as_nanos()))
                    }
                    Err(e) => Err(e),
                }
            }
            ["smtp", addr, clients, msgs, size] => runtime
                .block_on(smtp(
                    addr.parse()?,
                    clients.parse()?,
                    msgs.parse()?,
                    size.parse()?,
                ))
                .map(|d| format!("ok {}", d.as_nanos())),
            _ => Err(format!("unknown command {line:?}").into()),
        };
        match result {
            Ok(answer) => writeln!(out, "{answer}")?,
            Err(e) => writeln!(out, "err {}", e.to_string().replace('\n', " "))?,
        }
        out.flush()?;
    }
    Ok(())
}

async fn accept(addr: SocketAddr, n: usize, conc: usize) -> Res<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..conc.max(1) {
        let next = Arc::clone(&next);
        workers.spawn(async move {
            let mut buf = Vec::with_capacity(64);
            while next.fetch_add(1, Ordering::Relaxed) < n {
                buf.clear();
                let mut stream = TcpStream::connect(addr).await?;
                stream.read_to_end(&mut buf).await?;
                if !buf.ends_with(b"\n") {
                    return Err(std::io::Error::other(format!(
                        "expected one line from {addr}, got {:?}",
                        String::from_utf8_lossy(&buf)
                    )));
                }
            }
            Ok::<_, std::io::Error>(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(start.elapsed())
}

async fn hold(addr: SocketAddr, n: usize) -> Res<(Vec<TcpStream>, Duration)> {
    let start = Instant::now();
    let mut streams = Vec::with_capacity(n);
    let mut connecting = JoinSet::new();
    let mut started = 0;
    while streams.len() < n {
        while started < n && connecting.len() < HOLD_CONCURRENCY {
            connecting.spawn(TcpStream::connect(addr));
            started += 1;
        }
        match connecting.join_next().await {
            Some(done) => streams.push(done??),
            None => break,
        }
    }
    Ok((streams, start.elapsed()))
}

async fn wait_closed(streams: Vec<TcpStream>) -> Res<Duration> {
    let start = Instant::now();
    let mut readers = JoinSet::new();
    for mut stream in streams {
        readers.spawn(async move {
            let mut buf = [0u8; 64];
            // Any bytes are drained; the connection counts as ended at end
            // of stream or at an error (reset), whichever the server causes.
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
    }
    while let Some(done) = readers.join_next().await {
        done?;
    }
    Ok(start.elapsed())
}

async fn smtp(addr: SocketAddr, clients: usize, msgs: usize, size: usize) -> Res<Duration> {
    let message: Arc<[u8]> = smtp_message(size).into();
    let start = Instant::now();
    let mut sessions = JoinSet::new();
    for client in 0..clients {
        let message = Arc::clone(&message);
        sessions.spawn(async move { smtp_session(addr, client, msgs, &message).await });
    }
    while let Some(done) = sessions.join_next().await {
        done??;
    }
    Ok(start.elapsed())
}

/// A message of exactly `size` bytes (headers, then 76-character lines),
/// ending in CRLF, with no line that starts with a dot.
fn smtp_message(size: usize) -> Vec<u8> {
    let mut m =
        b"From: <bench@example.org>\r\nTo: <sink@example.org>\r\nSubject: bench\r\n\r\n".to_vec();
    let line = [b'x'; 76];
    while m.len() + 78 <= size {
        m.extend_from_slice(&line);
        m.extend_from_slice(b"\r\n");
    }
    let rest = size.saturating_sub(m.len() + 2);
    m.extend(std::iter::repeat_n(b'y', rest));
    m.extend_from_slice(b"\r\n");
    m
}

async fn smtp_session(
    addr: SocketAddr,
    client: usize,
    msgs: usize,
    message: &[u8],
) -> std::io::Result<()> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    let mut line = String::new();
    expect_reply(&mut read, &mut line, "220").await?;
    write
        .write_all(format!("EHLO client{client}.bench\r\n").as_bytes())
        .await?;
    expect_reply(&mut read, &mut line, "250").await?;
    for _ in 0..msgs {
        write
            .write_all(b"MAIL FROM:<bench@example.org>\r\n")
            .await?;
        expect_reply(&mut read, &mut line, "250").await?;
        write.write_all(b"RCPT TO:<sink@example.org>\r\n").await?;
        expect_reply(&mut read, &mut line, "250").await?;
        write.write_all(b"DATA\r\n").await?;
        expect_reply(&mut read, &mut line, "354").await?;
        write.write_all(message).await?;
        write.write_all(b".\r\n").await?;
        expect_reply(&mut read, &mut line, "250").await?;
    }
    write.write_all(b"QUIT\r\n").await?;
    expect_reply(&mut read, &mut line, "221").await?;
    Ok(())
}

/// Reads one (possibly multi-line) SMTP reply and checks its code.
async fn expect_reply(
    read: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &mut String,
    code: &str,
) -> std::io::Result<()> {
    loop {
        line.clear();
        if read.read_line(line).await? == 0 {
            return Err(std::io::Error::other(format!(
                "server closed the SMTP session while {code} was expected"
            )));
        }
        if !line.starts_with(code) {
            return Err(std::io::Error::other(format!(
                "expected SMTP {code}, got {:?}",
                line.trim_end()
            )));
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

/// The parent's side: the client process and its command pipe.
pub(crate) struct LoadClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl LoadClient {
    /// Starts the bench executable again as a load client.
    pub(crate) fn spawn() -> Res<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .env(ROLE_VAR, ROLE_CLIENT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("client stdin was not piped")?;
        let stdout = child.stdout.take().ok_or("client stdout was not piped")?;
        Ok(Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    fn send(&mut self, command: &str) -> Res<()> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Reads one answer, which must start with `word`; returns the
    /// duration it carries.
    fn answer(&mut self, word: &str) -> Res<Duration> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err("the load client exited (see its stderr above)".into());
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(w), Some(nanos)) if w == word => Ok(Duration::from_nanos(nanos.parse()?)),
            _ => Err(format!("load client: expected {word}, got {:?}", line.trim_end()).into()),
        }
    }

    /// `n` connections that each read one line: the client's wall time.
    pub(crate) fn accept(&mut self, addr: SocketAddr, n: usize, conc: usize) -> Res<Duration> {
        self.send(&format!("accept {addr} {n} {conc}"))?;
        self.answer("ok")
    }

    /// Opens `n` idle connections; returns once all are connected. Then
    /// call [`wait_closed`](Self::wait_closed).
    pub(crate) fn hold(&mut self, addr: SocketAddr, n: usize) -> Res<Duration> {
        self.send(&format!("hold {addr} {n}"))?;
        self.answer("held")
    }

    /// After [`hold`](Self::hold): waits until the server ended them all.
    pub(crate) fn wait_closed(&mut self) -> Res<Duration> {
        self.answer("closed")
    }

    /// SMTP load: the client's wall time for all messages.
    pub(crate) fn smtp(
        &mut self,
        addr: SocketAddr,
        clients: usize,
        msgs: usize,
        size: usize,
    ) -> Res<Duration> {
        self.send(&format!("smtp {addr} {clients} {msgs} {size}"))?;
        self.answer("ok")
    }
}

impl Drop for LoadClient {
    fn drop(&mut self) {
        let _ = self.send("quit");
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
            if !matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}
