//! `seedlog users` and `seedlog acls`: SCRAM credentials and ACLs, kept in the metadata
//! quorum, through the Kafka APIs any Kafka-compatible broker serves
//! (AlterUserScramCredentials, DescribeUserScramCredentials, CreateAcls, DescribeAcls,
//! DeleteAcls). Run them against a listener where you are a super user.

use std::net::SocketAddr;

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, ApiKey, CreateAclsRequest, DeleteAclsRequest,
    DescribeAclsRequest, DescribeUserScramCredentialsRequest, RequestKind, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use seedlog_core::security::acl::{Operation, CLUSTER_NAME};
use seedlog_core::security::scram::Mechanism;

use crate::client::ClusterClient;
use crate::groups::Target;

/// `seedlog users ...`
#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Create a user, or set a new password (a SCRAM credential; the password is salted
    /// here and never sent or stored in clear).
    Create {
        #[command(flatten)]
        target: Target,
        /// The user name (its principal is User:NAME).
        #[arg(long)]
        user: String,
        /// The password.
        #[arg(long, env = "SEEDLOG_USER_PASSWORD", hide_env_values = true)]
        password: String,
        /// SCRAM-SHA-256 or SCRAM-SHA-512.
        #[arg(long, default_value = "SCRAM-SHA-512")]
        mechanism: String,
        /// Hash iterations (4096 to 16384).
        #[arg(long, default_value_t = 8192)]
        iterations: i32,
    },
    /// List users and their mechanisms.
    List(Target),
    /// Remove a user's credentials (every mechanism unless one is named).
    Delete {
        #[command(flatten)]
        target: Target,
        /// The user name.
        #[arg(long)]
        user: String,
        /// Only this mechanism's credential.
        #[arg(long)]
        mechanism: Option<String>,
    },
}

/// The resource an ACL command is about.
#[derive(Args, Debug, Clone, Default)]
pub struct AclSelector {
    /// A topic name (or prefix, with --prefixed).
    #[arg(long, group = "resource")]
    topic: Option<String>,
    /// A consumer group (or prefix).
    #[arg(long, group = "resource")]
    group: Option<String>,
    /// A transactional id (or prefix).
    #[arg(long, group = "resource")]
    transactional_id: Option<String>,
    /// The cluster itself.
    #[arg(long, group = "resource")]
    cluster: bool,
    /// The name is a prefix of the resources' names.
    #[arg(long)]
    prefixed: bool,
    /// `User:NAME`, or `User:*` for everyone.
    #[arg(long)]
    principal: Option<String>,
    /// Read, Write, Create, Delete, Alter, Describe, ClusterAction, DescribeConfigs,
    /// AlterConfigs, IdempotentWrite or All.
    #[arg(long)]
    operation: Option<String>,
    /// A client IP address [default: * for create].
    #[arg(long)]
    host: Option<String>,
    /// Deny instead of allow.
    #[arg(long)]
    deny: bool,
}

/// `seedlog acls ...`
#[derive(Subcommand, Debug)]
pub enum AclsCommand {
    /// Create an ACL: a resource, a principal, an operation, allow (or --deny).
    Create {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        acl: AclSelector,
    },
    /// List ACLs (all, or those matching the options given).
    List {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        filter: AclSelector,
    },
    /// Delete the ACLs matching the options given (the options not given match any).
    Delete {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        filter: AclSelector,
    },
}

/// Runs one `seedlog users` command.
pub async fn run_users(command: UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::Create {
            target,
            user,
            password,
            mechanism,
            iterations,
        } => {
            let m = mechanism_named(&mechanism)?;
            create_user(&mut target.client().await?, &user, &password, m, iterations).await?;
            println!("user {user}: {} credential set", m.name());
            Ok(())
        }
        UsersCommand::List(target) => {
            for (user, mechanisms) in users(&mut target.client().await?, None).await? {
                let list: Vec<String> = mechanisms
                    .iter()
                    .map(|(m, i)| format!("{m} (iterations {i})"))
                    .collect();
                println!("{user}\t{}", list.join(", "));
            }
            Ok(())
        }
        UsersCommand::Delete {
            target,
            user,
            mechanism,
        } => {
            let mut client = target.client().await?;
            let mechanisms: Vec<Mechanism> = match mechanism {
                Some(name) => vec![mechanism_named(&name)?],
                None => {
                    let all = users(&mut client, None).await?;
                    let mine = all.into_iter().find(|(u, _)| *u == user);
                    let mine = mine.ok_or_else(|| anyhow!("no user {user}"))?;
                    mine.1
                        .iter()
                        .filter_map(|(m, _)| Mechanism::from_name(m))
                        .collect()
                }
            };
            let deletions = mechanisms
                .iter()
                .map(|m| {
                    ScramCredentialDeletion::default()
                        .with_name(StrBytes::from_string(user.clone()))
                        .with_mechanism(*m as i8)
                })
                .collect();
            let request = AlterUserScramCredentialsRequest::default().with_deletions(deletions);
            alter(&mut client, request).await?;
            println!("user {user}: credentials removed");
            Ok(())
        }
    }
}

/// Sets `user`'s credential for `mechanism`, salted here.
pub async fn create_user(
    client: &mut ClusterClient,
    user: &str,
    password: &str,
    mechanism: Mechanism,
    iterations: i32,
) -> anyhow::Result<()> {
    let salt = fresh_salt();
    let salted = mechanism.salted_password(password.as_bytes(), &salt, iterations);
    let upsert = ScramCredentialUpsertion::default()
        .with_name(StrBytes::from_string(user.to_string()))
        .with_mechanism(mechanism as i8)
        .with_iterations(iterations)
        .with_salt(salt.to_vec().into())
        .with_salted_password(salted.into());
    let request = AlterUserScramCredentialsRequest::default().with_upsertions(vec![upsert]);
    alter(client, request).await
}

/// A random secret, hex: std's hasher keys come from the OS.
pub fn random_hex(bytes: usize) -> String {
    let mut out = String::new();
    while out.len() < bytes * 2 {
        out.extend(fresh_salt().iter().map(|b| format!("{b:02x}")));
    }
    out.truncate(bytes * 2);
    out
}

fn mechanism_named(name: &str) -> anyhow::Result<Mechanism> {
    Mechanism::from_name(&name.to_ascii_uppercase())
        .ok_or_else(|| anyhow!("mechanism must be SCRAM-SHA-256 or SCRAM-SHA-512, not {name}"))
}

/// A salt from the OS's randomness.
fn fresh_salt() -> [u8; 32] {
    let mut salt = [0u8; 32];
    crate::os_random(&mut salt);
    salt
}

async fn alter(
    client: &mut ClusterClient,
    request: AlterUserScramCredentialsRequest,
) -> anyhow::Result<()> {
    let response = client
        .call_any(
            ApiKey::AlterUserScramCredentials,
            0,
            RequestKind::AlterUserScramCredentials(request),
        )
        .await
        .map_err(|e| anyhow!("AlterUserScramCredentials: {e:?}"))?;
    let ResponseKind::AlterUserScramCredentials(r) = response else {
        bail!("not an AlterUserScramCredentials answer");
    };
    for result in r.results {
        refusal(result.error_code, result.error_message)
            .map_err(|e| e.context(format!("user {}", result.user.as_str())))?;
    }
    Ok(())
}

/// The error a result carries, with the broker's message.
fn refusal(code: i16, message: Option<StrBytes>) -> anyhow::Result<()> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(e) => bail!("{e} {}", message.map(|m| m.to_string()).unwrap_or_default()),
    }
}

/// True if the broker at `addr` knows a credential of `user`.
pub async fn user_known(client: &mut ClusterClient, addr: SocketAddr, user: &str) -> bool {
    users(client, Some(addr))
        .await
        .is_ok_and(|all| all.iter().any(|(u, _)| u == user))
}

/// Users and their (mechanism, iterations), as the broker at `addr` (or the next one in
/// turn) knows them.
async fn users(
    client: &mut ClusterClient,
    addr: Option<SocketAddr>,
) -> anyhow::Result<Vec<(String, Vec<(String, i32)>)>> {
    let request = RequestKind::DescribeUserScramCredentials(
        DescribeUserScramCredentialsRequest::default().with_users(None),
    );
    let api = ApiKey::DescribeUserScramCredentials;
    let response = match addr {
        Some(addr) => client.call_addr(addr, api, 0, request).await,
        None => client.call_any(api, 0, request).await,
    }
    .map_err(|e| anyhow!("DescribeUserScramCredentials: {e:?}"))?;
    let ResponseKind::DescribeUserScramCredentials(r) = response else {
        bail!("not a DescribeUserScramCredentials answer");
    };
    if let Some(e) = ResponseError::try_from_code(r.error_code) {
        bail!("{e}");
    }
    Ok(r.results
        .into_iter()
        .map(|u| {
            let mechanisms = u.credential_infos.iter().map(|c| {
                let name = Mechanism::from_code(c.mechanism.into()).map_or("unknown", |m| m.name());
                (name.to_string(), c.iterations)
            });
            (u.user.to_string(), mechanisms.collect())
        })
        .collect())
}

const OPERATIONS: [(&str, Operation); 11] = [
    ("All", Operation::All),
    ("Read", Operation::Read),
    ("Write", Operation::Write),
    ("Create", Operation::Create),
    ("Delete", Operation::Delete),
    ("Alter", Operation::Alter),
    ("Describe", Operation::Describe),
    ("ClusterAction", Operation::ClusterAction),
    ("DescribeConfigs", Operation::DescribeConfigs),
    ("AlterConfigs", Operation::AlterConfigs),
    ("IdempotentWrite", Operation::IdempotentWrite),
];

const RESOURCE_TYPES: [(i8, &str); 4] = [
    (2, "topic"),
    (3, "group"),
    (4, "cluster"),
    (5, "transactional-id"),
];

impl AclSelector {
    /// (resource type, name): ANY (1) and no name when none is given.
    fn resource(&self) -> (i8, Option<String>) {
        match (
            &self.topic,
            &self.group,
            &self.transactional_id,
            self.cluster,
        ) {
            (Some(t), _, _, _) => (2, Some(t.clone())),
            (_, Some(g), _, _) => (3, Some(g.clone())),
            (_, _, Some(t), _) => (5, Some(t.clone())),
            (_, _, _, true) => (4, Some(CLUSTER_NAME.to_string())),
            _ => (1, None),
        }
    }

    fn operation(&self) -> anyhow::Result<Option<i8>> {
        let Some(name) = &self.operation else {
            return Ok(None);
        };
        let found = OPERATIONS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name));
        let names: Vec<&str> = OPERATIONS.iter().map(|(n, _)| *n).collect();
        let (_, op) =
            found.ok_or_else(|| anyhow!("operation must be one of {}", names.join(", ")))?;
        Ok(Some(*op as i8))
    }

    fn filter(&self) -> anyhow::Result<DeleteAclsFilter> {
        let (kind, name) = self.resource();
        let pattern = match (self.prefixed, name.is_some()) {
            (true, _) => 4,
            (false, true) => 3,
            (false, false) => 1,
        };
        Ok(DeleteAclsFilter::default()
            .with_resource_type_filter(kind)
            .with_resource_name_filter(name.map(StrBytes::from_string))
            .with_pattern_type_filter(pattern)
            .with_principal_filter(self.principal.clone().map(StrBytes::from_string))
            .with_host_filter(self.host.clone().map(StrBytes::from_string))
            .with_operation(self.operation()?.unwrap_or(1))
            .with_permission_type(if self.deny { 2 } else { 1 }))
    }
}

fn operation_name(code: i8) -> &'static str {
    OPERATIONS
        .iter()
        .find(|(_, op)| *op as i8 == code)
        .map_or("unknown", |(n, _)| n)
}

/// Runs one `seedlog acls` command.
pub async fn run_acls(command: AclsCommand) -> anyhow::Result<()> {
    match command {
        AclsCommand::Create { target, acl } => {
            let (kind, name) = acl.resource();
            let name = name.ok_or_else(|| {
                anyhow!("name a resource: --topic, --group, --transactional-id or --cluster")
            })?;
            let principal = acl
                .principal
                .clone()
                .ok_or_else(|| anyhow!("--principal is required"))?;
            let operation = acl
                .operation()?
                .ok_or_else(|| anyhow!("--operation is required"))?;
            let creation = AclCreation::default()
                .with_resource_type(kind)
                .with_resource_name(StrBytes::from_string(name))
                .with_resource_pattern_type(if acl.prefixed { 4 } else { 3 })
                .with_principal(StrBytes::from_string(principal))
                .with_host(StrBytes::from_string(
                    acl.host.clone().unwrap_or_else(|| "*".into()),
                ))
                .with_operation(operation)
                .with_permission_type(if acl.deny { 2 } else { 3 });
            let request = CreateAclsRequest::default().with_creations(vec![creation]);
            let response = target
                .client()
                .await?
                .call_any(ApiKey::CreateAcls, 2, RequestKind::CreateAcls(request))
                .await
                .map_err(|e| anyhow!("CreateAcls: {e:?}"))?;
            let ResponseKind::CreateAcls(r) = response else {
                bail!("not a CreateAcls answer");
            };
            for result in r.results {
                refusal(result.error_code, result.error_message)?;
            }
            println!("ACL created");
            Ok(())
        }
        AclsCommand::List { target, filter } => {
            let f = filter.filter()?;
            let request = DescribeAclsRequest::default()
                .with_resource_type_filter(f.resource_type_filter)
                .with_resource_name_filter(f.resource_name_filter)
                .with_pattern_type_filter(f.pattern_type_filter)
                .with_principal_filter(f.principal_filter)
                .with_host_filter(f.host_filter)
                .with_operation(f.operation)
                .with_permission_type(f.permission_type);
            let response = target
                .client()
                .await?
                .call_any(ApiKey::DescribeAcls, 2, RequestKind::DescribeAcls(request))
                .await
                .map_err(|e| anyhow!("DescribeAcls: {e:?}"))?;
            let ResponseKind::DescribeAcls(r) = response else {
                bail!("not a DescribeAcls answer");
            };
            if let Some(e) = ResponseError::try_from_code(r.error_code) {
                bail!("{e}");
            }
            for resource in r.resources {
                let kind = RESOURCE_TYPES
                    .iter()
                    .find(|(c, _)| *c == resource.resource_type)
                    .map_or("?", |(_, n)| n);
                let pattern = if resource.pattern_type == 4 {
                    " (prefix)"
                } else {
                    ""
                };
                for acl in resource.acls {
                    let permission = if acl.permission_type == 2 {
                        "deny"
                    } else {
                        "allow"
                    };
                    println!(
                        "{kind} {}{pattern}\t{permission} {} {} from {}",
                        resource.resource_name.as_str(),
                        acl.principal.as_str(),
                        operation_name(acl.operation),
                        acl.host.as_str()
                    );
                }
            }
            Ok(())
        }
        AclsCommand::Delete { target, filter } => {
            let request = DeleteAclsRequest::default().with_filters(vec![filter.filter()?]);
            let response = target
                .client()
                .await?
                .call_any(ApiKey::DeleteAcls, 2, RequestKind::DeleteAcls(request))
                .await
                .map_err(|e| anyhow!("DeleteAcls: {e:?}"))?;
            let ResponseKind::DeleteAcls(r) = response else {
                bail!("not a DeleteAcls answer");
            };
            let mut deleted = 0;
            for result in r.filter_results {
                if let Some(e) = ResponseError::try_from_code(result.error_code) {
                    bail!("{e}");
                }
                deleted += result.matching_acls.len();
            }
            println!("{deleted} ACL(s) deleted");
            Ok(())
        }
    }
}
