//! Bad bytes: 10,000 sessions of random and adversarial input (overlong
//! lines, NULs, bare CR/LF, commands out of order, interrupted DATA) and
//! one 100 MiB DATA, against SMTP and IMAP: no crash, the right error
//! replies, bounded memory, and a spool holding exactly the complete,
//! acknowledged messages.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lifecycle_tests::GatewayProcess;
use nix::sys::signal::Signal;

use super::smtp::{queued_id, spool_files, spooled, tmp_files, without_trace, Smtp, FROM, TO};
use super::{assert_no_panic, default_gateway, figure, gateway, kib, scaled, turn};

const SESSIONS: usize = 10_000;
const THREADS: usize = 8;
const KINDS: usize = 10;
const HUGE: usize = 100 << 20;
/// How much the peak resident memory may grow over the whole test: the
/// 10 MiB message limit plus buffers, far below the 100 MiB sent at once.
const GROWTH_BOUND_KIB: u64 = 48 << 10;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

type Acked = Mutex<HashMap<String, Vec<u8>>>;

fn expect(reply: &str, prefix: &str, what: &str) -> Result<(), String> {
    if reply.starts_with(prefix) {
        Ok(())
    } else {
        Err(format!("{what}: wanted {prefix:?}, got {reply:?}"))
    }
}

/// `bytes` with every bare LF and bare CR written as CRLF.
fn crlf_only(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'\r', Some(b'\n')) => i += 1,
            (b'\r' | b'\n', _) => {}
            (b, _) => {
                out.push(b);
                i += 1;
                continue;
            }
        }
        out.extend_from_slice(b"\r\n");
        i += 1;
    }
    out
}

/// The offset of the first bare LF or bare CR in `bytes`.
fn bare_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().enumerate().position(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || bytes[i - 1] != b'\r',
        _ => false,
    })
}

fn io(e: std::io::Error) -> String {
    format!("i/o error: {e}")
}

/// Reads every line until the server closes; checks each with `ok`.
fn drain_replies(c: &mut Smtp, ok: impl Fn(&str) -> bool) -> Result<usize, String> {
    let mut n = 0;
    loop {
        match c.line() {
            Ok(l) => {
                if !l.ends_with("\r\n") || !ok(&l) {
                    return Err(format!("malformed reply line {l:?}"));
                }
                n += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
            {
                return Ok(n)
            }
            Err(e) => return Err(io(e)),
        }
    }
}

fn smtp_line_ok(l: &str) -> bool {
    let b = l.as_bytes();
    b.len() >= 6 && b[..3].iter().all(u8::is_ascii_digit) && (b[3] == b' ' || b[3] == b'-')
}

fn imap_line_ok(l: &str) -> bool {
    ["* OK ", "* BAD ", "* BYE ", "* CAPABILITY "]
        .iter()
        .any(|p| l.starts_with(p))
        || l.contains(" OK ")
        || l.contains(" BAD ")
}

fn session(i: usize, smtp: SocketAddr, imap: SocketAddr, acked: &Acked) -> Result<(), String> {
    let mut rng = Rng::new(i as u64 + 1);
    match i % KINDS {
        // Random bytes, then end of input: every reply well formed.
        0 | 1 => {
            let is_smtp = i % KINDS == 0;
            let mut c = Smtp::connect_raw(if is_smtp { smtp } else { imap }).map_err(io)?;
            let len = 1 + rng.below(3000);
            let junk = rng.bytes(len);
            // The server may close first (too many errors): a failed
            // write is fine, the replies are what is checked.
            let _ = c.send(&junk);
            let _ = c.half_close();
            let lines = drain_replies(&mut c, if is_smtp { smtp_line_ok } else { imap_line_ok })?;
            if lines == 0 {
                return Err("not even a greeting".into());
            }
        }
        // An overlong command line.
        2 => {
            let mut c = Smtp::connect(smtp).map_err(io)?;
            let mut line = b"EHLO ".to_vec();
            line.resize(1000 + rng.below(100_000), b'x');
            line.extend_from_slice(b"\r\nQUIT\r\n");
            c.send(&line).map_err(io)?;
            expect(&c.reply().map_err(io)?, "500 5.5.2", "overlong line")?;
            expect(&c.reply().map_err(io)?, "221 ", "QUIT")?;
        }
        // NULs.
        3 => {
            let mut c = Smtp::connect(smtp).map_err(io)?;
            for (cmd, code) in [
                (&b"EHLO a\0b\r\n"[..], "501 "),
                (b"\0\0\0\r\n", "500 "),
                (b"EHLO nul.test\r\n", "250"),
                (b"MAIL FROM:<a\0b@x>\r\n", "501 "),
                (b"QUIT\r\n", "221 "),
            ] {
                c.send(cmd).map_err(io)?;
                expect(&c.reply().map_err(io)?, code, &String::from_utf8_lossy(cmd))?;
            }
        }
        // Bare LF line ends, bare CR inside lines, NUL and 8-bit bytes in
        // the body, a bare-LF dot that does not end the message: stored
        // with every bare LF and CR as CRLF (`bare_newlines = "normalize"`,
        // the default), the rest byte for byte.
        4 => {
            let mut c = Smtp::connect(smtp).map_err(io)?;
            for (cmd, code) in [
                ("EHLO bare.lf\n".to_owned(), "250"),
                (format!("MAIL FROM:<{FROM}>\n"), "250 "),
                (format!("RCPT TO:<{TO}>\n"), "250 "),
                ("DATA\n".to_owned(), "354 "),
            ] {
                c.send(cmd.as_bytes()).map_err(io)?;
                expect(&c.reply().map_err(io)?, code, &cmd)?;
            }
            let body = format!(
                "Subject: bare-{i}\r\n\r\nbare LF\nbare CR\rin a line\r\nNUL \0 and 8-bit \u{e9}\r\n\n.\nstill the body\r\n"
            );
            c.send(body.as_bytes()).map_err(io)?;
            c.send(b".\r\nQUIT\r\n").map_err(io)?;
            let reply = c.reply().map_err(io)?;
            let id = queued_id(&reply).ok_or_else(|| format!("bare CR/LF message: {reply:?}"))?;
            acked
                .lock()
                .map_err(|_| "poisoned")?
                .insert(id, spooled(&crlf_only(body.as_bytes())));
            expect(&c.reply().map_err(io)?, "221 ", "QUIT")?;
        }
        // Commands out of order.
        5 => {
            let mut c = Smtp::connect(smtp).map_err(io)?;
            for (cmd, code) in [
                ("MAIL FROM:<a@b>", "503 "),
                ("RCPT TO:<x@y>", "503 "),
                ("DATA", "503 "),
                ("EHLO order.test", "250"),
                ("DATA", "503 "),
                ("RCPT TO:<x@y>", "503 "),
                ("MAIL FROM:<a@b>", "250 "),
                ("MAIL FROM:<a@b>", "503 "),
                ("DATA", "503 "),
                ("BDAT 10", "500 "),
                ("QUIT", "221 "),
            ] {
                expect(&c.command(cmd).map_err(io)?, code, cmd)?;
            }
        }
        // A valid, pipelined message with a dot-stuffed line.
        6 => {
            let mut c = Smtp::connect(smtp).map_err(io)?;
            let sent = format!("Subject: valid-{i}\r\n\r\nhello {i}\r\n..dotted\r\n");
            let stored = format!("Subject: valid-{i}\r\n\r\nhello {i}\r\n.dotted\r\n");
            c.send(
                format!("EHLO pipe.test\r\nMAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nDATA\r\n")
                    .as_bytes(),
            )
            .map_err(io)?;
            for code in ["250", "250 ", "250 ", "354 "] {
                expect(&c.reply().map_err(io)?, code, "pipelined")?;
            }
            c.send(format!("{sent}.\r\nQUIT\r\n").as_bytes())
                .map_err(io)?;
            let reply = c.reply().map_err(io)?;
            let id = queued_id(&reply).ok_or_else(|| format!("valid message: {reply:?}"))?;
            acked
                .lock()
                .map_err(|_| "poisoned")?
                .insert(id, spooled(stored.as_bytes()));
            expect(&c.reply().map_err(io)?, "221 ", "QUIT")?;
        }
        // A message line over 1000 octets: refused, nothing stored.
        7 => {
            let mut c = Smtp::connect(smtp).map_err(io)?;
            c.begin_data().map_err(io)?;
            let mut body = b"Subject: long\r\n\r\n".to_vec();
            body.resize(body.len() + 1000 + rng.below(20_000), b'y');
            body.extend_from_slice(b"\r\nmore\r\n.\r\n");
            c.send(&body).map_err(io)?;
            expect(&c.reply().map_err(io)?, "500 5.5.2", "long message line")?;
            expect(&c.command("QUIT").map_err(io)?, "221 ", "QUIT")?;
        }
        // IMAP: overlong line, missing tag, NUL in the tag, unknown command.
        8 => {
            let mut c = Smtp::connect_raw(imap).map_err(io)?;
            expect(&c.line().map_err(io)?, "* OK ", "greeting")?;
            let mut long = vec![b'z'; 9000 + rng.below(50_000)];
            long.extend_from_slice(b"\r\n");
            c.send(&long).map_err(io)?;
            expect(&c.line().map_err(io)?, "* BAD line too long", "overlong")?;
            for (cmd, reply) in [
                (&b"\r\n"[..], "* BAD missing or invalid tag"),
                (b"a\0 NOOP\r\n", "* BAD missing or invalid tag"),
                (b"a1 LOGIN u p\r\n", "a1 BAD "),
                (b"a2 LOGOUT\r\n", "* BYE logging out"),
            ] {
                c.send(cmd).map_err(io)?;
                expect(&c.line().map_err(io)?, reply, &String::from_utf8_lossy(cmd))?;
            }
            expect(&c.line().map_err(io)?, "a2 OK", "LOGOUT")?;
        }
        // DATA cut off by the client: nothing stored.
        _ => {
            let mut c = Smtp::connect(smtp).map_err(io)?;
            c.begin_data().map_err(io)?;
            c.send(format!("Subject: cut-{i}\r\n\r\npartial line").as_bytes())
                .map_err(io)?;
        }
    }
    Ok(())
}

/// The 100 MiB DATA: read and refused with 552, never buffered whole.
fn huge_data(smtp: SocketAddr) -> Result<String, String> {
    let mut c = Smtp::connect(smtp).map_err(io)?;
    c.begin_data().map_err(io)?;
    let mut line = vec![b'h'; 98];
    line.extend_from_slice(b"\r\n");
    let chunk: Vec<u8> = line.repeat(10_000);
    let mut sent = 0;
    while sent < HUGE {
        c.send(&chunk).map_err(io)?;
        sent += chunk.len();
    }
    c.send(b".\r\n").map_err(io)?;
    let reply = c.reply().map_err(io)?;
    expect(&reply, "552 5.3.4", "100 MiB message")?;
    Ok(reply)
}

#[test]
fn bad_bytes_get_error_replies_and_never_reach_the_spool() {
    let _turn = turn();
    let sessions = scaled(SESSIONS);
    let mut gw = default_gateway();
    let stats = gw.stats();
    let hwm_start = kib(&stats, "VmHWM");

    let started = Instant::now();
    let huge = huge_data(gw.smtp);
    let hwm_after_huge = kib(&stats, "VmHWM");
    let huge_took = started.elapsed();
    assert!(huge.is_ok(), "{huge:?}");

    let next = AtomicUsize::new(0);
    let acked: Acked = Mutex::new(HashMap::new());
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let failed_by_kind: Mutex<[usize; KINDS]> = Mutex::new([0; KINDS]);
    let (smtp, imap) = (gw.smtp, gw.imap);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= sessions {
                    return;
                }
                if let Err(e) = session(i, smtp, imap, &acked) {
                    failed_by_kind.lock().unwrap()[i % KINDS] += 1;
                    let mut f = failures.lock().unwrap();
                    if f.len() < 10 {
                        f.push(format!("session {i} (kind {}): {e}", i % KINDS));
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    // Let the server finish the sessions the clients cut off.
    std::thread::sleep(Duration::from_millis(500));
    let alive = gw.try_wait().expect("try_wait").is_none();
    let health = gw.get("/healthz").map(|(s, _)| s).unwrap_or(0);
    let hwm_end = kib(&stats, "VmHWM");
    let rss_end = kib(&stats, "VmRSS");
    let acked = acked.into_inner().unwrap();
    let files = spool_files(gw.spool_dir());
    let tmp = tmp_files(gw.spool_dir());
    let failures = failures.into_inner().unwrap();
    figure(
        "bad_bytes",
        &format!(
            "sessions={sessions} in {elapsed:?} ({THREADS} threads) + 100 MiB DATA in {huge_took:?} → {:?}; \
             failed by kind={:?}; acked={} spool files={} tmp={tmp}; VmHWM kiB start={hwm_start} \
             after 100 MiB={hwm_after_huge} end={hwm_end}; VmRSS end={rss_end}; alive={alive} healthz={health}",
            huge.as_deref().unwrap_or("").trim_end(),
            failed_by_kind.lock().unwrap(),
            acked.len(),
            files.len(),
        ),
    );
    assert!(
        failures.is_empty(),
        "failed sessions:\n{}",
        failures.join("\n")
    );
    assert!(alive, "the gateway died:\n{}", gw.log_tail(30));
    assert_eq!(health, 200, "/healthz");
    assert_no_panic(&gw);
    assert!(
        hwm_end.saturating_sub(hwm_start) < GROWTH_BOUND_KIB,
        "peak memory grew by {} kiB (bound {GROWTH_BOUND_KIB})",
        hwm_end.saturating_sub(hwm_start)
    );
    // Exactly the acknowledged messages, each intact.
    let expected_valid = (0..sessions).filter(|i| matches!(i % KINDS, 4 | 6)).count();
    assert_eq!(acked.len(), expected_valid, "acknowledged messages");
    assert_eq!(
        files.len(),
        acked.len(),
        "spool files vs acknowledged messages"
    );
    for (id, path) in &files {
        let want = acked
            .get(id)
            .unwrap_or_else(|| panic!("{} was never acknowledged", path.display()));
        let got = std::fs::read(path).expect("read message");
        // No relay that reads the spool can be smuggled anything.
        assert_eq!(
            bare_newline(&got),
            None,
            "{} holds a bare LF or CR",
            path.display()
        );
        assert!(
            &without_trace(&got) == want,
            "{} differs from what was acknowledged",
            path.display()
        );
    }
    assert_eq!(tmp, 0, "temporary files left");
    gw.signal(Signal::SIGTERM).expect("SIGTERM");
    let status = gw.wait_exit(Duration::from_secs(30)).expect("wait");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exit after SIGTERM");
}

/// A PROXY protocol v2 header (TCP over IPv4) naming `client` as the
/// source and `server` as the destination.
pub(crate) fn proxy_v2(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(c), SocketAddr::V4(s)) = (client, server) else {
        panic!("IPv4 addresses only");
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&c.ip().octets());
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&c.port().to_be_bytes());
    h.extend_from_slice(&s.port().to_be_bytes());
    h
}

/// Connects to `addr` from `source`, sends `bytes` (then half-closes when
/// `close` is set) and returns what the server wrote before it closed.
fn proxy_attempt(
    addr: SocketAddr,
    source: std::net::IpAddr,
    bytes: &[u8],
    close: bool,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect(&addr.into())?;
    let mut stream = std::net::TcpStream::from(socket);
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(bytes)?;
    if close {
        stream.shutdown(std::net::Shutdown::Write)?;
    }
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => Ok(got),
        // A reset after the server closed with unread bytes is a close too.
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(got),
        Err(e) => Err(e),
    }
}

/// Bad PROXY headers (issue 15) on a listener that expects v2 from
/// 127.0.0.1: malformed, partial, oversized, v1-on-v2, from an untrusted
/// address. Each is closed without a byte written and counted under its
/// reason in `lifecycle_refused_total`; no panic; a good header then
/// still works, and the message it carries names the client the header
/// gave in its `Received:` line, as does the session's log.
#[test]
fn bad_proxy_headers_are_refused_and_counted() {
    let _turn = turn();
    let gw = GatewayProcess::builder(gateway())
        .smtp_listener(
            "127.0.0.1:0",
            "proxy_protocol = \"v2\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
        )
        .start()
        .expect("start the gateway");
    let smtp = gw.smtp;
    let local: std::net::IpAddr = [127, 0, 0, 1].into();
    let stranger: std::net::IpAddr = [127, 0, 0, 2].into();
    let good = proxy_v2("192.0.2.44:5555".parse().unwrap(), smtp);
    let mut oversized = good[..14].to_vec();
    oversized.extend_from_slice(&u16::MAX.to_be_bytes());
    oversized.extend_from_slice(&[0; 64]);
    let mut bad_version = good.clone();
    bad_version[12] = 0x31;
    let mut rng = Rng::new(15);
    let reps = scaled(40);
    let cases: Vec<(&str, std::net::IpAddr, Vec<u8>, bool)> = vec![
        (
            "proxy_malformed",
            local,
            b"EHLO client.test\r\n".to_vec(),
            false,
        ),
        ("proxy_malformed", local, bad_version, false),
        ("proxy_partial", local, good[..20].to_vec(), true),
        ("proxy_partial", local, good[..7].to_vec(), true),
        ("proxy_oversized", local, oversized, false),
        (
            "proxy_version",
            local,
            b"PROXY TCP4 192.0.2.44 127.0.0.1 5555 25\r\n".to_vec(),
            false,
        ),
        ("proxy_untrusted", stranger, good.clone(), false),
    ];
    let mut want: HashMap<&str, u64> = HashMap::new();
    for _ in 0..reps {
        for (reason, source, bytes, close) in &cases {
            let got = proxy_attempt(smtp, *source, bytes, *close).expect("attempt");
            assert!(
                got.is_empty(),
                "{reason}: the server wrote {:?}",
                String::from_utf8_lossy(&got)
            );
            *want.entry(reason).or_default() += 1;
        }
        // Random bytes, never starting like a header.
        let len = 1 + rng.below(300);
        let mut noise = rng.bytes(len);
        noise[0] = b'A' + (noise[0] % 26);
        let got = proxy_attempt(smtp, local, &noise, false).expect("noise");
        assert!(got.is_empty(), "noise answered: {got:?}");
        *want.entry("proxy_malformed").or_default() += 1;
    }
    let metrics = gw.metrics().expect("metrics");
    for (reason, n) in &want {
        let labels = [
            ("listener", "smtp"),
            ("protocol", "smtp"),
            ("reason", *reason),
        ];
        let seen = lifecycle_tests::metric_value(&metrics, "lifecycle_refused_total", &labels);
        assert_eq!(seen, Some(*n as f64), "refused_total{{reason={reason}}}");
    }
    figure("bad_proxy_headers", &format!("refused by reason: {want:?}"));

    // A good header: the real client is the session's peer and is named in
    // the stored message's Received: line.
    let mut c = Smtp::connect_raw(smtp).expect("connect");
    c.send(&good).expect("header");
    assert!(c.reply().expect("greeting").starts_with("220 "));
    let reply = c
        .deliver(b"Subject: proxied\r\n\r\nhello\r\n")
        .expect("deliver");
    let id = queued_id(&reply).unwrap_or_else(|| panic!("not queued: {reply:?}"));
    let stored = std::fs::read(gw.spool_dir().join(format!("{id}.eml"))).expect("read message");
    let stored = String::from_utf8_lossy(&stored);
    assert!(
        stored.contains("Received: from client.test ([192.0.2.44])\r\n\tby gw.test with ESMTP; "),
        "{stored}"
    );
    // The log trails the session: wait for its line (more are counted too).
    let opened = gw.wait_log_count(1, Duration::from_secs(30), |l| {
        l.contains("connection open") && l.contains(r#""peer":"192.0.2.44:5555""#)
    });
    assert!(opened == 1, "{}", gw.log_tail(20));
    assert_no_panic(&gw);
}
