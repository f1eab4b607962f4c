//! Kafka's security model, without I/O: who a connection is (SASL PLAIN and SCRAM, or the
//! certificate the driver checked), and what a principal may do (ACLs).
//!
//! TLS itself is the driver's (rustls in node/); core learns a listener's protocol and a
//! verified client certificate's principal when the connection opens.

pub mod acl;
pub mod scram;

use scram::{Mechanism, ScramCredential, ScramServer};

/// Kafka's `security.protocol` of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    Plaintext,
    /// TLS; a client certificate, if required and verified, names the principal.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// The protocol's Kafka name (`SASL_SSL`).
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// The protocol a Kafka name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        use SecurityProtocol::*;
        [Plaintext, Ssl, SaslPlaintext, SaslSsl]
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// True if clients must authenticate with SASL before anything else.
    pub fn needs_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    /// True if the driver runs TLS on it.
    pub fn is_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// The principal of a connection nobody authenticated.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// How a connection came in, as the driver tells core when it opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// The listener's name (`PLAINTEXT`, `INTERNAL`, ...): Metadata answers with the
    /// brokers' addresses on the same listener.
    pub name: String,
    /// Its security protocol.
    pub protocol: SecurityProtocol,
    /// The principal of a client certificate the driver verified (`User:CN=alice,O=x`).
    pub tls_principal: Option<String>,
}

impl Default for Listener {
    fn default() -> Self {
        Listener {
            name: "PLAINTEXT".into(),
            protocol: SecurityProtocol::Plaintext,
            tls_principal: None,
        }
    }
}

/// The SASL mechanisms seedlog implements, by name.
pub const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Where one connection stands with SASL.
#[derive(Debug)]
pub enum Authentication {
    /// The connection's principal is settled (no SASL on its listener, or SASL done).
    Done {
        /// `User:name`.
        principal: String,
    },
    /// SASL is required; no SaslHandshake yet.
    Handshake,
    /// SaslHandshake chose PLAIN; its one token comes in SaslAuthenticate.
    Plain,
    /// SaslHandshake chose SCRAM; the exchange is under way.
    Scram(ScramServer),
}

impl Default for Authentication {
    /// An anonymous connection on a PLAINTEXT listener.
    fn default() -> Self {
        Authentication::Done {
            principal: ANONYMOUS.to_string(),
        }
    }
}

/// Why a SASL step failed, as Kafka reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslError {
    /// UNSUPPORTED_SASL_MECHANISM (33).
    Unsupported,
    /// ILLEGAL_SASL_STATE (34).
    IllegalState,
    /// SASL_AUTHENTICATION_FAILED (58), with the message for the client.
    Failed(String),
}

impl Authentication {
    /// The state of a new connection on `listener`.
    pub fn new(listener: &Listener) -> Self {
        if listener.protocol.needs_sasl() {
            return Authentication::Handshake;
        }
        let principal = listener.tls_principal.clone();
        Authentication::Done {
            principal: principal.unwrap_or_else(|| ANONYMOUS.to_string()),
        }
    }

    /// The principal, once settled.
    pub fn principal(&self) -> Option<&str> {
        match self {
            Authentication::Done { principal } => Some(principal),
            _ => None,
        }
    }

    /// SaslHandshake: chooses `mechanism` if it is among `enabled`.
    pub fn handshake(&mut self, mechanism: &str, enabled: &[String]) -> Result<(), SaslError> {
        if !matches!(self, Authentication::Handshake) {
            return Err(SaslError::IllegalState);
        }
        if !enabled.iter().any(|m| m == mechanism) {
            return Err(SaslError::Unsupported);
        }
        *self = match Mechanism::from_name(mechanism) {
            Some(m) => Authentication::Scram(ScramServer::new(m)),
            None if mechanism == "PLAIN" => Authentication::Plain,
            None => return Err(SaslError::Unsupported),
        };
        Ok(())
    }

    /// SaslAuthenticate: one token in, the answer token out. `credentials` finds a user's
    /// credentials (of every mechanism); `nonce` is a fresh server nonce. A failure ends
    /// the exchange: the connection is to be closed after the answer.
    pub fn authenticate(
        &mut self,
        token: &[u8],
        credentials: impl Fn(&str) -> Vec<ScramCredential>,
        nonce: &str,
    ) -> Result<Vec<u8>, SaslError> {
        let failed = SaslError::Failed;
        match std::mem::replace(self, Authentication::Handshake) {
            Authentication::Plain => {
                let user = plain(token, credentials).map_err(failed)?;
                *self = Authentication::Done {
                    principal: format!("User:{user}"),
                };
                Ok(Vec::new())
            }
            Authentication::Scram(mut server) => {
                let want = match &server {
                    ScramServer::First(m) => *m as i32,
                    _ => 0,
                };
                let lookup =
                    |user: &str| credentials(user).into_iter().find(|c| c.mechanism == want);
                let (answer, user) = server.step(token, lookup, nonce).map_err(failed)?;
                *self = match user {
                    Some(user) => Authentication::Done {
                        principal: format!("User:{user}"),
                    },
                    None => Authentication::Scram(server),
                };
                Ok(answer)
            }
            other => {
                *self = other;
                Err(SaslError::IllegalState)
            }
        }
    }
}

/// SASL/PLAIN (RFC 4616): `authzid NUL user NUL password`, checked against the user's
/// SCRAM credential.
fn plain(
    token: &[u8],
    credentials: impl Fn(&str) -> Vec<ScramCredential>,
) -> Result<String, String> {
    let mut parts = token.split(|b| *b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed PLAIN token".into());
    };
    let user = std::str::from_utf8(user).map_err(|_| "PLAIN user is not UTF-8")?;
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return Err(format!("user {user} cannot act as another"));
    }
    let known = credentials(user);
    if known.iter().any(|c| c.verify_password(password)) {
        Ok(user.to_string())
    } else {
        Err("authentication failed: invalid username or password".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(protocol: SecurityProtocol) -> Listener {
        Listener {
            protocol,
            ..Listener::default()
        }
    }

    fn alice() -> Vec<ScramCredential> {
        let salted = Mechanism::Sha256.salted_password(b"pw", b"salt", 4096);
        vec![ScramCredential::from_salted(
            "alice",
            Mechanism::Sha256,
            b"salt",
            4096,
            &salted,
        )]
    }

    fn lookup(user: &str) -> Vec<ScramCredential> {
        if user == "alice" {
            alice()
        } else {
            vec![]
        }
    }

    #[test]
    fn plaintext_is_anonymous_and_a_checked_certificate_names_its_owner() {
        let plain = Authentication::new(&listener(SecurityProtocol::Plaintext));
        assert_eq!(plain.principal(), Some(ANONYMOUS));
        let ssl = Listener {
            tls_principal: Some("User:CN=alice".into()),
            ..listener(SecurityProtocol::Ssl)
        };
        assert_eq!(Authentication::new(&ssl).principal(), Some("User:CN=alice"));
        assert_eq!(
            Authentication::new(&listener(SecurityProtocol::SaslSsl)).principal(),
            None
        );
    }

    #[test]
    fn plain_checks_the_password_against_the_scram_credential() {
        let enabled: Vec<String> = MECHANISMS.iter().map(|m| m.to_string()).collect();
        let mut a = Authentication::new(&listener(SecurityProtocol::SaslPlaintext));
        assert_eq!(
            a.authenticate(b"x", lookup, "n"),
            Err(SaslError::IllegalState)
        );
        a.handshake("PLAIN", &enabled).unwrap();
        assert_eq!(a.handshake("PLAIN", &enabled), Err(SaslError::IllegalState));
        a.authenticate(b"\0alice\0pw", lookup, "n").unwrap();
        assert_eq!(a.principal(), Some("User:alice"));

        for token in [
            &b"\0alice\0wrong"[..],
            b"\0bob\0pw",
            b"alice\0pw",
            b"bob\0alice\0pw",
        ] {
            let mut a = Authentication::new(&listener(SecurityProtocol::SaslPlaintext));
            a.handshake("PLAIN", &enabled).unwrap();
            assert!(matches!(
                a.authenticate(token, lookup, "n"),
                Err(SaslError::Failed(_))
            ));
            assert_eq!(a.principal(), None);
        }
    }

    #[test]
    fn handshake_offers_only_enabled_mechanisms() {
        let enabled = vec!["SCRAM-SHA-512".to_string()];
        let mut a = Authentication::new(&listener(SecurityProtocol::SaslSsl));
        assert_eq!(a.handshake("PLAIN", &enabled), Err(SaslError::Unsupported));
        assert_eq!(
            a.handshake("GSSAPI", &["GSSAPI".into()]),
            Err(SaslError::Unsupported)
        );
        a.handshake("SCRAM-SHA-512", &enabled).unwrap();
        // alice has only a SHA-256 credential.
        let first = scram::client::first("alice", "c");
        assert!(matches!(
            a.authenticate(first.as_bytes(), lookup, "s"),
            Err(SaslError::Failed(_))
        ));
    }

    #[test]
    fn scram_through_the_connection_state() {
        let enabled = vec!["SCRAM-SHA-256".to_string()];
        let mut a = Authentication::new(&listener(SecurityProtocol::SaslPlaintext));
        a.handshake("SCRAM-SHA-256", &enabled).unwrap();
        let first = scram::client::first("alice", "c");
        let server_first = a.authenticate(first.as_bytes(), lookup, "s").unwrap();
        assert_eq!(a.principal(), None);
        let server_first = String::from_utf8(server_first).unwrap();
        let (last, expected) =
            scram::client::last(Mechanism::Sha256, "pw", &first, &server_first).unwrap();
        let answer = a.authenticate(last.as_bytes(), lookup, "s").unwrap();
        assert_eq!(answer, expected.into_bytes());
        assert_eq!(a.principal(), Some("User:alice"));
    }
}
