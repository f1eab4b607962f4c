//! Client listeners as Kafka names them: `listeners`, `advertised.listeners` and
//! `listener.security.protocol.map`, and the tasks that accept on them (a TLS handshake
//! first where the protocol says so), so that the driver only ever sees a ready stream.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use seedlog_core::security::{Listener, SecurityProtocol};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::warn;

/// A byte stream to a client: plain TCP, or TLS over it.
pub trait ClientStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientStream for T {}

/// One client listener of this broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Its name (`PLAINTEXT`, `CLIENT`, ...).
    pub name: String,
    /// Its security protocol.
    pub protocol: SecurityProtocol,
    /// Where it binds.
    pub bind: SocketAddr,
    /// Where clients are told to connect, if not the bound address.
    pub advertised: Option<(String, u16)>,
}

/// Parses `NAME://host:port,...` with the protocol map (`NAME:PROTOCOL,...`); a listener
/// named after a protocol needs no entry in the map.
pub fn parse_listeners(
    listeners: &str,
    advertised: Option<&str>,
    protocol_map: Option<&str>,
) -> anyhow::Result<Vec<ListenerConfig>> {
    let mut map = BTreeMap::new();
    for entry in protocol_map
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let (name, protocol) = entry.split_once(':').with_context(|| {
            format!("listener.security.protocol.map entry {entry:?} is not NAME:PROTOCOL")
        })?;
        let protocol = SecurityProtocol::from_name(protocol).with_context(|| {
            format!("unknown security protocol {protocol:?} for listener {name}")
        })?;
        map.insert(name.to_string(), protocol);
    }
    let advertised = match advertised {
        Some(text) => split_endpoints(text, "advertised.listeners")?,
        None => Vec::new(),
    };
    let mut out: Vec<ListenerConfig> = Vec::new();
    for (name, host, port) in split_endpoints(listeners, "listeners")? {
        let protocol = match map.get(&name) {
            Some(p) => *p,
            None => SecurityProtocol::from_name(&name).with_context(|| {
                format!("listener {name} is not a protocol name and not in listener.security.protocol.map")
            })?,
        };
        let host = if host.is_empty() {
            "0.0.0.0".to_string()
        } else {
            host
        };
        let bind: SocketAddr = format!("{host}:{port}")
            .parse()
            .or_else(|_| format!("[{host}]:{port}").parse())
            .with_context(|| {
                format!("listener {name} binds {host}:{port}, which is not ip:port")
            })?;
        if out.iter().any(|l| l.name == name) {
            bail!("listener {name} is listed twice");
        }
        let advertised = advertised
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, h, p)| (h.clone(), *p));
        out.push(ListenerConfig {
            name,
            protocol,
            bind,
            advertised,
        });
    }
    if let Some((name, _, _)) = advertised
        .iter()
        .find(|(n, _, _)| !out.iter().any(|l| l.name == *n))
    {
        bail!("advertised.listeners names {name}, which is not in listeners");
    }
    if out.is_empty() {
        bail!("listeners names no listener");
    }
    Ok(out)
}

/// `NAME://host:port` entries, comma separated.
fn split_endpoints(text: &str, key: &str) -> anyhow::Result<Vec<(String, String, u16)>> {
    let mut out = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, address) = entry
            .split_once("://")
            .with_context(|| format!("{key} entry {entry:?} is not NAME://host:port"))?;
        let (host, port) = address
            .rsplit_once(':')
            .with_context(|| format!("{key} entry {entry:?} has no port"))?;
        let port: u16 = port
            .parse()
            .with_context(|| format!("{key} entry {entry:?}: bad port"))?;
        out.push((
            name.to_string(),
            host.trim_matches(['[', ']']).to_string(),
            port,
        ));
    }
    Ok(out)
}

/// A connection accepted and, where its listener says so, through its TLS handshake.
pub struct Accepted {
    /// The stream, ready for Kafka frames.
    pub stream: Box<dyn ClientStream>,
    /// The client's address.
    pub peer: SocketAddr,
    /// How it came in, for core.
    pub listener: Listener,
}

/// How long a client has for its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS for the listeners whose protocol needs it.
#[derive(Clone)]
pub enum Tls {
    /// No listener uses TLS.
    None,
    /// The server side of every TLS listener.
    #[cfg(not(madsim))]
    Server(Arc<crate::tls::TlsServer>),
}

/// Accepts on `listener` forever, handing each ready connection to the driver.
pub async fn accept_clients(
    socket: TcpListener,
    config: ListenerConfig,
    tls: Tls,
    ready: mpsc::Sender<Accepted>,
) {
    let config = Arc::new(config);
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(listener = %config.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let listener = Listener {
            name: config.name.clone(),
            protocol: config.protocol,
            tls_principal: None,
        };
        if !config.protocol.is_tls() {
            let accepted = Accepted {
                stream: Box::new(stream),
                peer,
                listener,
            };
            if ready.send(accepted).await.is_err() {
                return; // The driver stopped.
            }
            continue;
        }
        // Each handshake in its own task: a slow client must not hold up the others.
        let (tls, ready) = (tls.clone(), ready.clone());
        tokio::spawn(async move {
            let sasl = listener.protocol.needs_sasl();
            let handshake =
                tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake(&tls, stream, sasl));
            match handshake.await {
                Ok(Ok((stream, tls_principal))) => {
                    let listener = Listener {
                        tls_principal,
                        ..listener
                    };
                    let _ = ready
                        .send(Accepted {
                            stream,
                            peer,
                            listener,
                        })
                        .await;
                }
                Ok(Err(e)) => {
                    warn!(%peer, listener = %listener.name, error = %format!("{e:#}"), "TLS handshake failed")
                }
                Err(_) => warn!(%peer, listener = %listener.name, "TLS handshake timed out"),
            }
        });
    }
}

type Handshaken = (Box<dyn ClientStream>, Option<String>);

async fn handshake(
    tls: &Tls,
    stream: tokio::net::TcpStream,
    sasl: bool,
) -> anyhow::Result<Handshaken> {
    match tls {
        Tls::None => {
            drop((stream, sasl));
            bail!("no TLS certificate configured (ssl_keystore_location)")
        }
        #[cfg(not(madsim))]
        Tls::Server(server) => server.accept(stream, sasl).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_take_protocols_from_their_names_or_the_map() {
        let listeners = parse_listeners(
            "PLAINTEXT://127.0.0.1:9092,CLIENT://0.0.0.0:9094, SSL://:9095",
            Some("CLIENT://broker1.example:19094"),
            Some("CLIENT:SASL_SSL"),
        )
        .unwrap();
        let summary: Vec<_> = listeners
            .iter()
            .map(|l| {
                (
                    l.name.as_str(),
                    l.protocol,
                    l.bind.to_string(),
                    l.advertised.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "PLAINTEXT",
                    SecurityProtocol::Plaintext,
                    "127.0.0.1:9092".into(),
                    None
                ),
                (
                    "CLIENT",
                    SecurityProtocol::SaslSsl,
                    "0.0.0.0:9094".into(),
                    Some(("broker1.example".into(), 19094))
                ),
                ("SSL", SecurityProtocol::Ssl, "0.0.0.0:9095".into(), None),
            ]
        );
    }

    #[test]
    fn bad_listeners_are_refused_with_the_entry() {
        let err = |l: &str, a: Option<&str>, m: Option<&str>| {
            format!("{:#}", parse_listeners(l, a, m).unwrap_err())
        };
        assert!(err("CLIENT://:9092", None, None).contains("not in listener.security.protocol.map"));
        assert!(err("PLAINTEXT:9092", None, None).contains("NAME://host:port"));
        assert!(err("PLAINTEXT://:x", None, None).contains("bad port"));
        assert!(err("PLAINTEXT://:1,PLAINTEXT://:2", None, None).contains("twice"));
        assert!(err("PLAINTEXT://:1", Some("OTHER://h:1"), None).contains("not in listeners"));
        assert!(err("A://:1", None, Some("A:KERBEROS")).contains("unknown security protocol"));
        assert!(err("", None, None).contains("no listener"));
    }
}
