//! Idle connections (issue 19): resident memory of the serving process per
//! greeted, silent connection. Each figure is the growth of VmRSS of a
//! freshly started server while it holds N connections, each of which has
//! read its greeting, divided by N. Contenders: the gateway's SMTP, IMAP,
//! implicit-TLS SMTP and IMAP listeners and an SMTP listener with
//! STARTTLS (the client says EHLO, STARTTLS, and EHLO again inside TLS),
//! and a plain tokio server (this bench binary re-executed) whose task
//! writes a greeting and waits in `read` on a 64-byte array: the floor of
//! a task per connection. The TLS rows also have a tokio-rustls baseline
//! (the same task behind `tokio_rustls::TlsAcceptor`, the same rustls
//! provider and defaults as the gateway): rustls as most tokio servers
//! hold it.

use crate::report::{Met, Row};
use crate::stats::{Samples, Unit};
use crate::Res;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Role of this executable when it runs the plain tokio baseline.
pub(crate) const ROLE_BASELINE: &str = "idle-baseline";
/// Role of this executable when it runs the tokio-rustls baseline.
pub(crate) const ROLE_TLS_BASELINE: &str = "idle-tls-baseline";
const PATIENCE: Duration = Duration::from_secs(30);
/// Target of the gateway rows, bytes per idle connection.
const TARGET: f64 = 4096.0;

/// A server process, killed on drop.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// VmRSS of the serving process: the gateway's child when it has one
    /// (started as root it serves from a child of its privileged parent).
    fn rss_kib(&self) -> Res<u64> {
        let pid = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let serving = children
            .split_whitespace()
            .next()
            .map_or_else(|| pid.to_string(), str::to_owned);
        let status = std::fs::read_to_string(format!("/proc/{serving}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| "no VmRSS in /proc/PID/status".into())
    }
}

/// The plain tokio baseline: serves on one thread until killed.
pub(crate) fn run_baseline_role() -> Res<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (mut s, _) = listener.accept().await?;
            tokio::spawn(async move {
                if s.write_all(b"220 baseline ready\r\n").await.is_err() {
                    return;
                }
                let mut buf = [0u8; 64];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    })
}

/// The tokio-rustls baseline: like the plain one, each connection behind
/// a TLS handshake first (a fresh self-signed certificate, rustls' ring
/// provider with its default protocol versions and settings).
///
/// It repeats the plain baseline's loop on purpose: a shared generic
/// function changed what the tasks hold (measured: the plain task 928 →
/// 1,043 B per connection, the TLS one 9.5 → 11.9 KB, the handshake future
/// no longer overlapping the stream), and a baseline must be the smallest
/// task of its kind.
pub(crate) fn run_tls_baseline_role() -> Res<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der())?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (s, _) = listener.accept().await?;
            // As the gateway does: the greeting goes out after the session
            // tickets without waiting for the client's delayed ACK.
            s.set_nodelay(true)?;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(s).await else {
                    return;
                };
                if s.write_all(b"220 baseline ready\r\n").await.is_err() || s.flush().await.is_err()
                {
                    return;
                }
                let mut buf = [0u8; 64];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    })
}

/// Starts this executable in baseline role `role` and reads the address
/// it listens on.
fn baseline(role: &str) -> Res<(Server, SocketAddr)> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(crate::client::ROLE_VAR, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("baseline stdout not piped")?;
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line.trim().parse()?;
    Ok((Server { child }, addr))
}

/// Which gateway listener a run holds connections on.
#[derive(Clone, Copy)]
enum Listener {
    Smtp,
    Imap,
    Smtps,
    Imaps,
    Starttls,
}

impl Listener {
    fn tls(self) -> bool {
        !matches!(self, Listener::Smtp | Listener::Imap)
    }
}

/// Starts the gateway with SMTP, IMAP, SMTPS, IMAPS and STARTTLS SMTP
/// listeners, admission limits off; returns it and the address of `which`.
fn gateway(bin: &Path, dir: &Path, which: Listener) -> Res<(Server, SocketAddr)> {
    let mut ports = [0; 5];
    for p in &mut ports {
        *p = lifecycle_tests::free_port()?;
    }
    let addr = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    std::fs::write(dir.join("cert.pem"), cert.cert.pem())?;
    std::fs::write(dir.join("key.pem"), cert.key_pair.serialize_pem())?;
    std::fs::write(
        dir.join("gateway.toml"),
        format!(
            "spool_dir = {spool:?}\nallow_root = true\n\
             [log]\nlevel = \"warning\"\n\
             [tls]\ncert = {cert:?}\nkey = {key:?}\n\
             [limits]\nmax_connections = 0\nmax_per_address = 0\n\
             [[listener]]\nname = \"smtp\"\nprotocol = \"smtp\"\naddress = \"{a}\"\nbacklog = {b}\n\
             [[listener]]\nname = \"imap\"\nprotocol = \"imap\"\naddress = \"{i}\"\nbacklog = {b}\n\
             [[listener]]\nname = \"smtps\"\nprotocol = \"smtp\"\naddress = \"{s}\"\nbacklog = {b}\ntls = \"implicit\"\n\
             [[listener]]\nname = \"imaps\"\nprotocol = \"imap\"\naddress = \"{is}\"\nbacklog = {b}\ntls = \"implicit\"\n\
             [[listener]]\nname = \"submission\"\nprotocol = \"smtp\"\naddress = \"{st}\"\nbacklog = {b}\ntls = \"starttls\"\n",
            spool = dir.join("spool").display().to_string(),
            cert = dir.join("cert.pem").display().to_string(),
            key = dir.join("key.pem").display().to_string(),
            a = addr(ports[0]),
            i = addr(ports[1]),
            s = addr(ports[2]),
            is = addr(ports[3]),
            st = addr(ports[4]),
            b = crate::listen::BACKLOG,
        ),
    )?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(dir.join("gateway.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = Server { child };
    let start = Instant::now();
    while connect(addr(ports[0]))
        .and_then(|mut s| greeting(&mut s))
        .is_err()
    {
        if start.elapsed() > PATIENCE {
            return Err("the gateway did not greet within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = match which {
        Listener::Smtp => ports[0],
        Listener::Imap => ports[1],
        Listener::Smtps => ports[2],
        Listener::Imaps => ports[3],
        Listener::Starttls => ports[4],
    };
    Ok((server, addr(port)))
}

fn connect(addr: SocketAddr) -> Res<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, PATIENCE)?;
    s.set_read_timeout(Some(PATIENCE))?;
    // The TLS handshake writes in pieces: with Nagle's algorithm on, each
    // handshake would wait ~40 ms for the server's delayed ACK.
    s.set_nodelay(true)?;
    Ok(s)
}

/// Reads up to and including the first line feed, byte by byte (nothing
/// after the greeting is sent).
fn greeting(s: &mut impl Read) -> Res<()> {
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b)? == 0 {
            return Err("closed before the greeting".into());
        }
        if b[0] == b'\n' {
            return Ok(());
        }
    }
}

/// Reads an SMTP reply up to its last line (`250 ...`, not `250-...`).
fn reply(s: &mut impl Read) -> Res<()> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b)? == 0 {
            return Err("closed in the middle of a reply".into());
        }
        line.push(b[0]);
        if b[0] == b'\n' {
            if line.get(3) == Some(&b' ') {
                return Ok(());
            }
            line.clear();
        }
    }
}

/// Bytes of VmRSS growth per connection while `n` greeted connections
/// to `which` at `addr` are held.
fn per_connection(server: &Server, addr: SocketAddr, n: usize, which: Listener) -> Res<f64> {
    let before = server.rss_kib()?;
    let mut held: Vec<Box<dyn ReadWrite>> = Vec::with_capacity(n);
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth(),
    );
    for _ in 0..n {
        let mut s = connect(addr)?;
        if matches!(which, Listener::Starttls) {
            greeting(&mut s)?;
            s.write_all(b"EHLO bench.example\r\n")?;
            reply(&mut s)?;
            s.write_all(b"STARTTLS\r\n")?;
            reply(&mut s)?;
        }
        let mut s: Box<dyn ReadWrite> = if which.tls() {
            let conn = rustls::ClientConnection::new(config.clone(), "localhost".try_into()?)?;
            Box::new(rustls::StreamOwned::new(conn, s))
        } else {
            Box::new(s)
        };
        if matches!(which, Listener::Starttls) {
            // The session after STARTTLS starts with the client's EHLO.
            s.write_all(b"EHLO bench.example\r\n")?;
            reply(&mut s)?;
        } else {
            greeting(&mut s)?;
        }
        held.push(s);
    }
    let after = server.rss_kib()?;
    drop(held);
    Ok(after.saturating_sub(before) as f64 * 1024.0 / n as f64)
}

/// A client stream, plain or TLS.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Accepts any server certificate: the bench measures memory, not trust.
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The idle rows: `n` connections per plain figure, `n_tls` for TLS.
pub(crate) fn idle_rows(
    reps: usize,
    n: usize,
    n_tls: usize,
    gateway_bin: Option<&Path>,
) -> Res<Vec<Row>> {
    let dir = lifecycle_tests::temp_dir("bench")?;
    let mut base = Samples::new(Unit::Bytes);
    let mut tls_base = Samples::new(Unit::Bytes);
    let kinds = [
        Listener::Smtp,
        Listener::Imap,
        Listener::Smtps,
        Listener::Imaps,
        Listener::Starttls,
    ];
    let mut ours = kinds.map(|_| Samples::new(Unit::Bytes));
    for rep in 0..reps {
        for turn in crate::rotate(kinds.len() + 2, rep) {
            if turn == 0 {
                let (server, addr) = baseline(ROLE_BASELINE)?;
                base.push(per_connection(&server, addr, n, Listener::Smtp)?);
            } else if turn == kinds.len() + 1 {
                // Implicit TLS, as the gateway's SMTPS listener.
                let (server, addr) = baseline(ROLE_TLS_BASELINE)?;
                tls_base.push(per_connection(&server, addr, n_tls, Listener::Smtps)?);
            } else if let Some(bin) = gateway_bin {
                let which = kinds[turn - 1];
                let run = dir.path().join(format!("idle-{rep}-{turn}"));
                std::fs::create_dir(&run)?;
                let (server, addr) = gateway(bin, &run, which)?;
                let count = if which.tls() { n_tls } else { n };
                ours[turn - 1].push(per_connection(&server, addr, count, which)?);
            }
        }
    }
    let base = base.summary().ok_or("no baseline sample")?;
    let tls_base = tls_base.summary().ok_or("no TLS baseline sample")?;
    let names = [
        format!("{n} idle SMTP"),
        format!("{n} idle IMAP"),
        format!("{n_tls} idle implicit-TLS SMTP"),
        format!("{n_tls} idle implicit-TLS IMAP"),
        format!("{n_tls} idle SMTP after STARTTLS"),
    ];
    let mut rows = Vec::new();
    for ((samples, name), kind) in ours.iter().zip(names).zip(kinds) {
        let mut what = format!(
            "idle connections: VmRSS growth per greeted, silent connection, gateway ({name}); \
             plain tokio task per connection waiting in read ({n} idle)"
        );
        let mut baselines = vec![("plain tokio idle read".to_string(), base)];
        // Plain sessions: the 4 KiB. TLS sessions carry rustls'
        // state on top (its own floor): they must cost less than rustls as
        // tokio servers usually hold it, and the 4 KiB is reported beside.
        let (target, limit) = if kind.tls() {
            what.push_str(&format!(
                "; the same task behind tokio-rustls, implicit TLS ({n_tls} idle)"
            ));
            baselines.push(("tokio-rustls idle read".to_string(), tls_base));
            (
                "below tokio-rustls idle read (TLS has rustls' floor on top; \
                 4 KiB is the plain sessions' target)",
                tls_base.median,
            )
        } else {
            ("≤ 4 KiB (4,096 B) per idle connection", TARGET)
        };
        rows.push(match samples.summary() {
            Some(s) => Row {
                what,
                paired: Vec::new(),
                met: if s.median <= limit {
                    Met::Yes
                } else {
                    Met::No(format!("{:.0} B per connection", s.median))
                },
                ours: Some(s),
                baselines,
                target: target.into(),
            },
            None => Row::without_ours(what, baselines, target, "no lifecycle-gateway binary"),
        });
    }
    Ok(rows)
}
