//! A minimal Kafka client for seedlog's own tools (`seedlog bench`, the simulator's
//! workloads): one request at a time per connection, every call bounded by a timeout (a
//! clogged link holds data forever otherwise). Under the simulator its TCP is simulated.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use seedlog_core::wire::{decode_response, encode_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a call did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No connection could be made.
    Connect(String),
    /// The connection broke or the answer did not arrive in time.
    Lost(String),
}

/// One connection to a broker, opened on demand and dropped on any error.
pub struct Client {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    next_correlation: i32,
    timeout: Duration,
}

impl Client {
    /// A client for the broker at `addr`; nothing is connected yet.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Client {
        Client {
            addr,
            stream: None,
            next_correlation: 1,
            timeout,
        }
    }

    /// Sends one request and waits for its response.
    pub async fn call(
        &mut self,
        api: ApiKey,
        version: i16,
        request: RequestKind,
    ) -> Result<ResponseKind, CallError> {
        let result =
            tokio::time::timeout(self.timeout, self.call_inner(api, version, request)).await;
        match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(CallError::Lost("timed out".into()))
            }
        }
    }

    fn frame(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &RequestKind,
    ) -> Result<Bytes, CallError> {
        let correlation = self.next_correlation;
        self.next_correlation += 1;
        encode_request(api, version, correlation, request).map_err(CallError::Lost)
    }

    async fn connected(&mut self) -> Result<&mut TcpStream, CallError> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| CallError::Connect(e.to_string()))?;
            self.stream = Some(stream);
        }
        Ok(self.stream.as_mut().expect("just connected"))
    }

    async fn call_inner(
        &mut self,
        api: ApiKey,
        version: i16,
        request: RequestKind,
    ) -> Result<ResponseKind, CallError> {
        let frame = self.frame(api, version, &request)?;
        let correlation = self.next_correlation - 1;
        let stream = self.connected().await?;
        let lost = |e: std::io::Error| CallError::Lost(e.to_string());
        stream.write_all(&frame).await.map_err(lost)?;
        // madsim's stream sends on flush.
        stream.flush().await.map_err(lost)?;
        let size = stream.read_i32().await.map_err(lost)?;
        if !(0..=64 << 20).contains(&size) {
            return Err(CallError::Lost(format!("response size {size}")));
        }
        let mut buf = BytesMut::zeroed(4 + size as usize);
        buf[..4].copy_from_slice(&size.to_be_bytes());
        stream.read_exact(&mut buf[4..]).await.map_err(lost)?;
        let (got, response) =
            decode_response(api, version, buf.freeze()).map_err(CallError::Lost)?;
        if got != correlation {
            return Err(CallError::Lost(format!(
                "correlation {got}, expected {correlation}"
            )));
        }
        Ok(response)
    }
}

/// A client of a whole cluster: learns partition leaders from Metadata and sends each
/// partition's requests to its leader. Leaders are re-learned after any error that says the
/// map is stale (the caller reports it with [`ClusterClient::forget_leader`]).
pub struct ClusterClient {
    bootstrap: Vec<SocketAddr>,
    brokers: BTreeMap<i32, SocketAddr>,
    leaders: BTreeMap<(String, i32), i32>,
    /// The newest leader epoch seen per partition: Metadata naming an older epoch is stale
    /// and ignored (KIP-320), and fetches carry it so a deposed leader refuses them.
    epochs: BTreeMap<(String, i32), i32>,
    clients: BTreeMap<SocketAddr, Client>,
    /// Partition count of each topic, from the last Metadata.
    partitions: BTreeMap<String, i32>,
    timeout: Duration,
    /// Rotates requests that any broker can answer across the brokers.
    next_any: usize,
    last_any: Option<SocketAddr>,
}

impl ClusterClient {
    /// A client that starts from `bootstrap` addresses.
    pub fn new(bootstrap: Vec<SocketAddr>, timeout: Duration) -> Self {
        ClusterClient {
            bootstrap,
            brokers: BTreeMap::new(),
            leaders: BTreeMap::new(),
            epochs: BTreeMap::new(),
            clients: BTreeMap::new(),
            partitions: BTreeMap::new(),
            timeout,
            next_any: 0,
            last_any: None,
        }
    }

    /// Sends a request any broker can answer, to the next broker in turn.
    pub async fn call_any(
        &mut self,
        api: ApiKey,
        version: i16,
        request: RequestKind,
    ) -> Result<ResponseKind, CallError> {
        let mut candidates: Vec<SocketAddr> = self.brokers.values().copied().collect();
        for addr in &self.bootstrap {
            if !candidates.contains(addr) {
                candidates.push(*addr);
            }
        }
        self.next_any = self.next_any.wrapping_add(1);
        let addr = candidates[self.next_any % candidates.len()];
        self.last_any = Some(addr);
        self.client(addr).call(api, version, request).await
    }

    /// The broker [`Self::call_any`] last sent to.
    pub fn last_any(&self) -> Option<SocketAddr> {
        self.last_any
    }

    /// Sends a request to the broker at `addr`.
    pub async fn call_addr(
        &mut self,
        addr: SocketAddr,
        api: ApiKey,
        version: i16,
        request: RequestKind,
    ) -> Result<ResponseKind, CallError> {
        self.client(addr).call(api, version, request).await
    }

    /// Sends a request to the leader of `topic`/`partition`, learning it first if needed.
    pub async fn call_leader(
        &mut self,
        topic: &str,
        partition: i32,
        api: ApiKey,
        version: i16,
        request: RequestKind,
    ) -> Result<ResponseKind, CallError> {
        let key = (topic.to_string(), partition);
        let known = |c: &Self| {
            c.leaders
                .get(&key)
                .is_some_and(|id| c.brokers.contains_key(id))
        };
        if !known(self) {
            self.refresh().await?;
        }
        let addr = self
            .leaders
            .get(&key)
            .and_then(|id| self.brokers.get(id))
            .copied()
            .ok_or_else(|| {
                CallError::Connect(format!("no leader known for {topic}-{partition}"))
            })?;
        let result = self.client(addr).call(api, version, request).await;
        if result.is_err() {
            self.leaders.remove(&key);
        }
        result
    }

    /// The leader of each partition, as far as known (refreshing once if any is unknown).
    pub async fn leaders(&mut self, partitions: &[(String, i32)]) -> BTreeMap<(String, i32), i32> {
        let known = |p| {
            self.leaders
                .get(p)
                .is_some_and(|id| self.brokers.contains_key(id))
        };
        if !partitions.iter().all(known) {
            let _ = self.refresh().await;
        }
        partitions
            .iter()
            .filter_map(|p| Some((p.clone(), *self.leaders.get(p)?)))
            .filter(|(_, id)| self.brokers.contains_key(id))
            .collect()
    }

    /// Sends a request to broker `id`.
    pub async fn call_broker(
        &mut self,
        id: i32,
        api: ApiKey,
        version: i16,
        request: RequestKind,
    ) -> Result<ResponseKind, CallError> {
        let addr = *self
            .brokers
            .get(&id)
            .ok_or_else(|| CallError::Connect(format!("broker {id} unknown")))?;
        let result = self.client(addr).call(api, version, request).await;
        if result.is_err() {
            self.leaders.retain(|_, leader| *leader != id);
        }
        result
    }

    /// The newest leader epoch seen for a partition, -1 if none.
    pub fn leader_epoch(&self, topic: &str, partition: i32) -> i32 {
        self.epochs
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(-1)
    }

    /// Forgets the leader of a partition (after NOT_LEADER_OR_FOLLOWER and the like).
    pub fn forget_leader(&mut self, topic: &str, partition: i32) {
        self.leaders.remove(&(topic.to_string(), partition));
    }

    /// The brokers known from the last Metadata.
    pub fn broker_ids(&self) -> Vec<i32> {
        self.brokers.keys().copied().collect()
    }

    /// How many partitions `topic` has, if the last Metadata named it.
    pub fn partition_count(&self, topic: &str) -> Option<i32> {
        self.partitions.get(topic).copied()
    }

    /// The broker coordinating consumer group `group` (FindCoordinator), or why none is.
    pub async fn coordinator(&mut self, group: &str) -> Result<i32, String> {
        self.find_coordinator(0, group).await
    }

    /// The broker coordinating transactional id `id`, or why none is.
    pub async fn txn_coordinator(&mut self, id: &str) -> Result<i32, String> {
        self.find_coordinator(1, id).await
    }

    async fn find_coordinator(&mut self, key_type: i8, key: &str) -> Result<i32, String> {
        use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
        let request = RequestKind::FindCoordinator(
            FindCoordinatorRequest::default()
                .with_key_type(key_type)
                .with_key(kafka_protocol::protocol::StrBytes::from_string(key.into())),
        );
        let response = self
            .call_any(ApiKey::FindCoordinator, 3, request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let ResponseKind::FindCoordinator(found) = response else {
            return Err("not a FindCoordinator answer".into());
        };
        if let Some(e) = kafka_protocol::ResponseError::try_from_code(found.error_code) {
            return Err(e.to_string());
        }
        let id = found.node_id.0;
        if !self.brokers.contains_key(&id) {
            self.refresh().await.map_err(|e| format!("{e:?}"))?;
        }
        Ok(id)
    }

    /// Learns brokers and leaders from one broker's Metadata.
    pub async fn refresh(&mut self) -> Result<(), CallError> {
        let request = RequestKind::Metadata(MetadataRequest::default().with_topics(None));
        let ResponseKind::Metadata(metadata) = self.call_any(ApiKey::Metadata, 12, request).await?
        else {
            return Err(CallError::Lost("not a Metadata response".into()));
        };
        for broker in &metadata.brokers {
            if let Ok(ip) = broker.host.parse::<std::net::IpAddr>() {
                let addr = SocketAddr::new(ip, broker.port as u16);
                self.brokers.insert(broker.node_id.0, addr);
            }
        }
        for topic in &metadata.topics {
            let Some(name) = &topic.name else { continue };
            self.partitions
                .insert(name.0.to_string(), topic.partitions.len() as i32);
            for p in &topic.partitions {
                let key = (name.0.to_string(), p.partition_index);
                let known = self.epochs.get(&key).copied().unwrap_or(-1);
                if p.leader_epoch < known {
                    continue; // This broker has not heard of the newer leader yet.
                }
                self.epochs.insert(key.clone(), p.leader_epoch);
                if p.error_code == 0 && p.leader_id.0 >= 0 {
                    self.leaders.insert(key, p.leader_id.0);
                } else {
                    self.leaders.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn client(&mut self, addr: SocketAddr) -> &mut Client {
        let timeout = self.timeout;
        self.clients
            .entry(addr)
            .or_insert_with(|| Client::new(addr, timeout))
    }
}
