//! TLS for the SMTP and IMAP listeners (rustls with the ring provider): the
//! server configuration built from the `[tls]` files, which the caller
//! opened with `Handoff::open_privileged` (so a root-only key works in the
//! unprivileged child: it reads the descriptor the root parent passed), and
//! the stream a session runs on, which STARTTLS upgrades in place.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tls_stream::{TlsAcceptor, TlsStream};

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest certificate chain or key file read.
const MAX_PEM: u64 = 1 << 20;

/// Why the TLS configuration could not be built. Every message names the
/// file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("tls file {}: cannot read it: {source}; check that it is a readable PEM file of at most 1 MiB", path.display())]
    Read {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("tls.cert {}: no PEM certificate found ({reason}); give the PEM certificate chain (`-----BEGIN CERTIFICATE-----`), server certificate first", path.display())]
    NoCertificate {
        /// The configured path.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// The key file holds no usable private key.
    #[error("tls.key {}: no PEM private key found ({reason}); give a PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key in PEM", path.display())]
    NoKey {
        /// The configured path.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// rustls refused the pair (a key that does not match the certificate,
    /// an unsupported key type).
    #[error("tls: certificate {} and key {} cannot be used together: {source}; check that the key belongs to the certificate", cert.display(), key.display())]
    Config {
        /// The configured certificate path.
        cert: PathBuf,
        /// The configured key path.
        key: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
}

/// Builds the TLS server configuration from the open certificate chain and
/// key files (`cert_path` and `key_path` name them in errors). TLS 1.2 and
/// 1.3, no client certificates.
///
/// ```
/// use std::io::Write;
/// let dir = tempfile::tempdir()?;
/// let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
/// let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
/// std::fs::write(&cert, pair.cert.pem())?;
/// std::fs::write(&key, pair.key_pair.serialize_pem())?;
/// let config = lifecycle_gateway::tls_server_config(
///     &cert, std::fs::File::open(&cert)?, &key, std::fs::File::open(&key)?)?;
/// assert!(config.alpn_protocols.is_empty());
///
/// // The key given twice: named as the culprit.
/// let err = lifecycle_gateway::tls_server_config(
///     &key, std::fs::File::open(&key)?, &key, std::fs::File::open(&key)?).unwrap_err();
/// assert!(err.to_string().contains("no PEM certificate"), "{err}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn tls_server_config(
    cert_path: &Path,
    cert: File,
    key_path: &Path,
    key: File,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let no_cert = |reason: String| TlsError::NoCertificate {
        path: cert_path.to_owned(),
        reason,
    };
    let cert = read_from_start(cert_path, &cert)?;
    let key = read_from_start(key_path, &key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<_, _>>()
        .map_err(|e| no_cert(e.to_string()))?;
    if chain.is_empty() {
        return Err(no_cert("the file has no CERTIFICATE block".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| TlsError::NoKey {
        path: key_path.to_owned(),
        reason: e.to_string(),
    })?;
    let config_error = |source| TlsError::Config {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(config_error)?;
    Ok(Arc::new(config))
}

/// The whole file, read from offset 0 with `pread`: a passed descriptor
/// shares its offset with the parent's copy, which may have read it already.
fn read_from_start(path: &Path, file: &File) -> Result<Vec<u8>, TlsError> {
    let fail = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = file.read_at(&mut chunk, out.len() as u64).map_err(fail)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&chunk[..n]);
        if out.len() as u64 > MAX_PEM {
            return Err(fail(io::Error::other("larger than 1 MiB")));
        }
    }
}

/// The stream a session runs on: plain until STARTTLS, TLS after. (For
/// implicit TLS the session's stream is already a TLS stream, wrapped as
/// `Plain`.) Reads and writes of `Gone` fail: it only exists while the
/// handshake holds the stream.
#[derive(Debug)]
pub(crate) enum Upgradable<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the TLS handshake failed")
}

impl<S: AsyncRead + AsyncWrite + Unpin> Upgradable<S> {
    /// Runs the server handshake on the plain stream; on success the stream
    /// is TLS from now on. Fails (and leaves `Gone`) on a handshake error;
    /// the caller bounds the time.
    pub(crate) async fn upgrade(&mut self, acceptor: &TlsAcceptor) -> io::Result<()> {
        match std::mem::replace(self, Upgradable::Gone) {
            Upgradable::Plain(s) => {
                *self = Upgradable::Tls(acceptor.accept(s).await?);
                Ok(())
            }
            other => {
                *self = other;
                Err(io::Error::other("the stream is not plain"))
            }
        }
    }

    /// The negotiated protocol version and cipher suite, for the log.
    pub(crate) fn tls_details(&self) -> Option<(String, String)> {
        match self {
            Upgradable::Tls(t) => {
                let version = t
                    .protocol_version()
                    .map_or_else(|| "?".to_owned(), |v| format!("{v:?}"));
                let suite = t
                    .negotiated_cipher_suite()
                    .map_or_else(|| "?".to_owned(), |s| format!("{:?}", s.suite()));
                Some((version, suite))
            }
            _ => None,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Upgradable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgradable::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upgradable::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Upgradable::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Upgradable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upgradable::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upgradable::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Upgradable::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgradable::Plain(s) => Pin::new(s).poll_flush(cx),
            Upgradable::Tls(s) => Pin::new(s).poll_flush(cx),
            Upgradable::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgradable::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upgradable::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Upgradable::Gone => Poll::Ready(Ok(())),
        }
    }
}
