//! The broker's side of security: SASL on each connection, the ACL and SCRAM admin APIs
//! through the metadata quorum, and the one check every API asks (`Broker::allowed`).

use kafka_protocol::messages::alter_user_scram_credentials_request::AlterUserScramCredentialsRequest;
use kafka_protocol::messages::alter_user_scram_credentials_response::{
    AlterUserScramCredentialsResponse, AlterUserScramCredentialsResult,
};
use kafka_protocol::messages::create_acls_request::CreateAclsRequest;
use kafka_protocol::messages::create_acls_response::{AclCreationResult, CreateAclsResponse};
use kafka_protocol::messages::delete_acls_request::DeleteAclsRequest;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl, DeleteAclsResponse,
};
use kafka_protocol::messages::describe_acls_request::DescribeAclsRequest;
use kafka_protocol::messages::describe_acls_response::{
    AclDescription, DescribeAclsResource, DescribeAclsResponse,
};
use kafka_protocol::messages::describe_user_scram_credentials_request::DescribeUserScramCredentialsRequest;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResponse, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::sasl_authenticate_request::SaslAuthenticateRequest;
use kafka_protocol::messages::sasl_authenticate_response::SaslAuthenticateResponse;
use kafka_protocol::messages::sasl_handshake_request::SaslHandshakeRequest;
use kafka_protocol::messages::sasl_handshake_response::SaslHandshakeResponse;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use rand_chacha::rand_core::RngCore;
use tracing::{debug, info, warn};

use super::admin::str_bytes;
use super::quorum::Waiting;
use super::{Broker, ConnectionId, Observation, Output, ReplyTo};
use crate::canary::{is_planted, Canary};
use crate::cluster::image::MetadataImage;
use crate::cluster::records::{AclSet, Change, ScramChanges};
use crate::security::acl::{
    authorize, AclBinding, AclFilter, Operation, Requester, ResourceType, CLUSTER_NAME,
};
use crate::security::scram::{Mechanism, ScramCredential, MAX_ITERATIONS, MIN_ITERATIONS};
use crate::security::{Authentication, SaslError, ANONYMOUS};
use crate::time::Now;

/// How long an ACL or credential change waits for the quorum.
const CHANGE_TIMEOUT_MS: i64 = 30_000;

/// A prepared answer of a security change, completed when its record applies.
pub(super) enum SecurityAnswer {
    CreateAcls(CreateAclsResponse),
    DeleteAcls(DeleteAclsResponse),
    AlterScram(AlterUserScramCredentialsResponse),
}

impl SecurityAnswer {
    /// Every entry not refused already fails with `error`.
    pub(super) fn fail_all(&mut self, error: ResponseError) {
        let code = error.code();
        let set = |c: &mut i16| {
            if *c == 0 {
                *c = code
            }
        };
        match self {
            SecurityAnswer::CreateAcls(r) => {
                r.results.iter_mut().for_each(|r| set(&mut r.error_code))
            }
            SecurityAnswer::DeleteAcls(r) => r
                .filter_results
                .iter_mut()
                .for_each(|r| set(&mut r.error_code)),
            SecurityAnswer::AlterScram(r) => {
                r.results.iter_mut().for_each(|r| set(&mut r.error_code))
            }
        }
    }

    pub(super) fn response(self) -> ResponseKind {
        match self {
            SecurityAnswer::CreateAcls(r) => ResponseKind::CreateAcls(r),
            SecurityAnswer::DeleteAcls(r) => ResponseKind::DeleteAcls(r),
            SecurityAnswer::AlterScram(r) => ResponseKind::AlterUserScramCredentials(r),
        }
    }
}

/// True for the requests a connection may send before it has authenticated.
pub(super) fn allowed_before_authentication(api: ApiKey) -> bool {
    matches!(
        api,
        ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
    )
}

impl Broker {
    /// The principal of a connection (anonymous until it authenticates) and its host.
    fn requester(&self, conn: ConnectionId) -> Requester<'_> {
        let connection = self.connections.get(&conn);
        Requester {
            principal: connection
                .and_then(|c| c.auth.principal())
                .unwrap_or(ANONYMOUS),
            host: connection.map_or("", |c| c.host.trim_start_matches('/')),
        }
    }

    /// May the client on `conn` do `operation` on the resource `(kind, name)`?
    pub(super) fn allowed(
        &self,
        conn: ConnectionId,
        operation: Operation,
        kind: ResourceType,
        name: &str,
    ) -> bool {
        let authorizer = &self.config.security.authorizer;
        if !authorizer.enabled {
            return true;
        }
        let who = self.requester(conn);
        let allowed = authorize(
            authorizer,
            &self.controller.image().acls,
            who,
            operation,
            kind,
            name,
        );
        if !allowed {
            debug!(
                principal = who.principal,
                host = who.host,
                ?operation,
                ?kind,
                name,
                "denied"
            );
        }
        allowed
    }

    /// May the client on `conn` do `operation` on the cluster?
    pub(super) fn allowed_on_cluster(&self, conn: ConnectionId, operation: Operation) -> bool {
        self.allowed(conn, operation, ResourceType::Cluster, CLUSTER_NAME)
    }

    /// True once the connection's principal is known (always, on a listener without SASL).
    pub(super) fn is_authenticated(&self, conn: ConnectionId) -> bool {
        self.connections
            .get(&conn)
            .is_some_and(|c| c.auth.principal().is_some())
    }

    /// Why the connection may send nothing but SASL requests now, if it may not: it has not
    /// authenticated, or its session ran out. One lookup: this runs for every request.
    pub(super) fn session_refusal(&self, conn: ConnectionId) -> Option<&'static str> {
        let Some(c) = self.connections.get(&conn) else {
            return Some("request before SASL authentication");
        };
        if c.auth.principal().is_none() {
            Some("request before SASL authentication")
        } else if c.session_expires.is_some_and(|at| self.now.mono > at) {
            Some("SASL session expired without re-authentication")
        } else {
            None
        }
    }

    /// Reports the ACLs and the SCRAM credentials this broker enforces when they changed, or
    /// were never reported (only with `report_commits`: the simulator's `acls-enforced` and
    /// `credentials-enforced` checkers read them).
    pub(super) fn report_security(&mut self) {
        if !self.config.report_commits {
            return;
        }
        let image = self.controller.image();
        if self.reported_acls.as_ref() != Some(&image.acls) {
            let bindings = image.acls.iter().cloned().collect();
            self.reported_acls = Some(image.acls.clone());
            self.outputs
                .push_back(Output::Observed(Observation::Acls { bindings }));
        }
        if self.reported_scram.as_ref() != Some(&image.scram) {
            let credentials = image.scram.values().cloned().collect();
            self.reported_scram = Some(image.scram.clone());
            self.outputs
                .push_back(Output::Observed(Observation::Credentials { credentials }));
        }
    }

    /// SaslHandshake; after v0 the SASL tokens come bare, outside Kafka frames (clients
    /// from before KIP-152 and librdkafka before 2.x's SaslAuthenticate check).
    pub(super) fn sasl_handshake(
        &mut self,
        reply_to: ReplyTo,
        r: &SaslHandshakeRequest,
    ) -> ResponseKind {
        let enabled = &self.config.security.sasl_mechanisms;
        let mechanisms = enabled.iter().map(|m| str_bytes(m)).collect();
        let reauthentication = self.config.security.reauthentication_ms > 0;
        let outcome = match self.connections.get_mut(&reply_to.conn) {
            Some(c) => {
                // KIP-368: a session with a lifetime authenticates again on its connection,
                // as the same principal; meanwhile it sends nothing else.
                if reauthentication && c.session_expires.is_some() {
                    if let Some(principal) = c.auth.principal() {
                        c.reauthenticating = Some(principal.to_string());
                        c.auth = Authentication::Handshake;
                    }
                }
                c.auth.handshake(&r.mechanism, enabled).map(|()| {
                    c.raw_sasl = reply_to.version == 0;
                })
            }
            None => Err(SaslError::IllegalState),
        };
        let error_code = match outcome {
            Ok(()) => 0,
            Err(SaslError::Unsupported) => ResponseError::UnsupportedSaslMechanism.code(),
            Err(_) => ResponseError::IllegalSaslState.code(),
        };
        ResponseKind::SaslHandshake(
            SaslHandshakeResponse::default()
                .with_error_code(error_code)
                .with_mechanisms(mechanisms),
        )
    }

    /// One token of `conn`'s SASL exchange: the answer token, or the failure.
    fn sasl_step(&mut self, conn: ConnectionId, token: &[u8]) -> Result<Vec<u8>, SaslError> {
        let mut nonce = [0u8; 24];
        self.nonce_rng.fill_bytes(&mut nonce);
        // Letters and digits only, as Kafka's own nonces: some clients mangle `+` and `/`.
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let image = self.controller.image();
        let cache = &self.canary_credential_cache;
        let credentials = |user: &str| -> Vec<ScramCredential> {
            if let Some(cached) = cache.get(user) {
                return cached.clone();
            }
            user_credentials(image, user)
        };
        let connection = self
            .connections
            .get_mut(&conn)
            .ok_or(SaslError::IllegalState)?;
        let mut outcome = connection.auth.authenticate(token, credentials, &nonce);
        if is_planted(Canary::CacheCredentials) {
            if let Some(user) = connection
                .auth
                .principal()
                .and_then(|p| p.strip_prefix("User:"))
            {
                let found = user_credentials(image, user);
                self.canary_credential_cache
                    .entry(user.to_string())
                    .or_insert(found);
            }
        }
        let before = connection
            .reauthenticating
            .take_if(|_| connection.auth.principal().is_some());
        if let (Some(before), Some(now)) = (&before, connection.auth.principal()) {
            if before != now {
                outcome = Err(SaslError::Failed(format!(
                    "re-authentication as {now} on a connection of {before}"
                )));
            }
        }
        match &outcome {
            Err(SaslError::Failed(message)) => {
                warn!(conn, host = %connection.host, %message, "SASL authentication failed")
            }
            Ok(_) => {
                if let Some(principal) = connection.auth.principal() {
                    info!(conn, %principal, again = before.is_some(), "authenticated");
                    connection.raw_sasl = false;
                    let lifetime = self.config.security.reauthentication_ms;
                    connection.session_expires = (lifetime > 0).then_some(self.now.mono + lifetime);
                    self.outputs.push_back(Output::Authenticated { conn });
                }
            }
            Err(_) => {}
        }
        outcome
    }

    /// SaslAuthenticate: one step of the exchange. A failure is answered, then the
    /// connection is closed, as Kafka does.
    pub(super) fn sasl_authenticate(&mut self, reply_to: ReplyTo, r: &SaslAuthenticateRequest) {
        let mut response = SaslAuthenticateResponse::default();
        let failed = match self.sasl_step(reply_to.conn, &r.auth_bytes) {
            Ok(token) => {
                response.auth_bytes = token.into();
                if self.is_authenticated(reply_to.conn) {
                    // v1+: the client authenticates again before this runs out.
                    response.session_lifetime_ms = self.config.security.reauthentication_ms;
                }
                false
            }
            Err(SaslError::Failed(message)) => {
                response.error_code = ResponseError::SaslAuthenticationFailed.code();
                response.error_message = Some(StrBytes::from_string(message));
                true
            }
            Err(_) => {
                // Out of turn (no handshake, or already authenticated): said, not fatal.
                response.error_code = ResponseError::IllegalSaslState.code();
                response.error_message = Some(str_bytes("no SASL exchange under way"));
                false
            }
        };
        self.respond(reply_to, Some(ResponseKind::SaslAuthenticate(response)));
        if failed {
            self.outputs.push_back(Output::Close(reply_to.conn));
        }
    }

    /// A bare SASL token after a SaslHandshake v0, answered with a bare token; a failure
    /// closes the connection without an answer, as Kafka does for these clients.
    pub(super) fn raw_sasl_token(&mut self, conn: ConnectionId, seq: u64, token: &[u8]) {
        match self.sasl_step(conn, token) {
            Ok(answer) => {
                let mut frame = Vec::with_capacity(4 + answer.len());
                frame.extend_from_slice(&(answer.len() as u32).to_be_bytes());
                frame.extend_from_slice(&answer);
                self.queue_frame(conn, seq, Some(frame.into()));
            }
            Err(_) => self.close(conn),
        }
    }

    /// Proposes a security change; its answer goes out once the change applies.
    fn propose_security(
        &mut self,
        now: Now,
        reply_to: ReplyTo,
        change: Option<Change>,
        answer: SecurityAnswer,
    ) {
        let waiting = Waiting::Security(answer);
        self.propose_for(now, reply_to, change, waiting, CHANGE_TIMEOUT_MS);
    }

    pub(super) fn describe_acls(
        &self,
        conn: ConnectionId,
        r: &DescribeAclsRequest,
    ) -> ResponseKind {
        let mut response = DescribeAclsResponse::default();
        if let Some(error) = self.acl_api_refusal(conn, Operation::Describe) {
            response.error_code = error.code();
            return ResponseKind::DescribeAcls(response);
        }
        let filter = acl_filter(
            (
                r.resource_type_filter,
                &r.resource_name_filter,
                r.pattern_type_filter,
            ),
            (
                &r.principal_filter,
                &r.host_filter,
                r.operation,
                r.permission_type,
            ),
        );
        // The image keeps ACLs ordered by resource first: one run per resource.
        for acl in self
            .controller
            .image()
            .acls
            .iter()
            .filter(|a| filter.matches(a))
        {
            let description = AclDescription::default()
                .with_principal(str_bytes(&acl.principal))
                .with_host(str_bytes(&acl.host))
                .with_operation(acl.operation as i8)
                .with_permission_type(acl.permission as i8);
            let same = |res: &DescribeAclsResource| {
                i32::from(res.resource_type) == acl.resource_type
                    && *res.resource_name == *acl.resource_name
                    && i32::from(res.pattern_type) == acl.pattern_type
            };
            match response.resources.last_mut().filter(|res| same(res)) {
                Some(resource) => resource.acls.push(description),
                None => response.resources.push(
                    DescribeAclsResource::default()
                        .with_resource_type(acl.resource_type as i8)
                        .with_resource_name(str_bytes(&acl.resource_name))
                        .with_pattern_type(acl.pattern_type as i8)
                        .with_acls(vec![description]),
                ),
            }
        }
        ResponseKind::DescribeAcls(response)
    }

    /// Why an ACL API is refused to `conn`, if it is.
    fn acl_api_refusal(&self, conn: ConnectionId, operation: Operation) -> Option<ResponseError> {
        if !self.config.security.authorizer.enabled {
            Some(ResponseError::SecurityDisabled)
        } else if !self.allowed_on_cluster(conn, operation) {
            Some(ResponseError::ClusterAuthorizationFailed)
        } else {
            None
        }
    }

    pub(super) fn create_acls(&mut self, now: Now, reply_to: ReplyTo, r: CreateAclsRequest) {
        let refusal = self.acl_api_refusal(reply_to.conn, Operation::Alter);
        let mut acls = Vec::new();
        let results = r
            .creations
            .iter()
            .map(|c| {
                let binding = AclBinding {
                    resource_type: c.resource_type.into(),
                    resource_name: c.resource_name.to_string(),
                    pattern_type: c.resource_pattern_type.into(),
                    principal: c.principal.to_string(),
                    host: c.host.to_string(),
                    operation: c.operation.into(),
                    permission: c.permission_type.into(),
                };
                let (error, message) =
                    match refusal.map(|e| (e, None)).or_else(|| invalid_acl(&binding)) {
                        Some((e, m)) => (e.code(), m),
                        None => {
                            info!(acl = ?binding, "creating ACL");
                            acls.push(binding);
                            (0, None)
                        }
                    };
                AclCreationResult::default()
                    .with_error_code(error)
                    .with_error_message(message.map(StrBytes::from_string))
            })
            .collect();
        let change = (!acls.is_empty()).then_some(Change::CreateAcls(AclSet { acls }));
        let answer =
            SecurityAnswer::CreateAcls(CreateAclsResponse::default().with_results(results));
        self.propose_security(now, reply_to, change, answer);
    }

    pub(super) fn delete_acls(&mut self, now: Now, reply_to: ReplyTo, r: DeleteAclsRequest) {
        let refusal = self.acl_api_refusal(reply_to.conn, Operation::Alter);
        let image = self.controller.image();
        let mut doomed: Vec<AclBinding> = Vec::new();
        let filter_results = r
            .filters
            .iter()
            .map(|f| {
                if let Some(e) = refusal {
                    return DeleteAclsFilterResult::default().with_error_code(e.code());
                }
                let filter = acl_filter(
                    (
                        f.resource_type_filter,
                        &f.resource_name_filter,
                        f.pattern_type_filter,
                    ),
                    (
                        &f.principal_filter,
                        &f.host_filter,
                        f.operation,
                        f.permission_type,
                    ),
                );
                let matching: Vec<&AclBinding> =
                    image.acls.iter().filter(|a| filter.matches(a)).collect();
                doomed.extend(matching.iter().map(|a| (*a).clone()));
                DeleteAclsFilterResult::default().with_matching_acls(
                    matching
                        .into_iter()
                        .map(|a| {
                            DeleteAclsMatchingAcl::default()
                                .with_resource_type(a.resource_type as i8)
                                .with_resource_name(str_bytes(&a.resource_name))
                                .with_pattern_type(a.pattern_type as i8)
                                .with_principal(str_bytes(&a.principal))
                                .with_host(str_bytes(&a.host))
                                .with_operation(a.operation as i8)
                                .with_permission_type(a.permission as i8)
                        })
                        .collect(),
                )
            })
            .collect();
        let change = (!doomed.is_empty()).then_some(Change::DeleteAcls(AclSet { acls: doomed }));
        let answer = SecurityAnswer::DeleteAcls(
            DeleteAclsResponse::default().with_filter_results(filter_results),
        );
        self.propose_security(now, reply_to, change, answer);
    }

    pub(super) fn describe_scram(
        &self,
        conn: ConnectionId,
        r: &DescribeUserScramCredentialsRequest,
    ) -> ResponseKind {
        let mut response = DescribeUserScramCredentialsResponse::default();
        if !self.allowed_on_cluster(conn, Operation::Describe) {
            response.error_code = ResponseError::ClusterAuthorizationFailed.code();
            return ResponseKind::DescribeUserScramCredentials(response);
        }
        let scram = &self.controller.image().scram;
        let users: Vec<String> = match &r.users {
            Some(users) if !users.is_empty() => users.iter().map(|u| u.name.to_string()).collect(),
            _ => {
                let mut all: Vec<String> = scram.keys().map(|(u, _)| u.clone()).collect();
                all.dedup();
                all
            }
        };
        for user in users {
            let infos: Vec<CredentialInfo> = scram
                .range((user.clone(), 0)..=(user.clone(), i32::MAX))
                .map(|(_, c)| {
                    CredentialInfo::default()
                        .with_mechanism(c.mechanism as i8)
                        .with_iterations(c.iterations)
                })
                .collect();
            let mut result =
                DescribeUserScramCredentialsResult::default().with_user(str_bytes(&user));
            if infos.is_empty() {
                result.error_code = ResponseError::ResourceNotFound.code();
                result.error_message = Some(str_bytes(&format!("no credentials for user {user}")));
            }
            response.results.push(result.with_credential_infos(infos));
        }
        ResponseKind::DescribeUserScramCredentials(response)
    }

    pub(super) fn alter_scram(
        &mut self,
        now: Now,
        reply_to: ReplyTo,
        r: AlterUserScramCredentialsRequest,
    ) {
        let denied = !self.allowed_on_cluster(reply_to.conn, Operation::Alter);
        let scram = &self.controller.image().scram;
        // One result per user, in order of first mention; a user with any bad change
        // changes nothing.
        let mut users: Vec<(String, Option<(ResponseError, String)>)> = Vec::new();
        let mut changes = ScramChanges::default();
        let mentions = r
            .deletions
            .iter()
            .map(|d| (d.name.to_string(), d.mechanism, None))
            .chain(
                r.upsertions
                    .iter()
                    .map(|u| (u.name.to_string(), u.mechanism, Some(u))),
            );
        let mut seen = std::collections::BTreeSet::new();
        let mut staged: Vec<(String, ScramCredential, bool)> = Vec::new();
        for (user, mechanism, upsert) in mentions {
            let problem = if denied {
                Some((ResponseError::ClusterAuthorizationFailed, String::new()))
            } else if user.is_empty() {
                Some((
                    ResponseError::UnacceptableCredential,
                    "empty user name".into(),
                ))
            } else if let Some(m) = Mechanism::from_code(mechanism.into()) {
                if !seen.insert((user.clone(), m as i32)) {
                    Some((
                        ResponseError::DuplicateResource,
                        format!("{} named twice for {user}", m.name()),
                    ))
                } else {
                    match upsert {
                        None if !scram.contains_key(&(user.clone(), m as i32)) => Some((
                            ResponseError::ResourceNotFound,
                            format!("no {} credential for {user}", m.name()),
                        )),
                        None => {
                            let key = ScramCredential {
                                user: user.clone(),
                                mechanism: m as i32,
                                ..Default::default()
                            };
                            staged.push((user.clone(), key, false));
                            None
                        }
                        Some(u) if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&u.iterations) => {
                            Some((
                                ResponseError::UnacceptableCredential,
                                format!("iterations must be {MIN_ITERATIONS} to {MAX_ITERATIONS}"),
                            ))
                        }
                        Some(u) if u.salt.is_empty() || u.salted_password.is_empty() => Some((
                            ResponseError::UnacceptableCredential,
                            "salt and salted password must not be empty".into(),
                        )),
                        Some(u) => {
                            let c = ScramCredential::from_salted(
                                &user,
                                m,
                                &u.salt,
                                u.iterations,
                                &u.salted_password,
                            );
                            staged.push((user.clone(), c, true));
                            None
                        }
                    }
                }
            } else {
                Some((
                    ResponseError::UnsupportedSaslMechanism,
                    format!("unknown SCRAM mechanism {mechanism}"),
                ))
            };
            match users.iter_mut().find(|(u, _)| *u == user) {
                Some((_, p)) => {
                    if p.is_none() {
                        *p = problem
                    }
                }
                None => users.push((user, problem)),
            }
        }
        for (user, credential, upsert) in staged {
            if users.iter().any(|(u, p)| *u == user && p.is_some()) {
                continue;
            }
            info!(%user, mechanism = credential.mechanism, upsert, "altering SCRAM credential");
            match upsert {
                true => changes.upserts.push(credential),
                false => changes.deletions.push(credential),
            }
        }
        let results = users
            .into_iter()
            .map(|(user, problem)| {
                let (code, message) = problem.map_or((0, None), |(e, m)| (e.code(), Some(m)));
                AlterUserScramCredentialsResult::default()
                    .with_user(str_bytes(&user))
                    .with_error_code(code)
                    .with_error_message(
                        message.filter(|m| !m.is_empty()).map(StrBytes::from_string),
                    )
            })
            .collect();
        let any = !changes.upserts.is_empty() || !changes.deletions.is_empty();
        let change = any.then_some(Change::AlterScram(changes));
        let answer = SecurityAnswer::AlterScram(
            AlterUserScramCredentialsResponse::default().with_results(results),
        );
        self.propose_security(now, reply_to, change, answer);
    }
}

/// A filter of DescribeAcls or DeleteAcls: (resource type, name, pattern type) and
/// (principal, host, operation, permission), as both requests carry them.
fn acl_filter(
    resource: (i8, &Option<StrBytes>, i8),
    entry: (&Option<StrBytes>, &Option<StrBytes>, i8, i8),
) -> AclFilter {
    let text = |s: &Option<StrBytes>| s.as_ref().map(|s| s.to_string());
    AclFilter {
        resource_type: resource.0,
        resource_name: text(resource.1),
        pattern_type: resource.2,
        principal: text(entry.0),
        host: text(entry.1),
        operation: entry.2,
        permission: entry.3,
    }
}

/// Why a binding cannot be created, if it cannot.
fn invalid_acl(acl: &AclBinding) -> Option<(ResponseError, Option<String>)> {
    let code = |c: i32| i8::try_from(c).unwrap_or(0);
    let problem = if ResourceType::from_code(code(acl.resource_type)).is_none() {
        "resource type must be TOPIC, GROUP, CLUSTER or TRANSACTIONAL_ID"
    } else if !matches!(acl.pattern_type, 3 | 4) {
        "pattern type must be LITERAL or PREFIXED"
    } else if Operation::from_code(code(acl.operation)).is_none() {
        "operation must be a single operation or ALL"
    } else if !matches!(acl.permission, 2 | 3) {
        "permission must be ALLOW or DENY"
    } else if !acl.principal.starts_with("User:") || acl.principal.len() == 5 {
        "principal must be User:<name> or User:*"
    } else if acl.host.is_empty() || acl.resource_name.is_empty() {
        "host and resource name must not be empty"
    } else if acl.resource_type == ResourceType::Cluster as i32 && acl.resource_name != CLUSTER_NAME
    {
        "the cluster resource is named kafka-cluster"
    } else {
        return None;
    };
    Some((ResponseError::InvalidRequest, Some(problem.to_string())))
}

/// Every SCRAM credential of `user` (one per mechanism) in `image`.
fn user_credentials(image: &MetadataImage, user: &str) -> Vec<ScramCredential> {
    let by_user = image
        .scram
        .range((user.to_string(), 0)..=(user.to_string(), i32::MAX));
    by_user.map(|(_, c)| c.clone()).collect()
}
