//! Kafka's ACL model and the authorization decision, as a pure function.
//!
//! An ACL binds a resource pattern (a type, a name, literal or prefixed) to an entry (a
//! principal, a host, an operation, allow or deny). The decision follows Kafka's standard
//! authorizer: super users may do anything; a matching DENY wins over any ALLOW; an ALLOW of
//! an operation also allows the operations it implies (Read, Write, Delete and Alter imply
//! Describe; AlterConfigs implies DescribeConfigs); a resource no ACL names at all is open
//! only when `allow.everyone.if.no.acl.found` says so.

/// Kafka's resource type codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResourceType {
    /// A topic.
    Topic = 2,
    /// A consumer group.
    Group = 3,
    /// The cluster (name `kafka-cluster`).
    Cluster = 4,
    /// A transactional id.
    TransactionalId = 5,
}

impl ResourceType {
    /// The type for a Kafka code, if it names one a binding can have.
    pub fn from_code(code: i8) -> Option<Self> {
        Some(match code {
            2 => ResourceType::Topic,
            3 => ResourceType::Group,
            4 => ResourceType::Cluster,
            5 => ResourceType::TransactionalId,
            _ => return None,
        })
    }
}

/// The one name of the cluster resource.
pub const CLUSTER_NAME: &str = "kafka-cluster";

/// Kafka's pattern type codes for a binding (never ANY or MATCH: those are filters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PatternType {
    /// The name is the resource's name, or `*` for every resource of the type.
    Literal = 3,
    /// The name is a prefix of the resources' names.
    Prefixed = 4,
}

/// Kafka's operation codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum Operation {
    All = 2,
    Read = 3,
    Write = 4,
    Create = 5,
    Delete = 6,
    Alter = 7,
    Describe = 8,
    ClusterAction = 9,
    DescribeConfigs = 10,
    AlterConfigs = 11,
    IdempotentWrite = 12,
}

impl Operation {
    /// The operation for a Kafka code, if a binding can name it.
    pub fn from_code(code: i8) -> Option<Self> {
        use Operation::*;
        Some(match code {
            2 => All,
            3 => Read,
            4 => Write,
            5 => Create,
            6 => Delete,
            7 => Alter,
            8 => Describe,
            9 => ClusterAction,
            10 => DescribeConfigs,
            11 => AlterConfigs,
            12 => IdempotentWrite,
            _ => return None,
        })
    }

    /// True if an ALLOW of `self` allows `wanted`.
    fn allows(self, wanted: Operation) -> bool {
        use Operation::*;
        self == All
            || self == wanted
            || (wanted == Describe && matches!(self, Read | Write | Delete | Alter))
            || (wanted == DescribeConfigs && self == AlterConfigs)
    }
}

/// Allow or deny (Kafka's codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    /// The entry takes the operation away, whatever else allows it.
    Deny = 2,
    /// The entry grants the operation.
    Allow = 3,
}

/// One ACL: a resource pattern and an entry, with fields in Kafka's codes so that the same
/// struct is the record in the metadata log.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, prost::Message)]
pub struct AclBinding {
    /// [`ResourceType`] code.
    #[prost(int32, tag = "1")]
    pub resource_type: i32,
    /// Resource name, prefix, or `*`.
    #[prost(string, tag = "2")]
    pub resource_name: String,
    /// [`PatternType`] code.
    #[prost(int32, tag = "3")]
    pub pattern_type: i32,
    /// `User:alice`, or `User:*` for everyone.
    #[prost(string, tag = "4")]
    pub principal: String,
    /// A client IP, or `*`.
    #[prost(string, tag = "5")]
    pub host: String,
    /// [`Operation`] code.
    #[prost(int32, tag = "6")]
    pub operation: i32,
    /// [`Permission`] code.
    #[prost(int32, tag = "7")]
    pub permission: i32,
}

impl AclBinding {
    /// True if the binding's pattern covers the resource `(kind, name)`.
    pub fn covers(&self, kind: ResourceType, name: &str) -> bool {
        self.resource_type == kind as i32
            && match self.pattern_type {
                p if p == PatternType::Literal as i32 => {
                    self.resource_name == name || self.resource_name == "*"
                }
                p if p == PatternType::Prefixed as i32 => name.starts_with(&self.resource_name),
                _ => false,
            }
    }

    fn names(&self, principal: &str, host: &str) -> bool {
        (self.principal == principal || self.principal == "User:*")
            && (self.host == host || self.host == "*")
    }
}

/// Who asks, from where.
#[derive(Clone, Copy, Debug)]
pub struct Requester<'a> {
    /// `User:alice`; `User:ANONYMOUS` on a listener without authentication.
    pub principal: &'a str,
    /// The client's IP address.
    pub host: &'a str,
}

/// The authorizer's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthorizerConfig {
    /// Off: every request is allowed (no `authorizer.class.name`).
    pub enabled: bool,
    /// `super.users`: principals allowed everything.
    pub super_users: Vec<String>,
    /// `allow.everyone.if.no.acl.found`.
    pub allow_if_no_acl: bool,
}

/// May `who` perform `operation` on the resource `(kind, name)` under `acls`?
pub fn authorize<'a>(
    config: &AuthorizerConfig,
    acls: impl IntoIterator<Item = &'a AclBinding> + Clone,
    who: Requester,
    operation: Operation,
    kind: ResourceType,
    name: &str,
) -> bool {
    if !config.enabled || config.super_users.iter().any(|s| s == who.principal) {
        return true;
    }
    let mut any_for_resource = false;
    let mut allowed = false;
    for acl in acls.into_iter().filter(|a| a.covers(kind, name)) {
        any_for_resource = true;
        if !acl.names(who.principal, who.host) {
            continue;
        }
        let Some(granted) = i8::try_from(acl.operation)
            .ok()
            .and_then(Operation::from_code)
        else {
            continue;
        };
        if acl.permission == Permission::Deny as i32
            && (granted == Operation::All || granted == operation)
        {
            return false;
        }
        allowed |= acl.permission == Permission::Allow as i32 && granted.allows(operation);
    }
    allowed || (!any_for_resource && config.allow_if_no_acl)
}

/// Kafka's filter for DescribeAcls and DeleteAcls: each field matches anything when unset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AclFilter {
    /// Resource type code; 1 (ANY) matches every type.
    pub resource_type: i8,
    /// A name to match, or `None` for any.
    pub resource_name: Option<String>,
    /// Pattern type code: 1 ANY, 2 MATCH (every pattern that covers the name), 3, 4.
    pub pattern_type: i8,
    /// A principal, or `None` for any.
    pub principal: Option<String>,
    /// A host, or `None` for any.
    pub host: Option<String>,
    /// Operation code; 1 (ANY) matches every operation.
    pub operation: i8,
    /// Permission code; 1 (ANY) matches both.
    pub permission: i8,
}

impl AclFilter {
    /// True if `acl` passes the filter.
    pub fn matches(&self, acl: &AclBinding) -> bool {
        let code = |filter: i8, value: i32| filter == 1 || i32::from(filter) == value;
        let text =
            |filter: &Option<String>, value: &str| filter.as_deref().is_none_or(|f| f == value);
        let pattern = match (self.pattern_type, &self.resource_name) {
            (2, Some(name)) => {
                let kind = i8::try_from(acl.resource_type)
                    .ok()
                    .and_then(ResourceType::from_code);
                kind.is_some_and(|k| acl.covers(k, name))
            }
            (2, None) => true,
            (p, name) => code(p, acl.pattern_type) && text(name, &acl.resource_name),
        };
        code(self.resource_type, acl.resource_type)
            && pattern
            && text(&self.principal, &acl.principal)
            && text(&self.host, &acl.host)
            && code(self.operation, acl.operation)
            && code(self.permission, acl.permission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Operation::*;
    use ResourceType::*;

    fn acl(
        kind: ResourceType,
        name: &str,
        prefixed: bool,
        who: &str,
        op: Operation,
        allow: bool,
    ) -> AclBinding {
        AclBinding {
            resource_type: kind as i32,
            resource_name: name.into(),
            pattern_type: if prefixed { 4 } else { 3 },
            principal: who.into(),
            host: "*".into(),
            operation: op as i32,
            permission: if allow { 3 } else { 2 },
        }
    }

    fn on() -> AuthorizerConfig {
        AuthorizerConfig {
            enabled: true,
            super_users: vec!["User:admin".into()],
            allow_if_no_acl: false,
        }
    }

    /// One row: who, operation, resource, the expected decision.
    fn check(
        config: &AuthorizerConfig,
        acls: &[AclBinding],
        rows: &[(&str, Operation, ResourceType, &str, bool)],
    ) {
        for &(principal, op, kind, name, expected) in rows {
            let who = Requester {
                principal,
                host: "10.0.0.1",
            };
            assert_eq!(
                authorize(config, acls, who, op, kind, name),
                expected,
                "{principal} {op:?} {kind:?}:{name}"
            );
        }
    }

    #[test]
    fn decisions_follow_kafkas_standard_authorizer() {
        let acls = [
            acl(Topic, "orders", false, "User:alice", Read, true),
            acl(Topic, "logs-", true, "User:bob", Write, true),
            acl(Topic, "logs-secret", false, "User:bob", Write, false),
            acl(Group, "*", false, "User:*", Read, true),
            acl(Topic, "public", false, "User:*", All, true),
            acl(Topic, "public", false, "User:mallory", All, false),
            acl(Cluster, CLUSTER_NAME, false, "User:ops", AlterConfigs, true),
        ];
        check(
            &on(),
            &acls,
            &[
                ("User:alice", Read, Topic, "orders", true),
                ("User:alice", Describe, Topic, "orders", true), // implied by Read
                ("User:alice", Write, Topic, "orders", false),
                ("User:alice", Read, Topic, "other", false), // no ACL, and no-acl is closed
                ("User:bob", Write, Topic, "logs-app", true), // prefixed
                ("User:bob", Describe, Topic, "logs-app", true),
                ("User:bob", Write, Topic, "logs-secret", false), // deny wins
                ("User:bob", Write, Topic, "log", false),         // not under the prefix
                ("User:carol", Read, Group, "any-group", true),   // wildcard name and principal
                ("User:carol", Delete, Group, "any-group", false),
                ("User:carol", Write, Topic, "public", true), // All
                ("User:mallory", Read, Topic, "public", false), // deny of All
                ("User:ops", DescribeConfigs, Cluster, CLUSTER_NAME, true), // implied by Alter..
                ("User:ops", Alter, Cluster, CLUSTER_NAME, false),
                ("User:admin", Delete, Topic, "orders", true), // super user
            ],
        );
    }

    #[test]
    fn resources_without_acls_follow_the_setting() {
        let acls = [acl(Topic, "orders", false, "User:alice", Read, true)];
        let open = AuthorizerConfig {
            allow_if_no_acl: true,
            ..on()
        };
        check(
            &open,
            &acls,
            &[
                ("User:bob", Write, Topic, "other", true), // nobody's ACL names it
                ("User:bob", Read, Topic, "orders", false), // an ACL names it, not for bob
            ],
        );
        check(
            &AuthorizerConfig::default(),
            &acls,
            &[("User:bob", Delete, Topic, "orders", true)],
        );
    }

    #[test]
    fn deny_from_one_host_only() {
        let mut deny = acl(Topic, "t", false, "User:alice", Read, false);
        deny.host = "10.0.0.1".into();
        let acls = [acl(Topic, "t", false, "User:alice", Read, true), deny];
        let who = |host| Requester {
            principal: "User:alice",
            host,
        };
        assert!(!authorize(&on(), &acls, who("10.0.0.1"), Read, Topic, "t"));
        assert!(authorize(&on(), &acls, who("10.0.0.2"), Read, Topic, "t"));
    }

    #[test]
    fn filters_match_as_kafkas_do() {
        let a = acl(Topic, "logs-", true, "User:bob", Write, true);
        let any = AclFilter {
            resource_type: 1,
            pattern_type: 1,
            operation: 1,
            permission: 1,
            ..Default::default()
        };
        assert!(any.matches(&a));
        let by_name = |name: &str, pattern| AclFilter {
            resource_name: Some(name.into()),
            pattern_type: pattern,
            ..any.clone()
        };
        assert!(
            by_name("logs-app", 2).matches(&a),
            "MATCH finds prefixes that cover the name"
        );
        assert!(
            !by_name("logs-app", 1).matches(&a),
            "ANY compares names exactly"
        );
        assert!(by_name("logs-", 4).matches(&a));
        assert!(!by_name("logs-", 3).matches(&a));
        let read_only = AclFilter {
            operation: Read as i8,
            ..any
        };
        assert!(!read_only.matches(&a));
    }
}
