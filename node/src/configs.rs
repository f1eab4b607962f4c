//! `seedlog configs`: describe and change the configs of a topic, of one broker, or of every
//! broker (the cluster-wide defaults), as Kafka's `kafka-configs.sh` does, through
//! DescribeConfigs and IncrementalAlterConfigs. Works against any Kafka-compatible broker.

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig, IncrementalAlterConfigsRequest,
};
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::client::ClusterClient;
use crate::groups::Target;

/// `seedlog configs ...`
#[derive(Subcommand, Debug)]
pub enum ConfigsCommand {
    /// Every config of the entity: its value and where that comes from.
    Describe {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        entity: Entity,
    },
    /// Sets and deletes configs of the entity (a deleted one falls back to the next source:
    /// a topic's to the broker's, one broker's to every broker's, to the default).
    Alter {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        entity: Entity,
        /// A config to set, as `key=value` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A config to delete (repeatable).
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
}

/// Whose configs: exactly one of a topic, a broker, or every broker.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Entity {
    /// A topic.
    #[arg(long)]
    topic: Option<String>,
    /// One broker, by id.
    #[arg(long)]
    broker: Option<i32>,
    /// Every broker: the cluster-wide defaults (Kafka's `--entity-default`).
    #[arg(long)]
    broker_defaults: bool,
}

const TOPIC: i8 = 2;
const BROKER: i8 = 4;

impl Entity {
    /// The resource type and name Kafka's protocol gives it.
    fn resource(&self) -> (i8, String) {
        match (&self.topic, self.broker) {
            (Some(topic), _) => (TOPIC, topic.clone()),
            (None, Some(id)) => (BROKER, id.to_string()),
            (None, None) => (BROKER, String::new()),
        }
    }

    fn describe(&self) -> String {
        match (&self.topic, self.broker) {
            (Some(topic), _) => format!("topic {topic}"),
            (None, Some(id)) => format!("broker {id}"),
            (None, None) => "every broker".into(),
        }
    }
}

/// Runs one `seedlog configs` command, printing to stdout.
pub async fn run(command: ConfigsCommand) -> anyhow::Result<()> {
    match command {
        ConfigsCommand::Describe { target, entity } => {
            describe(&mut target.client().await?, &entity).await
        }
        ConfigsCommand::Alter {
            target,
            entity,
            set,
            delete,
        } => {
            let ops = operations(&set, &delete)?;
            alter(&mut target.client().await?, &entity, ops).await
        }
    }
}

/// `--set` and `--delete` as IncrementalAlterConfigs operations (0 SET, 1 DELETE).
fn operations(set: &[String], delete: &[String]) -> anyhow::Result<Vec<(String, i8, String)>> {
    if set.is_empty() && delete.is_empty() {
        bail!("nothing to change: give --set KEY=VALUE or --delete KEY");
    }
    let mut ops = Vec::new();
    for pair in set {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("--set {pair}: expected KEY=VALUE"))?;
        ops.push((key.trim().to_string(), 0, value.to_string()));
    }
    ops.extend(
        delete
            .iter()
            .map(|key| (key.trim().to_string(), 1, String::new())),
    );
    Ok(ops)
}

/// Kafka's name for a DescribeConfigs source.
fn source_name(source: i8) -> &'static str {
    match source {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        _ => "UNKNOWN",
    }
}

async fn describe(client: &mut ClusterClient, entity: &Entity) -> anyhow::Result<()> {
    let (kind, name) = entity.resource();
    let request = RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(
        vec![DescribeConfigsResource::default()
            .with_resource_type(kind)
            .with_resource_name(StrBytes::from_string(name))
            .with_configuration_keys(None)],
    ));
    // One broker's configs are its own to describe.
    let response = match entity.broker {
        Some(id) => {
            client
                .call_broker(id, ApiKey::DescribeConfigs, 1, request)
                .await
        }
        None => client.call_any(ApiKey::DescribeConfigs, 1, request).await,
    }
    .map_err(|e| anyhow!("describing {}: {e:?}", entity.describe()))?;
    let ResponseKind::DescribeConfigs(response) = response else {
        bail!("not a DescribeConfigs answer");
    };
    let result = response
        .results
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("the broker answered no resource"))?;
    if let Some(e) = ResponseError::try_from_code(result.error_code) {
        let message = result
            .error_message
            .map(|m| m.to_string())
            .unwrap_or_default();
        bail!("{}: {e} {message}", entity.describe());
    }
    let mut configs: Vec<_> = result.configs.into_iter().collect();
    configs.sort_by(|a, b| a.name.cmp(&b.name));
    println!("{:<44} {:<28} SOURCE", "KEY", "VALUE");
    for config in configs {
        let value = config.value.map(|v| v.to_string()).unwrap_or_default();
        let value = if config.is_sensitive {
            "********".into()
        } else {
            value
        };
        println!(
            "{:<44} {value:<28} {}",
            config.name.as_str(),
            source_name(config.config_source)
        );
    }
    Ok(())
}

async fn alter(
    client: &mut ClusterClient,
    entity: &Entity,
    ops: Vec<(String, i8, String)>,
) -> anyhow::Result<()> {
    let (kind, name) = entity.resource();
    let configs = ops
        .iter()
        .map(|(key, op, value)| {
            AlterableConfig::default()
                .with_name(StrBytes::from_string(key.clone()))
                .with_config_operation(*op)
                .with_value((*op == 0).then(|| StrBytes::from_string(value.clone())))
        })
        .collect();
    let request = RequestKind::IncrementalAlterConfigs(
        IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(kind)
                .with_resource_name(StrBytes::from_string(name))
                .with_configs(configs),
        ]),
    );
    let response = client
        .call_any(ApiKey::IncrementalAlterConfigs, 0, request)
        .await
        .map_err(|e| anyhow!("altering {}: {e:?}", entity.describe()))?;
    let ResponseKind::IncrementalAlterConfigs(response) = response else {
        bail!("not an IncrementalAlterConfigs answer");
    };
    for r in response.responses {
        if let Some(e) = ResponseError::try_from_code(r.error_code) {
            let message = r.error_message.map(|m| m.to_string()).unwrap_or_default();
            bail!("{}: {e} {message}", entity.describe());
        }
    }
    for (key, op, value) in ops {
        match op {
            0 => println!("{}: set {key}={value}", entity.describe()),
            _ => println!("{}: deleted {key}", entity.describe()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_delete_become_operations() {
        let ops = operations(&["retention.ms=1000".into(), "a=b=c".into()], &["x".into()]);
        assert_eq!(
            ops.expect("valid"),
            vec![
                ("retention.ms".into(), 0, "1000".into()),
                ("a".into(), 0, "b=c".into()),
                ("x".into(), 1, String::new()),
            ]
        );
        assert!(operations(&["novalue".into()], &[]).is_err());
        assert!(operations(&[], &[]).is_err());
    }
}
