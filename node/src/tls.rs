//! TLS for client listeners with rustls: the server certificate from a PEM keystore, client
//! certificates checked against a PEM truststore when `ssl.client.auth` asks for them, and
//! the keystore read again when its file changes, so a renewed certificate needs no restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{info, warn};

use crate::listeners::ClientStream;

/// Kafka's `ssl.client.auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate asked for.
    None,
    /// Asked for; a client without one is anonymous.
    Requested,
    /// A client without a valid one is refused.
    Required,
}

impl ClientAuth {
    /// Parses `none`, `requested` or `required`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(match text {
            "none" => ClientAuth::None,
            "requested" => ClientAuth::Requested,
            "required" => ClientAuth::Required,
            other => bail!("ssl_client_auth must be none, requested or required, not {other:?}"),
        })
    }
}

/// Where the TLS material is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM with the certificate chain and its private key (`ssl.keystore.location`).
    pub keystore: PathBuf,
    /// PEM with the CA certificates client certificates must chain to
    /// (`ssl.truststore.location`).
    pub truststore: Option<PathBuf>,
    /// `ssl.client.auth`.
    pub client_auth: ClientAuth,
}

/// The server side of TLS, shared by every TLS listener.
pub struct TlsServer {
    settings: TlsSettings,
    /// The acceptor and the keystore's modification time it was built from.
    current: Mutex<(Acceptors, Option<SystemTime>)>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The acceptors for SSL listeners (asking for client certificates as `ssl.client.auth`
/// says) and for SASL_SSL listeners (which authenticate with SASL and ask for none).
#[derive(Clone)]
struct Acceptors {
    ssl: TlsAcceptor,
    sasl_ssl: TlsAcceptor,
}

fn build(settings: &TlsSettings) -> anyhow::Result<Acceptors> {
    Ok(Acceptors {
        ssl: build_one(settings)?,
        sasl_ssl: build_one(&TlsSettings {
            client_auth: ClientAuth::None,
            ..settings.clone()
        })?,
    })
}

/// A keystore's certificate chain and private key.
type Keystore = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn read_keystore(path: &Path) -> anyhow::Result<Keystore> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    let key = PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading the private key in {}", path.display()))?;
    Ok((chain, key))
}

fn read_truststore(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
    {
        let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
        roots.add(cert).context("adding a truststore certificate")?;
    }
    Ok(roots)
}

fn build_one(settings: &TlsSettings) -> anyhow::Result<TlsAcceptor> {
    let (chain, key) = read_keystore(&settings.keystore)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match (settings.client_auth, &settings.truststore) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => bail!("ssl_client_auth needs ssl_truststore_location"),
        (auth, Some(truststore)) => {
            let roots = read_truststore(truststore)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = match auth {
                ClientAuth::Requested => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder
                .with_client_cert_verifier(verifier.build().context("client certificate verifier")?)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .context("the keystore's certificate and key do not go together")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl TlsServer {
    /// Loads the keystore (and truststore): fails at start if they cannot be used.
    pub fn load(settings: TlsSettings) -> anyhow::Result<Self> {
        let acceptor = build(&settings)?;
        let stamp = modified(&settings.keystore);
        Ok(TlsServer {
            settings,
            current: Mutex::new((acceptor, stamp)),
        })
    }

    /// The acceptor, rebuilt first if the keystore file changed. A keystore that no longer
    /// loads keeps the last good one (and says so).
    fn acceptors(&self) -> Acceptors {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = modified(&self.settings.keystore);
        if stamp != current.1 {
            match build(&self.settings) {
                Ok(acceptor) => {
                    info!(keystore = %self.settings.keystore.display(), "TLS keystore reloaded");
                    *current = (acceptor, stamp);
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "TLS keystore changed but does not load; keeping the old one");
                    current.1 = stamp;
                }
            }
        }
        current.0.clone()
    }

    /// Runs the handshake; returns the stream and, if the client showed a certificate the
    /// truststore vouches for, its principal (`User:` and its subject, as Kafka names it).
    /// `sasl` listeners ask for no client certificate: SASL says who the client is.
    pub async fn accept(
        &self,
        stream: TcpStream,
        sasl: bool,
    ) -> anyhow::Result<(Box<dyn ClientStream>, Option<String>)> {
        let acceptors = self.acceptors();
        let acceptor = if sasl {
            acceptors.sasl_ssl
        } else {
            acceptors.ssl
        };
        let stream = acceptor.accept(stream).await.context("handshake")?;
        let principal = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| subject_principal(cert.as_ref()))
            .transpose()?;
        Ok((Box::new(stream), principal))
    }
}

/// TLS between brokers: each presents the keystore's certificate and checks the other's
/// against the truststore (mutual TLS, `inter_broker_security_protocol = "SSL"`).
pub struct PeerTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl PeerTls {
    /// Loads the keystore and truststore; both are needed.
    pub fn load(settings: &TlsSettings) -> anyhow::Result<Self> {
        let Some(truststore) = &settings.truststore else {
            bail!("TLS between brokers needs ssl_truststore_location");
        };
        let acceptor = build_one(&TlsSettings {
            client_auth: ClientAuth::Required,
            ..settings.clone()
        })?;
        let (chain, key) = read_keystore(&settings.keystore)?;
        let roots = read_truststore(truststore)?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("the keystore's certificate and key do not go together")?;
        Ok(PeerTls {
            acceptor,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// TLS to the peer at `addr` (`host:port`), whose certificate must name `host`.
    pub async fn connect(
        &self,
        stream: TcpStream,
        addr: &str,
    ) -> anyhow::Result<Box<dyn ClientStream>> {
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_matches(['[', ']']);
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .with_context(|| format!("{host} is not a host name or address"))?;
        let stream = self
            .connector
            .connect(name, stream)
            .await
            .context("TLS to a peer")?;
        Ok(Box::new(stream))
    }

    /// TLS from a peer, whose certificate the truststore must vouch for.
    pub async fn accept(&self, stream: TcpStream) -> anyhow::Result<Box<dyn ClientStream>> {
        let stream = self
            .acceptor
            .accept(stream)
            .await
            .context("TLS from a peer")?;
        Ok(Box::new(stream))
    }
}

/// `User:CN=alice,O=Example` from a DER certificate: its subject's attributes, last RDN
/// first, as Kafka's default principal builder writes them (RFC 2253).
pub fn subject_principal(der: &[u8]) -> anyhow::Result<String> {
    let subject = subject(der).context("reading the client certificate's subject")?;
    Ok(format!("User:{subject}"))
}

fn subject(der: &[u8]) -> Option<String> {
    let (certificate, _) = der_element(der, 0x30)?;
    let (tbs, _) = der_element(certificate, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_any(rest)?.1; // version
    }
    // serial, signature algorithm, issuer, validity, then the subject.
    for _ in 0..4 {
        rest = der_any(rest)?.1;
    }
    let (mut names, _) = der_element(rest, 0x30)?;
    let mut parts = Vec::new();
    while !names.is_empty() {
        let (set, after) = der_element(names, 0x31)?;
        names = after;
        let (pair, _) = der_element(set, 0x30)?;
        let (oid, value) = der_element(pair, 0x06)?;
        let (value, _) = der_any(value)?;
        let key = match oid {
            [0x55, 0x04, 0x03] => "CN".to_string(),
            [0x55, 0x04, 0x06] => "C".into(),
            [0x55, 0x04, 0x07] => "L".into(),
            [0x55, 0x04, 0x08] => "ST".into(),
            [0x55, 0x04, 0x0a] => "O".into(),
            [0x55, 0x04, 0x0b] => "OU".into(),
            other => other.iter().map(|b| format!("{b:02x}")).collect(),
        };
        let text = String::from_utf8_lossy(value.1);
        let escaped: String = text
            .chars()
            .flat_map(|c| match c {
                ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        parts.push(format!("{key}={escaped}"));
    }
    parts.reverse();
    Some(parts.join(","))
}

/// One DER element: (its tag and contents, what follows).
#[allow(clippy::type_complexity)]
fn der_any(input: &[u8]) -> Option<((u8, &[u8]), &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |n, b| (n << 8) | usize::from(*b));
        rest = &rest[count..];
        len
    };
    (rest.len() >= len).then(|| ((tag, &rest[..len]), &rest[len..]))
}

fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let ((found, contents), rest) = der_any(input)?;
    (found == tag).then_some((contents, rest))
}
