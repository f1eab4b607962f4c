//! `seedlog transactions`: list the transactional ids the cluster coordinates, and describe
//! one (its producer, state, timeout and partitions). Works against any Kafka-compatible
//! broker that serves ListTransactions and DescribeTransactions (KIP-664).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail};
use clap::Subcommand;
use kafka_protocol::messages::describe_transactions_request::DescribeTransactionsRequest;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind, TransactionalId};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::client::ClusterClient;
use crate::groups::Target;

/// `seedlog transactions ...`
#[derive(Subcommand, Debug)]
pub enum TransactionsCommand {
    /// List the transactional ids of the cluster, with their producer ids and states.
    List(Target),
    /// A transactional id's producer id and epoch, state, timeout and partitions.
    Describe {
        #[command(flatten)]
        target: Target,
        /// The transactional id.
        transactional_id: String,
    },
}

/// Runs one `seedlog transactions` command, printing to stdout.
pub async fn run(command: TransactionsCommand) -> anyhow::Result<()> {
    match command {
        TransactionsCommand::List(target) => list(&mut target.client().await?).await,
        TransactionsCommand::Describe {
            target,
            transactional_id,
        } => describe(&mut target.client().await?, &transactional_id).await,
    }
}

/// Every broker answers for the ids it coordinates.
async fn list(client: &mut ClusterClient) -> anyhow::Result<()> {
    let mut ids = BTreeMap::new();
    for id in client.broker_ids() {
        let request = RequestKind::ListTransactions(Default::default());
        let response = client
            .call_broker(id, ApiKey::ListTransactions, 0, request)
            .await
            .map_err(|e| anyhow!("broker {id}: {e:?}"))?;
        let ResponseKind::ListTransactions(r) = response else {
            bail!("broker {id}: not a ListTransactions answer");
        };
        if let Some(e) = ResponseError::try_from_code(r.error_code) {
            eprintln!("broker {id}: {e} (its list may be incomplete)");
        }
        for t in r.transaction_states {
            let state = (t.producer_id.0, t.transaction_state.to_string(), id);
            ids.insert(t.transactional_id.0.to_string(), state);
        }
    }
    println!(
        "{:<40} {:>12} {:<16} COORDINATOR",
        "TRANSACTIONAL-ID", "PRODUCER-ID", "STATE"
    );
    for (txn_id, (producer_id, state, coordinator)) in ids {
        println!("{txn_id:<40} {producer_id:>12} {state:<16} {coordinator}");
    }
    Ok(())
}

async fn describe(client: &mut ClusterClient, transactional_id: &str) -> anyhow::Result<()> {
    let coordinator = client
        .txn_coordinator(transactional_id)
        .await
        .map_err(|e| anyhow!("no coordinator for {transactional_id}: {e}"))?;
    let request = RequestKind::DescribeTransactions(
        DescribeTransactionsRequest::default().with_transactional_ids(vec![TransactionalId(
            StrBytes::from_string(transactional_id.into()),
        )]),
    );
    let response = client
        .call_broker(coordinator, ApiKey::DescribeTransactions, 0, request)
        .await
        .map_err(|e| anyhow!("broker {coordinator}: {e:?}"))?;
    let ResponseKind::DescribeTransactions(r) = response else {
        bail!("not a DescribeTransactions answer");
    };
    let t = r
        .transaction_states
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("empty DescribeTransactions answer"))?;
    if let Some(e) = ResponseError::try_from_code(t.error_code) {
        bail!("{transactional_id}: {e}");
    }
    println!(
        "transactional id {transactional_id}: {} on coordinator {coordinator}",
        t.transaction_state
    );
    println!("producer id {} epoch {}", t.producer_id.0, t.producer_epoch);
    println!("timeout {} ms", t.transaction_timeout_ms);
    if t.transaction_start_time_ms >= 0 {
        println!("started at {} ms (wall clock)", t.transaction_start_time_ms);
    }
    for topic in t.topics {
        let partitions: Vec<String> = topic.partitions.iter().map(i32::to_string).collect();
        println!("  {} partitions {}", topic.topic.0, partitions.join(","));
    }
    Ok(())
}
