//! STARTTLS (RFC 3207) on an in-memory stream with a real rustls client:
//! advertised in EHLO, the handshake, a fresh session afterwards, refused
//! when TLS already runs, and the command-injection fix (input pipelined
//! after STARTTLS closes the connection instead of being read as commands
//! of the TLS session).

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::BufReader;

use super::*;
use crate::tls::tls_server_config;
use crate::tls_stream::TlsAcceptor;

struct Pki {
    _dir: tempfile::TempDir,
    acceptor: TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let pair = rcgen::generate_simple_self_signed(vec!["test.example".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    fs::write(&cert, pair.cert.pem()).unwrap();
    fs::write(&key, pair.key_pair.serialize_pem()).unwrap();
    let server = tls_server_config(
        &cert,
        fs::File::open(&cert).unwrap(),
        &key,
        fs::File::open(&key).unwrap(),
    )
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pair.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Pki {
        _dir: dir,
        acceptor: TlsAcceptor::from(server),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
    }
}

#[tokio::test]
async fn starttls_upgrades_and_starts_a_fresh_session() {
    let pki = pki();
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx().tls(SmtpTls::Starttls(pki.acceptor.clone())));
    c.expect("220 test.example ESMTP").await;
    c.send("EHLO client.example\r\n").await;
    let ehlo = c.expect("250").await;
    assert!(
        ehlo.contains("250 STARTTLS\r\n") || ehlo.contains("250-STARTTLS\r\n"),
        "{ehlo}"
    );
    // A transaction begun in plain text is forgotten by the upgrade.
    c.send("MAIL FROM:<plain@example.org>\r\n").await;
    c.expect("250").await;
    c.send("STARTTLS\r\n").await;
    c.expect("220 2.0.0").await;

    let plain = c.io.into_inner();
    let tls = pki
        .connector
        .connect(ServerName::try_from("test.example").unwrap(), plain)
        .await
        .expect("handshake");
    let mut c = Client {
        io: BufReader::new(tls),
    };
    // RFC 3207: the client must say EHLO again; the old sender is gone.
    c.send("RCPT TO:<b@example.net>\r\n").await;
    c.expect("503 5.5.1 send MAIL FROM first").await;
    c.send("MAIL FROM:<a@example.org>\r\n").await;
    c.expect("503 5.5.1 send EHLO or HELO first").await;
    c.send("EHLO client.example\r\n").await;
    let ehlo = c.expect("250").await;
    assert!(!ehlo.contains("STARTTLS"), "not offered twice: {ehlo}");
    c.send("STARTTLS\r\n").await;
    c.expect("503 5.5.1 TLS is already active").await;
    c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        .await;
    c.expect("250").await;
    c.expect("250").await;
    c.expect("354").await;
    c.send("Subject: over tls\r\n\r\nsecret\r\n.\r\nQUIT\r\n")
        .await;
    c.expect("250 2.0.0 ok: queued as").await;
    c.expect("221").await;
    let summary = task.await.unwrap();
    assert_eq!(summary.reason, EndReason::Quit);
    assert_eq!(summary.messages, 1);
    let stored = s.messages();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].starts_with(b"Return-Path: <a@example.org>\r\n"));
    assert_eq!(body_of(&stored[0]), b"Subject: over tls\r\n\r\nsecret\r\n");
}

#[tokio::test]
async fn commands_pipelined_after_starttls_close_the_connection() {
    let pki = pki();
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx().tls(SmtpTls::Starttls(pki.acceptor.clone())));
    hello(&mut c).await;
    // An attacker in the path appends a plain-text command to STARTTLS.
    c.send("STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
        .await;
    let reply = c.reply().await;
    assert!(reply.starts_with("554 5.5.0"), "{reply:?}");
    assert!(c.eof().await, "closed after refusing");
    assert_eq!(task.await.unwrap().reason, EndReason::PipelinedStarttls);
    assert!(s.messages().is_empty());
}

#[tokio::test]
async fn starttls_is_refused_where_not_offered_and_on_implicit_tls() {
    let s = Setup::new();
    for (tls, code) in [
        (SmtpTls::None, "502 5.5.1 STARTTLS is not offered"),
        (SmtpTls::Implicit, "503 5.5.1 TLS is already active"),
    ] {
        let (mut c, task) = s.start(s.ctx().tls(tls));
        c.expect("220").await;
        c.send("EHLO client.example\r\n").await;
        let ehlo = c.expect("250").await;
        assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
        c.send("STARTTLS\r\n").await;
        c.expect(code).await;
        c.quit().await;
        assert_eq!(task.await.unwrap().reason, EndReason::Quit);
    }
}

#[tokio::test]
async fn a_failed_handshake_ends_the_session() {
    let pki = pki();
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx().tls(SmtpTls::Starttls(pki.acceptor.clone())));
    hello(&mut c).await;
    c.send("STARTTLS\r\n").await;
    c.expect("220 2.0.0").await;
    c.send("this is not a TLS client hello\r\n").await;
    let summary = task.await.unwrap();
    assert!(matches!(summary.reason, EndReason::Tls(_)), "{summary:?}");
}
