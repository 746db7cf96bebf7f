//! The lean TLS stream against a real rustls client (tokio-rustls) over
//! in-memory and TCP streams: data both ways in sizes from a byte to many
//! records, TLS 1.2 and 1.3, a client key update, both kinds of end, and
//! no buffer held while the client is silent.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

struct Pki {
    server: Arc<ServerConfig>,
    roots: rustls::RootCertStore,
}

fn pki() -> Pki {
    let pair = rcgen::generate_simple_self_signed(vec!["test.example".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pair.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pair.cert.der().clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pair.cert.der().clone()).unwrap();
    Pki {
        server: Arc::new(server),
        roots,
    }
}

fn connector(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(pki.roots.clone())
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(client))
}

type Client = tokio_rustls::client::TlsStream<tokio::io::DuplexStream>;

/// A connected pair over an in-memory stream.
async fn pair(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (Client, TlsStream<tokio::io::DuplexStream>) {
    let pki = pki();
    let (c, s) = tokio::io::duplex(4096);
    let acceptor = TlsAcceptor::from(pki.server.clone());
    let server = tokio::spawn(async move { acceptor.accept(s).await });
    let name = ServerName::try_from("test.example").unwrap();
    let client = connector(&pki, versions).connect(name, c).await.unwrap();
    (client, *server.await.unwrap().unwrap())
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Sends `n` bytes each way at once and checks they arrive whole.
async fn exchange(client: &mut Client, server: &mut TlsStream<tokio::io::DuplexStream>, n: usize) {
    let data = pattern(n);
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    let up = async {
        cw.write_all(&data).await.unwrap();
        cw.flush().await.unwrap();
    };
    let down = async {
        sw.write_all(&data).await.unwrap();
        sw.flush().await.unwrap();
    };
    let read_up = async {
        let mut got = vec![0; n];
        sr.read_exact(&mut got).await.unwrap();
        got
    };
    let read_down = async {
        let mut got = vec![0; n];
        cr.read_exact(&mut got).await.unwrap();
        got
    };
    let ((), (), got_up, got_down) = tokio::join!(up, down, read_up, read_down);
    assert!(got_up == data, "{n} bytes client to server");
    assert!(got_down == data, "{n} bytes server to client");
}

#[tokio::test]
async fn data_of_every_size_goes_both_ways_in_tls_1_3_and_1_2() {
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let (mut client, mut server) = pair(versions).await;
        let expect = if versions[0] == &rustls::version::TLS13 {
            ProtocolVersion::TLSv1_3
        } else {
            ProtocolVersion::TLSv1_2
        };
        assert_eq!(server.protocol_version(), Some(expect));
        for n in [1, 100, 8 * 1024, 16 * 1024 + 1, 200 * 1024] {
            exchange(&mut client, &mut server, n).await;
        }
    }
}

#[tokio::test]
async fn a_silent_client_costs_no_buffer() {
    let (mut client, mut server) = pair(&[&rustls::version::TLS13]).await;
    client.write_all(b"EHLO client\r\n").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 64];
    let n = server.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"EHLO client\r\n");
    server.write_all(b"250 ok\r\n").await.unwrap();
    server.flush().await.unwrap();
    // The client says nothing more: the read waits holding nothing.
    let waiting = futures_util::FutureExt::now_or_never(server.read(&mut buf));
    assert!(waiting.is_none(), "nothing to read");
    assert!(!server.holds_buffers(), "{server:?}");
    let n = client.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"250 ok\r\n");
}

#[tokio::test]
async fn a_client_key_update_is_followed() {
    let (mut client, mut server) = pair(&[&rustls::version::TLS13]).await;
    exchange(&mut client, &mut server, 1000).await;
    client.get_mut().1.refresh_traffic_keys().unwrap();
    exchange(&mut client, &mut server, 1000).await;
}

#[tokio::test]
async fn close_notify_is_end_of_input_and_a_bare_close_an_error() {
    let (mut client, mut server) = pair(&[&rustls::version::TLS13]).await;
    client.shutdown().await.unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(server.read(&mut buf).await.unwrap(), 0, "close_notify: end");
    server.shutdown().await.unwrap();
    assert_eq!(client.read(&mut buf).await.unwrap(), 0, "our close_notify");

    let (client, mut server) = pair(&[&rustls::version::TLS13]).await;
    drop(client);
    let err = server.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
}

#[tokio::test]
async fn a_client_that_is_not_tls_fails_the_handshake() {
    let pki = pki();
    let (mut c, s) = tokio::io::duplex(4096);
    let acceptor = TlsAcceptor::from(pki.server);
    c.write_all(b"EHLO client\r\n\r\n\r\n\r\n\r\n")
        .await
        .unwrap();
    let err = acceptor.accept(s).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    drop(c);

    let (c, s) = tokio::io::duplex(4096);
    drop(c);
    let err = TlsAcceptor::from(pki_server()).accept(s).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
}

fn pki_server() -> Arc<ServerConfig> {
    pki().server
}

#[tokio::test]
async fn works_on_a_tcp_socket() {
    let pki = pki();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(pki.server.clone());
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(s).await.unwrap();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.unwrap();
        tls.write_all(&got).await.unwrap();
        tls.shutdown().await.unwrap();
        got.len()
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("test.example").unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots.clone())
        .with_no_client_auth();
    let mut client = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let data = pattern(300 * 1024);
    client.write_all(&data).await.unwrap();
    client.get_mut().1.send_close_notify();
    client.flush().await.unwrap();
    let mut back = Vec::new();
    client.read_to_end(&mut back).await.unwrap();
    assert_eq!(server.await.unwrap(), data.len());
    assert!(back == data, "echoed whole");
}
