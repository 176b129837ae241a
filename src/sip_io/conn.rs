//! TCP and TLS connections: one task per peer that writes what the driver hands it
//! and frames what it reads (Content-Length, `sip::frame_stream`).

use crate::sip::TlsTarget;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// What connection tasks tell the driver.
pub(super) enum StreamEvent {
    Message(SocketAddr, Vec<u8>),
    Closed(SocketAddr),
}

/// How a connection comes about.
pub(super) enum Connect {
    /// The peer connected to our listener.
    Accepted(TcpStream),
    /// We connect, plain TCP.
    Tcp,
    /// We connect and then do a TLS handshake, verifying the peer's certificate.
    Tls(TlsPeer),
}

/// What a TLS connection to one peer checks: the name its certificate must carry and
/// the roots it must chain to.
#[derive(Clone)]
pub(super) struct TlsPeer {
    server_name: rustls::pki_types::ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
}

/// The certificates in a PEM file (for a trunk's `tls_ca`).
pub(super) fn parse_ca_pem(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::pem::Error> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()
}

/// Why no TLS client could be made for a trunk (each names the file or name at fault).
#[derive(Debug, thiserror::Error)]
pub(super) enum TlsSetupError {
    /// The `tls_ca` file cannot be read.
    #[error("{}: cannot read: {source}", path.display())]
    CaUnreadable {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The `tls_ca` file is not PEM, or a certificate in it is unusable.
    #[error("{}: bad PEM: {message}", path.display())]
    CaInvalid {
        /// The file.
        path: std::path::PathBuf,
        /// What rustls said.
        message: String,
    },
    /// rustls refused its own defaults (a build without a usable provider).
    #[error("TLS client setup: {0}")]
    Rustls(#[from] rustls::Error),
    /// The proxy host is not a valid TLS server name.
    #[error("{name:?} is not a valid TLS server name: {message}")]
    ServerName {
        /// The name.
        name: String,
        /// Why.
        message: String,
    },
}

/// A TLS client for `target`: its CA file's roots, else the public web PKI roots.
pub(super) fn tls_peer(target: &TlsTarget) -> Result<TlsPeer, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match &target.ca_file {
        Some(path) => {
            let invalid = |message: String| TlsSetupError::CaInvalid {
                path: path.clone(),
                message,
            };
            let pem = std::fs::read(path).map_err(|source| TlsSetupError::CaUnreadable {
                path: path.clone(),
                source,
            })?;
            for cert in parse_ca_pem(&pem).map_err(|e| invalid(e.to_string()))? {
                roots.add(cert).map_err(|e| invalid(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name =
        rustls::pki_types::ServerName::try_from(target.server_name.clone()).map_err(|e| {
            TlsSetupError::ServerName {
                name: target.server_name.clone(),
                message: e.to_string(),
            }
        })?;
    Ok(TlsPeer {
        server_name,
        config: Arc::new(config),
    })
}

/// One TCP (or TLS) connection: writes what arrives on `outgoing`, frames what it reads.
pub(super) async fn run_connection(
    connect: Connect,
    peer: SocketAddr,
    outgoing: mpsc::UnboundedReceiver<Vec<u8>>,
    events: mpsc::UnboundedSender<StreamEvent>,
) {
    const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
    let dial = async {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "SIP TCP connect failed");
                None
            }
            Err(_) => {
                debug!(%peer, "SIP TCP connect timed out");
                None
            }
        }
    };
    let (stream, tls) = match connect {
        Connect::Accepted(s) => (Some(s), None),
        Connect::Tcp => (dial.await, None),
        Connect::Tls(t) => (dial.await, Some(t)),
    };
    let Some(stream) = stream else {
        let _ = events.send(StreamEvent::Closed(peer));
        return;
    };
    let _ = stream.set_nodelay(true);
    let Some(t) = tls else {
        return pump(stream, peer, outgoing, events).await;
    };
    let connector = tokio_rustls::TlsConnector::from(t.config);
    match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(t.server_name, stream)).await {
        Ok(Ok(tls)) => pump(tls, peer, outgoing, events).await,
        Ok(Err(e)) => {
            // E.g. a certificate that does not verify: nothing is sent.
            warn!(%peer, error = %e, "SIP TLS handshake failed");
            let _ = events.send(StreamEvent::Closed(peer));
        }
        Err(_) => {
            warn!(%peer, "SIP TLS handshake timed out");
            let _ = events.send(StreamEvent::Closed(peer));
        }
    }
}

/// Moves SIP messages over one established stream until either side closes.
async fn pump<S>(
    stream: S,
    peer: SocketAddr,
    mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>,
    events: mpsc::UnboundedSender<StreamEvent>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16384];
    loop {
        tokio::select! {
            out = outgoing.recv() => match out {
                Some(bytes) => {
                    if let Err(e) = writer.write_all(&bytes).await {
                        debug!(%peer, error = %e, "SIP TCP write failed");
                        break;
                    }
                }
                None => break,
            },
            read = reader.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    loop {
                        match crate::sip::frame_stream(&buf) {
                            Ok(Some((skip, len))) => {
                                let msg = buf[skip..skip + len].to_vec();
                                buf.drain(..skip + len);
                                let _ = events.send(StreamEvent::Message(peer, msg));
                            }
                            Ok(None) => break,
                            Err(e) => {
                                // A stream that cannot be framed cannot be resynchronised.
                                debug!(%peer, error = %e, "closing unframeable SIP TCP stream");
                                let _ = events.send(StreamEvent::Closed(peer));
                                return;
                            }
                        }
                    }
                }
            },
        }
    }
    let _ = events.send(StreamEvent::Closed(peer));
}
