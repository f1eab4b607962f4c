//! Credentials that change while clients log in: one client gives the user [`SASL_USER`] a
//! new password now and then, or deletes it, through the metadata quorum
//! (AlterUserScramCredentials); others log in on the brokers' SASL_PLAINTEXT listeners with
//! PLAIN or SCRAM, with the newest password or an older one. Each broker reports the
//! credentials it holds as it applies them, and the history judges every login it accepted
//! by them (`credentials-enforced`).

use super::*;
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    AlterUserScramCredentialsRequest, ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use seedlog_core::security::scram::{client, Mechanism, MIN_ITERATIONS};
use seedlog_node::client::Client;

use crate::cluster::SASL_PORT;
use crate::history::{sasl_password, SASL_USER};

/// Gives [`SASL_USER`] password 1, 2, 3 ... (for both SCRAM mechanisms), deleting the user
/// between two of them now and then, until the workload stops.
pub async fn credential_flipper(ctx: Ctx, id: u32) {
    let mut dice = Dice::new(ctx.plan.seed, 7200 + u64::from(id));
    let mut client = ctx.client(Duration::from_secs(3));
    let mut next = 1;
    while !ctx.stopped() {
        let request = if dice.chance(0.2) {
            let deletions = Mechanism::ALL
                .map(|m| {
                    ScramCredentialDeletion::default()
                        .with_name(StrBytes::from_static_str(SASL_USER))
                        .with_mechanism(m as i8)
                })
                .to_vec();
            ctx.history()
                .trace(ctx.now_ms(), ("delete-user", SASL_USER));
            AlterUserScramCredentialsRequest::default().with_deletions(deletions)
        } else {
            // Announced before it is sent: clients may try it while the quorum takes it.
            ctx.history().password_set(ctx.now_ms(), next);
            let upsertions = upsertions(&mut dice, &sasl_password(next));
            next += 1;
            AlterUserScramCredentialsRequest::default().with_upsertions(upsertions)
        };
        let outcome = client
            .call_any(
                ApiKey::AlterUserScramCredentials,
                0,
                RequestKind::AlterUserScramCredentials(request),
            )
            .await;
        let ok = matches!(&outcome, Ok(ResponseKind::AlterUserScramCredentials(r))
            if r.results.iter().all(|r| r.error_code == 0));
        ctx.history()
            .trace(ctx.now_ms(), ("credentials-altered", ok));
        sleep_ms(dice.between(200, 1500)).await;
    }
}

/// The credentials of `password` with a fresh salt, for both SCRAM mechanisms.
fn upsertions(dice: &mut Dice, password: &str) -> Vec<ScramCredentialUpsertion> {
    let salt: Vec<u8> = (0..16).map(|_| dice.between(0, 255) as u8).collect();
    Mechanism::ALL
        .map(|m| {
            let salted = m.salted_password(password.as_bytes(), &salt, MIN_ITERATIONS);
            ScramCredentialUpsertion::default()
                .with_name(StrBytes::from_static_str(SASL_USER))
                .with_mechanism(m as i8)
                .with_iterations(MIN_ITERATIONS)
                .with_salt(Bytes::from(salt.clone()))
                .with_salted_password(Bytes::from(salted))
        })
        .to_vec()
}

/// Logs in as [`SASL_USER`] on a broker drawn at random, on a new connection each time,
/// until the workload stops: mostly with the newest password, now and then with an older
/// one, with PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
pub async fn sasl_client(ctx: Ctx, id: u32) {
    let mut dice = Dice::new(ctx.plan.seed, 7300 + u64::from(id));
    while !ctx.stopped() {
        let index = dice.between(0, ctx.brokers.len() as u64 - 1) as usize;
        let broker = index as i32 + 1;
        let newest = ctx.history().newest_password();
        let n = if dice.chance(0.7) {
            newest
        } else {
            newest.saturating_sub(dice.between(1, 3) as u32)
        };
        let password = sasl_password(n);
        let mechanism = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"][dice.between(0, 2) as usize];
        let addr = SocketAddr::new(ctx.brokers[index].ip(), SASL_PORT);
        let mut connection = Client::new(addr, Duration::from_secs(3));
        let nonce = format!("{:016x}{:016x}", dice.between(0, u64::MAX - 1), id);
        let sent = ctx.now_ms();
        match login(&mut connection, mechanism, &password, &nonce).await {
            Ok(accepted) => {
                let now = ctx.now_ms();
                ctx.history()
                    .login(sent, now, broker, mechanism, &password, accepted)
            }
            // Unknown: the broker may or may not have taken it.
            Err(_) => ctx.history().trace(ctx.now_ms(), ("login-lost", broker)),
        }
        sleep_ms(dice.between(20, 300)).await;
    }
}

/// One SASL login of [`SASL_USER`]: true if the broker accepted it, false if it refused.
async fn login(
    connection: &mut Client,
    mechanism: &str,
    password: &str,
    nonce: &str,
) -> Result<bool, CallError> {
    let handshake = SaslHandshakeRequest::default()
        .with_mechanism(StrBytes::from_string(mechanism.to_string()));
    match connection
        .call(
            ApiKey::SaslHandshake,
            1,
            RequestKind::SaslHandshake(handshake),
        )
        .await?
    {
        ResponseKind::SaslHandshake(r) if r.error_code == 0 => {}
        other => return Err(CallError::Lost(format!("handshake answered {other:?}"))),
    }
    let Some(scram) = Mechanism::from_name(mechanism) else {
        let token = format!("\0{SASL_USER}\0{password}");
        return Ok(authenticate(connection, token.into_bytes())
            .await?
            .is_some());
    };
    let first = client::first(SASL_USER, nonce);
    let Some(server_first) = authenticate(connection, first.clone().into_bytes()).await? else {
        return Ok(false);
    };
    let server_first = String::from_utf8_lossy(&server_first);
    let (last, _) = client::last(scram, password, &first, &server_first)
        .map_err(|e| CallError::Lost(format!("server-first {server_first:?}: {e}")))?;
    Ok(authenticate(connection, last.into_bytes()).await?.is_some())
}

/// One SaslAuthenticate: the broker's answer token, or none if it refused the login.
async fn authenticate(connection: &mut Client, token: Vec<u8>) -> Result<Option<Bytes>, CallError> {
    let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token));
    match connection
        .call(
            ApiKey::SaslAuthenticate,
            1,
            RequestKind::SaslAuthenticate(request),
        )
        .await?
    {
        ResponseKind::SaslAuthenticate(r) if r.error_code == 0 => Ok(Some(r.auth_bytes)),
        ResponseKind::SaslAuthenticate(r)
            if r.error_code == ResponseError::SaslAuthenticationFailed.code() =>
        {
            Ok(None)
        }
        other => Err(CallError::Lost(format!("authenticate answered {other:?}"))),
    }
}
