//! One simulated run: start the cluster and clients, inject faults, heal, require recovery,
//! read everything back, and judge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::{Handle, Runtime};
use tokio::time::Instant;

use crate::cluster::Broker;
use crate::faults::{self, Brokers};
use crate::history::{Check, History};
use crate::intact::IntactCheck;
use crate::report::Report;
use crate::scenario::Plan;
use crate::workload::{self, Ctx};
use seedlog_core::Observation;
use seedlog_node::peer::PROTOCOL_NEWEST;
use seedlog_node::server::Observer;

/// Options that do not change what a run does, only what it shows.
#[derive(Clone, Copy, Debug, Default)]
pub struct Show {
    /// Print a progress line every few simulated seconds.
    pub progress: bool,
}

/// Runs `plan` in a fresh madsim runtime seeded with its seed.
pub fn run(plan: &Plan, show: Show) -> Report {
    let wall = std::time::Instant::now();
    let runtime = Runtime::with_seed_and_config(plan.seed, madsim::Config::default());
    let plan = Arc::new(plan.clone());
    let mut report = runtime.block_on(simulate(plan, show));
    report.wall_ms = wall.elapsed().as_millis() as u64;
    report
}

async fn simulate(plan: Arc<Plan>, show: Show) -> Report {
    let history = Arc::new(Mutex::new(History::new()));
    NetSim::current().update_config(|c| {
        c.packet_loss_rate = plan.packet_loss;
        if let Some([low, high]) = plan.latency_ms {
            c.send_latency = Duration::from_secs_f64(low / 1000.0)
                ..Duration::from_secs_f64(high.max(low + 0.001) / 1000.0);
        }
    });
    let observed = history.clone();
    // Set once the brokers' disks exist; reports before that (none commit yet) go unchecked.
    let intact: Arc<OnceLock<IntactCheck>> = Arc::new(OnceLock::new());
    let intact_check = intact.clone();
    let start = Instant::now();
    let observer: Observer = Arc::new(move |broker, observation| match observation {
        Observation::Elected { group, term } => {
            let at_ms = start.elapsed().as_millis() as u64;
            observed
                .lock()
                .expect("history lock")
                .elected(at_ms, broker, group, *term);
        }
        Observation::Acls { bindings } => {
            let at_ms = start.elapsed().as_millis() as u64;
            let mut history = observed.lock().expect("history lock");
            history.acls_applied(at_ms, broker, bindings);
        }
        Observation::RaftStateWritten { group, facts } => {
            let mut history = observed.lock().expect("history lock");
            history.raft_state_written(broker, group, *facts);
        }
        Observation::RaftStateCleared { group } => {
            let mut history = observed.lock().expect("history lock");
            history.raft_state_cleared(broker, group);
        }
        Observation::RaftStateLoaded { groups } => {
            let at_ms = start.elapsed().as_millis() as u64;
            let mut history = observed.lock().expect("history lock");
            history.raft_state_loaded(at_ms, broker, groups);
        }
        Observation::Credentials { credentials } => {
            let at_ms = start.elapsed().as_millis() as u64;
            let mut history = observed.lock().expect("history lock");
            history.credentials_applied(at_ms, broker, credentials);
        }
        Observation::Committed {
            group,
            topic_id,
            entries,
        } => {
            let mut history = observed.lock().expect("history lock");
            let fresh = history.committed(broker, group, topic_id, entries);
            if let Some(check) = intact_check.get() {
                check.check(group, &fresh, &mut history);
            }
        }
        // For the node's metrics; simulated brokers run without an admin listener.
        Observation::Visible { .. } => {}
    });
    let brokers: Brokers = Arc::new(Mutex::new(
        (0..plan.scenario.brokers)
            .map(|i| {
                let s = &plan.scenario;
                let voters = s.voters.unwrap_or(s.brokers);
                let skew = plan.clock_skews_ms[i as usize];
                let sasl = s.workload.sasl_clients > 0;
                let sizes = (s.brokers, voters);
                // A rolling upgrade starts every broker on the binary before this one.
                let protocol = match plan.faults.upgrade {
                    Some(_) => PROTOCOL_NEWEST - 1,
                    None => PROTOCOL_NEWEST,
                };
                let run = (skew, sasl, protocol);
                Broker::start(i, sizes, plan.seed, run, observer.clone())
            })
            .collect(),
    ));
    let broker_addrs = brokers
        .lock()
        .expect("brokers lock")
        .iter()
        .map(|b| b.addr)
        .collect();
    if let Some(range) = plan.faults.slow_disk_ms {
        for broker in brokers.lock().expect("brokers lock").iter() {
            broker
                .disk
                .lock()
                .expect("disk lock")
                .faults
                .sync_latency_ms = Some(range);
        }
    }
    let disks = (brokers.lock().expect("brokers lock").iter())
        .map(|b| b.disk.clone())
        .collect();
    let replication = plan.scenario.topics.iter();
    let replication = replication
        .map(|(t, c)| (t.to_string(), c.replication))
        .collect();
    let _ = intact.set(IntactCheck { disks, replication });
    let ctx = Ctx {
        plan: plan.clone(),
        brokers: broker_addrs,
        history: history.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        groups_stop: Arc::new(AtomicBool::new(false)),
        start,
        wire: Arc::default(),
    };
    seedlog_node::peer::wire::set_tap(Some(faults::wire_tap(ctx.clone())));
    seedlog_node::peer::wire::set_handshakes(Some(handshakes(&ctx, &brokers)));
    let clients = Handle::current()
        .create_node()
        .name("clients")
        .ip("10.0.1.1".parse().expect("ip"))
        .build();

    let setup = ctx.clone();
    clients
        .spawn(async move { workload::create_topics(&setup).await })
        .await
        .expect("topic creation task");
    let mut tasks = Vec::new();
    let w = &plan.scenario.workload;
    let producers = (0..w.producers_acks_all)
        .map(|i| (i, -1))
        .chain((0..w.producers_acks_one).map(|i| (w.producers_acks_all + i, 1)));
    for (id, acks) in producers {
        tasks.push(clients.spawn(workload::producer(ctx.clone(), id, acks)));
    }
    for id in 0..w.idempotent_producers {
        tasks.push(clients.spawn(workload::idempotent_producer(ctx.clone(), id)));
    }
    for id in 0..w.transactional_producers {
        tasks.push(clients.spawn(workload::txn_producer(ctx.clone(), id)));
    }
    if w.transactional_producers > 0 || w.transform_members > 0 {
        tasks.push(clients.spawn(workload::txn_reader(ctx.clone(), 0)));
    }
    for id in 0..w.consumers {
        tasks.push(clients.spawn(workload::consumer(ctx.clone(), id)));
    }
    for id in 0..w.admins {
        tasks.push(clients.spawn(workload::admin(ctx.clone(), id)));
    }
    for id in 0..w.movers {
        tasks.push(clients.spawn(workload::mover(ctx.clone(), id)));
    }
    for id in 0..w.acl_flippers {
        tasks.push(clients.spawn(workload::acl_flipper(ctx.clone(), id)));
    }
    for id in 0..w.guarded_producers {
        tasks.push(clients.spawn(workload::guarded_producer(ctx.clone(), id)));
    }
    for id in 0..w.credential_flippers {
        tasks.push(clients.spawn(workload::credential_flipper(ctx.clone(), id)));
    }
    for id in 0..w.sasl_clients {
        tasks.push(clients.spawn(workload::sasl_client(ctx.clone(), id)));
    }
    let members: Vec<_> = (0..w.group_members)
        .map(|id| clients.spawn(workload::group_member(ctx.clone(), id)))
        .chain(
            (0..w.transform_members)
                .map(|id| clients.spawn(workload::transform_member(ctx.clone(), id))),
        )
        .collect();
    let injectors = faults::start(&ctx, &brokers);
    tokio::spawn(faults::supervisor(ctx.clone(), brokers.clone()));

    let workload_end = ctx.start + Duration::from_secs_f64(plan.scenario.duration_s);
    while Instant::now() < workload_end {
        tokio::time::sleep(Duration::from_secs(5).min(workload_end - Instant::now())).await;
        if show.progress {
            let h = history.lock().expect("history lock");
            let c = &h.counts;
            let faults: u64 = c.faults.values().sum();
            eprintln!(
                "  [sim {:>5.1}s] acked {} (+{} acks=1) reads {} faults {} violations {}",
                ctx.now_ms() as f64 / 1000.0,
                c.acked_durable,
                c.acked_leader,
                c.reads,
                faults,
                h.violations().len()
            );
        }
    }

    // Heal, then give the cluster its bounded time to recover.
    ctx.stop.store(true, Ordering::Relaxed);
    for task in injectors {
        task.abort();
    }
    faults::heal(&ctx, &brokers);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    let liveness_deadline = Instant::now() + Duration::from_secs_f64(plan.scenario.liveness_s);
    let probe_ctx = ctx.clone();
    let recovered = clients
        .spawn(async move { workload::liveness_probe(&probe_ctx, liveness_deadline).await })
        .await
        .expect("probe task");
    let recovered = match recovered {
        Ok(ms) if w.group_members > 0 => {
            group_settles(&ctx, w.group_members as usize, liveness_deadline)
                .await
                .map(|()| ms)
        }
        other => other,
    };
    let recovered = match recovered {
        Ok(ms) if w.transform_members > 0 => {
            let check_ctx = ctx.clone();
            clients
                .spawn(async move {
                    workload::transform_caught_up(&check_ctx, liveness_deadline).await
                })
                .await
                .expect("transform catch-up task")
                .map(|()| ms)
        }
        other => other,
    };
    ctx.groups_stop.store(true, Ordering::Relaxed);
    for task in members {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    let recovered_ms = match recovered {
        Ok(ms) => {
            let read_ctx = ctx.clone();
            let final_read = clients
                .spawn(async move { workload::final_read(&read_ctx).await })
                .await
                .expect("final read task");
            if let Err(e) = final_read {
                history
                    .lock()
                    .expect("history lock")
                    .liveness_failed(format!("final read: {e}"));
            }
            if plan.scenario.workload.transactional_producers > 0 {
                // Open transactions end by their timeout within a few seconds.
                let deadline = Instant::now() + Duration::from_secs(20);
                let read_ctx = ctx.clone();
                let _ = clients
                    .spawn(async move { workload::final_committed_read(&read_ctx, deadline).await })
                    .await
                    .expect("final read_committed task");
            }
            if plan.scenario.workload.transform_members > 0 {
                let deadline = Instant::now() + Duration::from_secs(20);
                let check_ctx = ctx.clone();
                clients
                    .spawn(
                        async move { workload::final_transform_check(&check_ctx, deadline).await },
                    )
                    .await
                    .expect("transform check task");
            }
            crate::agreement::check(&ctx, &brokers).await;
            Some(ms)
        }
        Err(e) => {
            history.lock().expect("history lock").liveness_failed(e);
            None
        }
    };
    let sim_ms = ctx.now_ms();
    seedlog_node::peer::wire::set_tap(None);
    seedlog_node::peer::wire::set_handshakes(None);
    let history = std::mem::take(&mut *history.lock().expect("history lock"));
    Report::new(history, sim_ms, recovered_ms)
}

/// Judges each peer handshake as a broker reports it: it must agree the newest version both
/// brokers' binaries speak (as they run now), and nothing may be refused.
fn handshakes(ctx: &Ctx, brokers: &Brokers) -> seedlog_node::peer::wire::Handshakes {
    let protocols: Vec<_> = (brokers.lock().expect("brokers lock").iter())
        .map(|b| b.protocol.clone())
        .collect();
    let ctx = ctx.clone();
    Box::new(move |dialler, acceptor, outcome| {
        let speaks = |id: i32| {
            let index = usize::try_from(id - 1).ok();
            index
                .and_then(|i| protocols.get(i))
                .map(|p| p.load(Ordering::SeqCst))
        };
        let both = speaks(dialler).zip(speaks(acceptor));
        let expected = both.map(|(d, a)| d.min(a));
        let detail = match (outcome, expected) {
            (Ok(agreed), Some(expected)) if agreed == expected => {
                return ctx.history().peer_link(agreed);
            }
            (Ok(agreed), _) => format!(
                "broker {dialler} to broker {acceptor} agreed version {agreed}, both speak {expected:?}"
            ),
            (Err(why), _) => format!("broker {dialler} to broker {acceptor} refused: {why}"),
        };
        ctx.history().violate(Check::PeerVersions, detail);
    })
}

/// After the heal, the group settles within the liveness deadline: its latest generation
/// hands every partition to exactly one of the members, and stays the latest for longer than
/// a session (a member that is not really there would have been dropped by then).
async fn group_settles(ctx: &Ctx, members: usize, deadline: Instant) -> Result<(), String> {
    let partitions = ctx.source_partitions();
    let mut since: Option<(i32, Instant)> = None;
    loop {
        match ctx.history().group_settled(members, &partitions) {
            Some(g) => match since {
                Some((s, at)) if s == g => {
                    if at.elapsed() >= Duration::from_secs(4) {
                        return Ok(());
                    }
                }
                _ => since = Some((g, Instant::now())),
            },
            None => since = None,
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "group {} did not settle: no generation gave every partition to one of its {members} members and held",
                workload::GROUP
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
