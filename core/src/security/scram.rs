//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka uses them: the stored
//! credential (salt, iterations, StoredKey, ServerKey; never the password), and the server's
//! side of one exchange as a two-step state machine.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

/// Kafka's codes for the two mechanisms (AlterUserScramCredentials).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mechanism {
    /// SCRAM-SHA-256.
    Sha256 = 1,
    /// SCRAM-SHA-512.
    Sha512 = 2,
}

/// Fewest iterations Kafka accepts for a credential.
pub const MIN_ITERATIONS: i32 = 4096;
/// Most iterations Kafka accepts: a credential costs every login this many HMACs.
pub const MAX_ITERATIONS: i32 = 16384;

impl Mechanism {
    /// Both, in code order.
    pub const ALL: [Mechanism; 2] = [Mechanism::Sha256, Mechanism::Sha512];

    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha256 => "SCRAM-SHA-256",
            Mechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism a SASL name or a Kafka code stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The mechanism of a Kafka code.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|m| *m as i32 == code)
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC takes a key of any length, so `new_from_slice` cannot fail.
        match self {
            Mechanism::Sha256 => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            Mechanism::Sha512 => {
                let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("any key length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => Sha256::digest(data).to_vec(),
            Mechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// RFC 5802's `Hi(password, salt, iterations)`: PBKDF2 with this HMAC, one block.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: i32) -> Vec<u8> {
        let mut u = self.hmac(password, &[salt, &1u32.to_be_bytes()].concat());
        let mut out = u.clone();
        for _ in 1..iterations {
            u = self.hmac(password, &u);
            out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
        }
        out
    }
}

/// A user's credential for one mechanism, as the metadata log keeps it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ScramCredential {
    /// The user name (the principal is `User:<name>`).
    #[prost(string, tag = "1")]
    pub user: String,
    /// [`Mechanism`] code.
    #[prost(int32, tag = "2")]
    pub mechanism: i32,
    /// The salt.
    #[prost(bytes = "vec", tag = "3")]
    pub salt: Vec<u8>,
    /// Hi's iterations.
    #[prost(int32, tag = "4")]
    pub iterations: i32,
    /// H(HMAC(SaltedPassword, "Client Key")).
    #[prost(bytes = "vec", tag = "5")]
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    #[prost(bytes = "vec", tag = "6")]
    pub server_key: Vec<u8>,
}

impl ScramCredential {
    /// The credential for a salted password (what AlterUserScramCredentials carries).
    pub fn from_salted(
        user: &str,
        mechanism: Mechanism,
        salt: &[u8],
        iterations: i32,
        salted_password: &[u8],
    ) -> Self {
        let client_key = mechanism.hmac(salted_password, b"Client Key");
        ScramCredential {
            user: user.to_string(),
            mechanism: mechanism as i32,
            salt: salt.to_vec(),
            iterations,
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.hmac(salted_password, b"Server Key"),
        }
    }

    fn mech(&self) -> Option<Mechanism> {
        Mechanism::from_code(self.mechanism)
    }

    /// True if `password` is the one this credential was made from (SASL/PLAIN checks its
    /// passwords this way, so no password is ever stored in clear).
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let Some(m) = self.mech() else { return false };
        let salted = m.salted_password(password, &self.salt, self.iterations);
        let client_key = m.hmac(&salted, b"Client Key");
        same(&m.hash(&client_key), &self.stored_key)
    }
}

/// Compares secrets in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The server's side of one SCRAM exchange.
#[derive(Debug)]
pub enum ScramServer {
    /// Waiting for the client-first message.
    First(Mechanism),
    /// Server-first sent; waiting for client-final.
    Final(Box<Exchange>),
    /// Finished, or failed: every further message fails.
    Done,
}

/// What the server remembers between the two messages.
#[derive(Debug)]
pub struct Exchange {
    credential: ScramCredential,
    mechanism: Mechanism,
    /// `c=` that client-final must carry: the GS2 header, base64.
    channel_binding: String,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

impl ScramServer {
    /// An exchange for `mechanism`.
    pub fn new(mechanism: Mechanism) -> Self {
        ScramServer::First(mechanism)
    }

    /// Handles one client message and returns the server's answer. The first message's
    /// user is looked up with `credential`; `server_nonce` must be fresh and unpredictable
    /// (printable, no comma). Returns the user name with the last answer.
    pub fn step(
        &mut self,
        message: &[u8],
        credential: impl FnOnce(&str) -> Option<ScramCredential>,
        server_nonce: &str,
    ) -> Result<(Vec<u8>, Option<String>), String> {
        let text = std::str::from_utf8(message).map_err(|_| "SCRAM message is not UTF-8")?;
        match std::mem::replace(self, ScramServer::Done) {
            ScramServer::First(mechanism) => {
                let exchange = client_first(mechanism, text, credential, server_nonce)?;
                let answer = exchange.server_first.clone().into_bytes();
                *self = ScramServer::Final(Box::new(exchange));
                Ok((answer, None))
            }
            ScramServer::Final(exchange) => {
                let answer = exchange.client_final(text)?;
                Ok((answer.into_bytes(), Some(exchange.credential.user.clone())))
            }
            ScramServer::Done => Err("the SCRAM exchange is over".into()),
        }
    }
}

fn client_first(
    mechanism: Mechanism,
    text: &str,
    credential: impl FnOnce(&str) -> Option<ScramCredential>,
    server_nonce: &str,
) -> Result<Exchange, String> {
    // gs2-header = ("n" | "y") "," [ "a=" authzid ] ","; channel binding ("p=") is not
    // offered by Kafka.
    let mut parts = text.splitn(3, ',');
    let (flag, authzid, bare) = (parts.next(), parts.next(), parts.next());
    let (Some(flag @ ("n" | "y")), Some(authzid), Some(bare)) = (flag, authzid, bare) else {
        return Err("malformed SCRAM client-first message".into());
    };
    let mut user = None;
    let mut client_nonce = None;
    for attribute in bare.split(',') {
        match attribute.split_once('=') {
            Some(("n", name)) => user = Some(sasl_name(name)?),
            Some(("r", nonce)) if !nonce.is_empty() => client_nonce = Some(nonce),
            Some(("tokenauth", _)) => return Err("delegation tokens are not supported".into()),
            Some(("m", _)) => return Err("SCRAM mandatory extensions are not supported".into()),
            _ => {} // Other extensions: ignored, as RFC 5802 allows.
        }
    }
    let (Some(user), Some(client_nonce)) = (user, client_nonce) else {
        return Err("SCRAM client-first lacks a user or a nonce".into());
    };
    if let Some(authzid) = authzid.strip_prefix("a=") {
        if sasl_name(authzid)? != user {
            return Err(format!("user {user} cannot act as {authzid}"));
        }
    }
    let credential = credential(&user)
        .filter(|c| c.mech() == Some(mechanism))
        .ok_or("authentication failed: invalid user credentials")?;
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        BASE64.encode(&credential.salt),
        credential.iterations
    );
    let gs2_header = &text[..flag.len() + authzid.len() + 2];
    Ok(Exchange {
        credential,
        mechanism,
        channel_binding: BASE64.encode(gs2_header),
        nonce,
        client_first_bare: bare.to_string(),
        server_first,
    })
}

impl Exchange {
    fn client_final(&self, text: &str) -> Result<String, String> {
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or("SCRAM client-final lacks a proof")?;
        let mut attributes = without_proof.split(',');
        if attributes.next() != Some(&format!("c={}", self.channel_binding)) {
            return Err("SCRAM channel binding does not match".into());
        }
        if attributes.next() != Some(&format!("r={}", self.nonce)) {
            return Err("SCRAM nonce does not match".into());
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| "SCRAM proof is not base64")?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let m = self.mechanism;
        let signature = m.hmac(&self.credential.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err("authentication failed: invalid user credentials".into());
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        if !same(&m.hash(&client_key), &self.credential.stored_key) {
            return Err("authentication failed: invalid user credentials".into());
        }
        let server_signature = m.hmac(&self.credential.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)))
    }
}

/// Decodes RFC 5802's saslname (`=2C` is a comma, `=3D` an equals sign).
fn sasl_name(name: &str) -> Result<String, String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(format!("bad escape in SCRAM name {name}")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The client's side of an exchange, for seedlog's own tools and tests.
pub mod client {
    use super::*;

    /// client-first for `user` with `nonce`.
    pub fn first(user: &str, nonce: &str) -> String {
        let name = user.replace('=', "=3D").replace(',', "=2C");
        format!("n,,n={name},r={nonce}")
    }

    /// client-final for the server's first answer, and the server signature to expect.
    pub fn last(
        mechanism: Mechanism,
        password: &str,
        client_first: &str,
        server_first: &str,
    ) -> Result<(String, String), String> {
        let field = |key: &str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(key))
                .ok_or(format!("server-first lacks {key}"))
        };
        let nonce = field("r=")?;
        let salt = BASE64.decode(field("s=")?).map_err(|e| e.to_string())?;
        let iterations: i32 = field("i=")?.parse().map_err(|_| "bad iteration count")?;
        let salted = mechanism.salted_password(password.as_bytes(), &salt, iterations);
        let without_proof = format!("c=biws,r={nonce}");
        let bare = client_first
            .strip_prefix("n,,")
            .ok_or("client-first lacks n,,")?;
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let client_key = mechanism.hmac(&salted, b"Client Key");
        let signature = mechanism.hmac(&mechanism.hash(&client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = mechanism.hmac(&salted, b"Server Key");
        let expected = mechanism.hmac(&server_key, auth_message.as_bytes());
        Ok((
            format!("{without_proof},p={}", BASE64.encode(proof)),
            format!("v={}", BASE64.encode(expected)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SCRAM-SHA-256 example exchange of RFC 7677, section 3.
    #[test]
    fn rfc7677_exchange() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = Mechanism::Sha256.salted_password(b"pencil", &salt, 4096);
        let credential =
            ScramCredential::from_salted("user", Mechanism::Sha256, &salt, 4096, &salted);
        let mut server = ScramServer::new(Mechanism::Sha256);
        let (first, user) = server
            .step(
                b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
                |_| Some(credential.clone()),
                "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            )
            .unwrap();
        assert_eq!(user, None);
        assert_eq!(
            String::from_utf8(first).unwrap(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let last = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let (answer, user) = server.step(last.as_bytes(), |_| None, "").unwrap();
        assert_eq!(
            String::from_utf8(answer).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert_eq!(user.as_deref(), Some("user"));
        assert!(
            server.step(b"again", |_| None, "").is_err(),
            "an exchange ends once"
        );
    }

    fn exchange(mechanism: Mechanism, stored_password: &str, password: &str) -> Result<(), String> {
        let salted = mechanism.salted_password(stored_password.as_bytes(), b"salt", 4096);
        let credential = ScramCredential::from_salted("a,b=c", mechanism, b"salt", 4096, &salted);
        assert!(credential.verify_password(stored_password.as_bytes()));
        let mut server = ScramServer::new(mechanism);
        let first = client::first("a,b=c", "clientnonce");
        let (server_first, _) = server.step(
            first.as_bytes(),
            |u| (u == "a,b=c").then(|| credential.clone()),
            "servernonce",
        )?;
        let server_first = String::from_utf8(server_first).unwrap();
        let (last, expected) = client::last(mechanism, password, &first, &server_first)?;
        let (answer, user) = server.step(last.as_bytes(), |_| None, "")?;
        assert_eq!(String::from_utf8(answer).unwrap(), expected);
        assert_eq!(user.as_deref(), Some("a,b=c"));
        Ok(())
    }

    #[test]
    fn both_mechanisms_accept_the_password_and_refuse_another() {
        for m in Mechanism::ALL {
            exchange(m, "secret", "secret").unwrap();
            let refused = exchange(m, "secret", "guess").unwrap_err();
            assert!(refused.contains("invalid user credentials"), "{refused}");
        }
    }

    #[test]
    fn unknown_users_wrong_mechanisms_and_garbage_are_refused() {
        let salted = Mechanism::Sha512.salted_password(b"pw", b"s", 4096);
        let c = ScramCredential::from_salted("u", Mechanism::Sha512, b"s", 4096, &salted);
        let first = |m, msg: &[u8]| {
            ScramServer::new(m)
                .step(msg, |_| Some(c.clone()), "n")
                .map(|_| ())
        };
        assert!(
            first(Mechanism::Sha256, b"n,,n=u,r=x").is_err(),
            "a SHA-512 credential is not a SHA-256 one"
        );
        assert!(first(Mechanism::Sha512, b"n,,n=u,r=x").is_ok());
        assert!(first(Mechanism::Sha512, b"n,a=other,n=u,r=x").is_err());
        assert!(first(Mechanism::Sha512, b"p=tls,,n=u,r=x").is_err());
        assert!(first(Mechanism::Sha512, b"n,,n=u=ZZ,r=x").is_err());
        assert!(first(Mechanism::Sha512, b"\xff").is_err());
        assert!(first(Mechanism::Sha512, b"").is_err());
        assert!(!c.verify_password(b"nope"));
    }
}
