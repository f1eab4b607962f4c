//! The simulated brokers: real `seedlog` node code on madsim nodes, each with a disk that
//! outlives its process.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use madsim::runtime::{Handle, NodeHandle};
use seedlog_core::config::BrokerConfig;
use seedlog_core::security::SecurityProtocol;
use seedlog_node::config::{NodeConfig, StorageKind};
use seedlog_node::listeners::ListenerConfig;
use seedlog_node::server::{serve_with, sync_channel, Clock, Observer};

use crate::disk::{SimDisk, SimStorage};
use crate::scenario::Dice;

/// The Kafka port every simulated broker listens on.
pub const KAFKA_PORT: u16 = 9092;

/// The peer (Raft) port every simulated broker listens on.
pub const PEER_PORT: u16 = 9093;

/// The SASL_PLAINTEXT port of a simulated broker whose scenario logs clients in.
pub const SASL_PORT: u16 = 9094;

/// The address of broker `index` (0-based): 10.0.0.(index + 1).
fn broker_ip(index: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, index as u8 + 1))
}

/// One simulated broker.
pub struct Broker {
    /// Its madsim node.
    pub node: NodeHandle,
    /// Its disk.
    pub disk: Arc<Mutex<SimDisk>>,
    /// True while the broker process runs (false once it stopped by itself).
    pub alive: Arc<AtomicBool>,
    /// True while the simulator holds it down on purpose (crashed, not yet restarted).
    pub down: bool,
    /// Where clients reach it.
    pub addr: SocketAddr,
    /// Wakes the running process's shutdown future: a clean stop, as SIGTERM.
    stop: Arc<tokio::sync::Notify>,
    /// How far its wall clock is off, in milliseconds: the clock faults step it. It is the
    /// machine's clock, so it stays as it is across restarts.
    pub wall_offset: Arc<AtomicI64>,
    /// The newest peer protocol version its binary speaks, read at each start: a rolling
    /// upgrade raises it between a stop and the next start.
    pub protocol: Arc<AtomicU8>,
}

impl Broker {
    /// Starts broker `index` (0-based) of a cluster of `size` (the first `voters` vote) with
    /// a fresh disk and its wall clock `skew_ms` off; what it reports about itself goes to
    /// `observer`. With `sasl`, it listens for SASL_PLAINTEXT clients on [`SASL_PORT`] too;
    /// it speaks peer protocol versions up to `protocol`.
    pub fn start(
        index: u32,
        (size, voters): (u32, u32),
        seed: u64,
        (skew_ms, sasl, protocol): (i64, bool, u8),
        observer: Observer,
    ) -> Broker {
        let ip = broker_ip(index);
        let addr = SocketAddr::new(ip, KAFKA_PORT);
        let disk = Arc::new(Mutex::new(SimDisk::new(Dice::new(
            seed,
            500 + u64::from(index),
        ))));
        let alive = Arc::new(AtomicBool::new(false));
        let mut config = node_config(index, size, voters, addr);
        if sasl {
            config.listeners.push(ListenerConfig {
                name: "SASL_PLAINTEXT".into(),
                protocol: SecurityProtocol::SaslPlaintext,
                bind: SocketAddr::new(ip, SASL_PORT),
                advertised: None,
            });
        }
        let stop = Arc::new(tokio::sync::Notify::new());
        let wall_offset = Arc::new(AtomicI64::new(skew_ms));
        let (init_disk, init_alive, init_stop) = (disk.clone(), alive.clone(), stop.clone());
        let init_offset = wall_offset.clone();
        let protocol = Arc::new(AtomicU8::new(protocol));
        let init_protocol = protocol.clone();
        let node = Handle::current()
            .create_node()
            .name(format!("broker-{}", index + 1))
            .ip(ip)
            .init(move || {
                let (disk, alive) = (init_disk.clone(), init_alive.clone());
                let mut config = config.clone();
                config.peer_protocol = init_protocol.load(Ordering::SeqCst);
                let observer = observer.clone();
                let stop = init_stop.clone();
                let clock = Clock::with_wall_offset(init_offset.clone());
                async move {
                    alive.store(true, Ordering::SeqCst);
                    let (report, syncs) = sync_channel();
                    let storage = Box::new(SimStorage::new(disk, report));
                    let shutdown = async move { stop.notified().await };
                    let result =
                        serve_with(config, storage, syncs, shutdown, Some(observer), clock).await;
                    tracing::info!(?result, "broker process ended");
                    alive.store(false, Ordering::SeqCst);
                }
            })
            .build();
        Broker {
            node,
            disk,
            alive,
            down: false,
            addr,
            stop,
            wall_offset,
            protocol,
        }
    }

    /// True if the broker stopped by itself (EIO, ENOSPC) and was not restarted yet.
    pub fn stopped_by_itself(&self) -> bool {
        !self.down && !self.alive.load(Ordering::SeqCst)
    }

    /// Asks the process to stop cleanly; returns the flag that drops once it has exited.
    /// The broker counts as down (the supervisor leaves it alone) until [`Self::restart`].
    pub fn begin_clean_stop(&mut self) -> Arc<AtomicBool> {
        self.down = true;
        self.stop.notify_one();
        self.alive.clone()
    }

    /// Kills the process; the disk keeps what a power loss leaves.
    pub fn crash(&mut self, torn_chance: f64) -> (u64, u64) {
        Handle::current().kill(self.node.id());
        self.down = true;
        self.alive.store(false, Ordering::SeqCst);
        self.disk.lock().expect("disk lock").power_loss(torn_chance)
    }

    /// If the broker stopped by itself, restarts it on the disk a power loss would leave
    /// (the failed write or fsync left it in an unknown state). Returns (bytes lost, files
    /// torn) if it did.
    pub fn revive_if_stopped(&mut self, torn_chance: f64) -> Option<(u64, u64)> {
        if !self.stopped_by_itself() {
            return None;
        }
        let lost = self.disk.lock().expect("disk lock").power_loss(torn_chance);
        self.restart();
        Some(lost)
    }

    /// Starts the process again on the same disk.
    pub fn restart(&mut self) {
        self.down = false;
        // madsim's restart alone keeps the old sockets bound; a kill releases them.
        Handle::current().kill(self.node.id());
        Handle::current().restart(self.node.id());
    }
}

/// Broker ids are 1..=size; the first `voters` of them vote in the metadata quorum and the
/// rest join it as learners.
fn node_config(index: u32, size: u32, voters: u32, addr: SocketAddr) -> NodeConfig {
    let me = index as i32 + 1;
    let mut broker = BrokerConfig {
        broker_id: me,
        retention_check_interval_ms: 1000,
        report_commits: true,
        ..BrokerConfig::default()
    };
    let voters: BTreeMap<i32, String> = if size > 1 {
        (0..voters.clamp(1, size))
            .map(|i| {
                (
                    i as i32 + 1,
                    SocketAddr::new(broker_ip(i), PEER_PORT).to_string(),
                )
            })
            .collect()
    } else {
        BTreeMap::new()
    };
    broker.cluster.voters = voters.keys().copied().collect();
    broker.cluster.peer_address = SocketAddr::new(broker_ip(index), PEER_PORT).to_string();
    // Snapshot the metadata often, so runs exercise compaction and snapshot installs.
    broker.cluster.snapshot_entries = 16;
    // Fence silent brokers quickly, so crashes and partitions exercise fencing and return.
    broker.cluster.session_timeout_ms = 2000;
    // Groups form at once and members may use short sessions, so runs see many rebalances;
    // few offsets partitions keep the idle Raft groups cheap.
    broker.groups.initial_rebalance_delay_ms = 200;
    broker.groups.min_session_timeout_ms = 1000;
    broker.groups.offsets_partitions = 4;
    // Transactions that faults leave open are aborted within a second of their timeout.
    broker.txns.partitions = 4;
    broker.txns.abort_check_interval_ms = 500;
    // The authorizer is on everywhere; what no ACL names stays open, so only scenarios
    // that make ACLs (acl_flippers) see refusals.
    broker.security.authorizer = seedlog_core::security::acl::AuthorizerConfig {
        enabled: true,
        super_users: Vec::new(),
        allow_if_no_acl: true,
    };
    NodeConfig {
        listeners: vec![ListenerConfig {
            name: "PLAINTEXT".into(),
            protocol: SecurityProtocol::Plaintext,
            bind: addr,
            advertised: None,
        }],
        max_connections_per_ip: 1000,
        // Simulated brokers prove themselves to each other as real ones do.
        peer_secret: "seedlog-sim".into(),
        peer_protocol: seedlog_node::peer::PROTOCOL_NEWEST,
        peer_tls: false,
        data_dir: PathBuf::from(format!("sim-disk-{}", index + 1)),
        storage: StorageKind::Disk,
        socket_request_max_bytes: 100 << 20,
        peer_listen: (size > 1).then(|| SocketAddr::new(broker_ip(index), PEER_PORT)),
        admin_listen: None,
        peers: voters.into_iter().filter(|(id, _)| *id != me).collect(),
        broker,
    }
}
