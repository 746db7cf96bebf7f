//! `lb`: one message per connection through a load balancer, from several
//! source addresses, until told to stop.
//!
//! ```text
//! reliability-client lb ADDR SOURCES CONCURRENCY ACKED_FILE
//! ```
//!
//! SOURCES is a comma-separated list of local IPs (127.0.0.2,...); each
//! connection binds the next one before connecting. Every worker loops:
//! connect, greeting, EHLO, MAIL, RCPT, DATA with a unique `X-Lb-Tag`,
//! QUIT. Each acknowledged message (250 after the data) is written to
//! ACKED_FILE as `TAG SOURCE`. A `stop` line on stdin ends the run; the
//! last line printed is `result ok=N failed=N connect=N refused421=N
//! cut=N timeout=N unexpected=N`, preceded by one `failure ...` line per
//! failure (at most 20).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use socket2::{Domain, Socket, Type};

use crate::{parse, say, READ_TIMEOUT};

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    connect: AtomicU64,
    refused421: AtomicU64,
    cut: AtomicU64,
    timeout: AtomicU64,
    unexpected: AtomicU64,
    failures: Mutex<Vec<String>>,
}

enum Failure {
    Connect(io::Error),
    Reply421(String),
    Cut(String),
    Timeout(String),
    Unexpected(String),
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let addr: SocketAddr = parse(args, 0, "ADDR")?;
    let sources: Vec<IpAddr> = args
        .get(1)
        .ok_or("argument 2 (SOURCES) missing")?
        .split(',')
        .map(|s| s.parse().map_err(|_| format!("bad source address {s:?}")))
        .collect::<Result<_, _>>()?;
    let concurrency: usize = parse(args, 2, "CONCURRENCY")?;
    let acked_path = args.get(3).ok_or("argument 4 (ACKED_FILE) missing")?;
    let acked = Arc::new(Mutex::new(
        std::fs::File::create(acked_path).map_err(|e| format!("{acked_path}: {e}"))?,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (stop, tally, next, acked, sources) = (
            Arc::clone(&stop),
            Arc::clone(&tally),
            Arc::clone(&next),
            Arc::clone(&acked),
            sources.clone(),
        );
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let source = sources[(n as usize) % sources.len()];
                let tag = format!("lb-{n}");
                match send_one(addr, source, &tag) {
                    Ok(()) => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        let mut f = acked.lock().unwrap_or_else(|e| e.into_inner());
                        let _ = writeln!(f, "{tag} {source}");
                    }
                    Err(f) => {
                        let (counter, text) = match f {
                            Failure::Connect(e) => (&tally.connect, format!("connect: {e}")),
                            Failure::Reply421(s) => (&tally.refused421, format!("421: {s}")),
                            Failure::Cut(s) => (&tally.cut, format!("cut: {s}")),
                            Failure::Timeout(s) => (&tally.timeout, format!("timeout: {s}")),
                            Failure::Unexpected(s) => {
                                (&tally.unexpected, format!("unexpected: {s}"))
                            }
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        let mut list = tally.failures.lock().unwrap_or_else(|e| e.into_inner());
                        if list.len() < 20 {
                            list.push(format!("{tag} from {source}: {text}"));
                        }
                    }
                }
            }
        }));
    }
    say("started");
    for line in io::stdin().lock().lines() {
        match line.as_deref() {
            Ok("stop") | Err(_) => break,
            Ok("count") => say(&format!("count ok={}", tally.ok.load(Ordering::Relaxed))),
            Ok(_) => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    if let Ok(mut f) = acked.lock() {
        let _ = f.flush();
    }
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    for f in tally
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        say(&format!("failure {f}"));
    }
    let failed = g(&tally.connect)
        + g(&tally.refused421)
        + g(&tally.cut)
        + g(&tally.timeout)
        + g(&tally.unexpected);
    say(&format!(
        "result ok={} failed={failed} connect={} refused421={} cut={} timeout={} unexpected={}",
        g(&tally.ok),
        g(&tally.connect),
        g(&tally.refused421),
        g(&tally.cut),
        g(&tally.timeout),
        g(&tally.unexpected)
    ));
    Ok(())
}

fn connect(addr: SocketAddr, source: IpAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect(&addr.into())?;
    let stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    Ok(stream)
}

fn send_one(addr: SocketAddr, source: IpAddr, tag: &str) -> Result<(), Failure> {
    let stream = connect(addr, source).map_err(Failure::Connect)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(Failure::Connect)?);
    let mut writer = stream;
    let mut expect = |code: &str, step: &str| -> Result<(), Failure> {
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => return Err(Failure::Cut(format!("end of stream awaiting {step}"))),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Failure::Timeout(step.to_owned()))
                }
                Err(e) => return Err(Failure::Cut(format!("{step}: {e}"))),
            }
            // Multi-line replies: `250-...` continues, `250 ...` ends.
            if line.len() >= 4 && line.as_bytes()[3] == b'-' {
                continue;
            }
            break;
        }
        if line.starts_with("421") {
            return Err(Failure::Reply421(format!("{step}: {}", line.trim_end())));
        }
        if !line.starts_with(code) {
            return Err(Failure::Unexpected(format!("{step}: {}", line.trim_end())));
        }
        Ok(())
    };
    let send = |w: &mut TcpStream, bytes: &[u8], step: &str| {
        w.write_all(bytes)
            .map_err(|e| Failure::Cut(format!("writing {step}: {e}")))
    };
    expect("220", "greeting")?;
    send(&mut writer, b"EHLO lb-client.test\r\n", "EHLO")?;
    expect("250", "EHLO")?;
    send(&mut writer, b"MAIL FROM:<lb@client.test>\r\n", "MAIL")?;
    expect("250", "MAIL")?;
    send(&mut writer, b"RCPT TO:<sink@gw.test>\r\n", "RCPT")?;
    expect("250", "RCPT")?;
    send(&mut writer, b"DATA\r\n", "DATA")?;
    expect("354", "DATA")?;
    let body =
        format!("X-Lb-Tag: {tag}\r\nSubject: {tag}\r\n\r\none message per connection\r\n.\r\n");
    send(&mut writer, body.as_bytes(), "the message")?;
    expect("250", "end of data")?;
    send(&mut writer, b"QUIT\r\n", "QUIT")?;
    expect("221", "QUIT")?;
    Ok(())
}
