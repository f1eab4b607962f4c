//! `seedlog dev-cluster`: a local cluster of separate `seedlog` processes, for trying
//! failover on one machine. Broker `i` (1-based) serves clients on 127.0.0.1:(9091 + i)
//! and its peers on 127.0.0.1:(9191 + i); its data and log live under `DIR/node-i`.
//! Ctrl-C (or SIGTERM) stops every broker cleanly; a broker killed by hand is reported and
//! the others keep running, as in a real cluster. If `dev-cluster` itself dies (kill -9),
//! the kernel sends each broker SIGTERM (Linux's parent-death signal), so no broker
//! outlives it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tracing::{info, warn};

/// Settings for `seedlog dev-cluster`.
#[derive(Args, Debug, Clone)]
pub struct DevClusterArgs {
    /// Number of brokers, each a voter of the metadata quorum.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Directory for every broker's data and log.
    #[arg(long, default_value = "seedlog-dev-cluster")]
    pub dir: PathBuf,
    /// Client port of broker 1; broker i listens on this + i - 1.
    #[arg(long, default_value_t = 9092)]
    pub base_port: u16,
    /// Clients connect with SASL_SSL (SCRAM-SHA-512) to certificates generated under
    /// DIR/certs, the authorizer is on, brokers prove a generated peer secret to each other,
    /// and a super user `admin` is made; DIR/client.properties has what a client needs.
    /// An administrator's PLAINTEXT listener stays on 127.0.0.1, at client port + 200.
    #[arg(long)]
    pub secure: bool,
}

/// What a secure dev cluster's brokers are started with.
struct Secure {
    keystore: PathBuf,
    ca: PathBuf,
    peer_secret: String,
    admin_password: String,
}

impl Secure {
    fn prepare(dir: &std::path::Path) -> anyhow::Result<Self> {
        let written = crate::certs::run(&crate::certs::CertsArgs {
            dir: dir.join("certs"),
            hosts: "localhost,127.0.0.1".into(),
            clients: Vec::new(),
            expired_clients: false,
        })?;
        Ok(Secure {
            keystore: written.keystore,
            ca: written.ca,
            peer_secret: crate::access::random_hex(16),
            admin_password: crate::access::random_hex(12),
        })
    }

    fn broker_args(&self, command: &mut Command, client_port: u16) {
        command
            .args([
                "--listeners",
                &format!(
                    "SASL_SSL://127.0.0.1:{client_port},PLAINTEXT://127.0.0.1:{}",
                    client_port + 200
                ),
            ])
            .args(["--ssl-keystore-location", &self.keystore.to_string_lossy()])
            .args(["--authorizer-class-name", "StandardAuthorizer"])
            .args(["--super-users", "User:admin;User:ANONYMOUS"])
            // Through the environment: kept off `ps`.
            .env("SEEDLOG_PEER_SECRET", &self.peer_secret);
    }

    /// Makes the admin user once the quorum answers, waits until every broker knows the
    /// user and every other broker, and writes client.properties: a client that reads it
    /// finds a cluster where any broker authenticates it and names a controller it lists.
    async fn finish(
        &self,
        dir: &std::path::Path,
        bootstrap: &str,
        admin_ports: std::ops::Range<u16>,
    ) -> anyhow::Result<()> {
        let admin = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let target = admin(admin_ports.start);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut client =
                crate::client::ClusterClient::new(vec![target], Duration::from_secs(5));
            let made = match client.refresh().await {
                Ok(()) => {
                    let mechanism = seedlog_core::security::scram::Mechanism::Sha512;
                    crate::access::create_user(
                        &mut client,
                        "admin",
                        &self.admin_password,
                        mechanism,
                        8192,
                    )
                    .await
                }
                Err(e) => Err(anyhow::anyhow!("{e:?}")),
            };
            match made {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e.context("making the admin user"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        let brokers = admin_ports.len();
        let mut client = crate::client::ClusterClient::new(vec![target], Duration::from_secs(5));
        for addr in admin_ports.map(admin) {
            while !(knows_brokers(&mut client, addr, brokers).await
                && crate::access::user_known(&mut client, addr, "admin").await)
            {
                if tokio::time::Instant::now() >= deadline {
                    bail!("the broker at {addr} did not learn every broker and the admin user in time");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let properties = format!(
            "bootstrap.servers={bootstrap}\nsecurity.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n\
             sasl.username=admin\nsasl.password={}\nssl.ca.location={}\n",
            self.admin_password,
            self.ca.display()
        );
        let path = dir.join("client.properties");
        std::fs::write(&path, properties).with_context(|| format!("writing {}", path.display()))?;
        info!(properties = %path.display(), user = "admin", "secure dev cluster ready: clients use SASL_SSL with the settings in this file");
        Ok(())
    }
}

/// True if the broker at `addr` lists `brokers` registered brokers in its Metadata.
async fn knows_brokers(
    client: &mut crate::client::ClusterClient,
    addr: std::net::SocketAddr,
    brokers: usize,
) -> bool {
    use kafka_protocol::messages::{ApiKey, MetadataRequest, RequestKind, ResponseKind};
    let request = RequestKind::Metadata(MetadataRequest::default().with_topics(Some(Vec::new())));
    let answer = client.call_addr(addr, ApiKey::Metadata, 12, request).await;
    matches!(answer, Ok(ResponseKind::Metadata(m)) if m.brokers.len() == brokers)
}

/// Asks the kernel to send the child SIGTERM when this process dies, however it dies.
#[cfg(target_os = "linux")]
fn stop_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // The signal follows the thread that spawns: a runtime worker, alive as long as the
    // process. SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid, raise); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the signal was armed: stop at once.
            if libc::getppid() != parent {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        });
    }
}

/// Elsewhere there is no parent-death signal: Ctrl-C still stops the brokers.
#[cfg(not(target_os = "linux"))]
fn stop_with_parent(_command: &mut Command) {}

/// Starts the brokers and waits for Ctrl-C.
pub async fn run(args: DevClusterArgs) -> anyhow::Result<()> {
    if !(1..=9).contains(&args.nodes) {
        bail!("--nodes must be between 1 and 9");
    }
    let exe = std::env::current_exe().context("locating the seedlog binary")?;
    let peer_port = |i: u16| args.base_port + 100 + i - 1;
    let voters: Vec<String> = (1..=args.nodes)
        .map(|i| format!("{i}@127.0.0.1:{}", peer_port(i)))
        .collect();
    let voters = voters.join(",");
    let secure = match args.secure {
        true => Some(Secure::prepare(&args.dir)?),
        false => None,
    };
    let mut children: Vec<(u16, Child)> = Vec::new();
    for i in 1..=args.nodes {
        let dir = args.dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = std::fs::File::create(dir.join("seedlog.log")).context("creating a log file")?;
        let mut command = Command::new(&exe);
        stop_with_parent(&mut command);
        command.arg("run");
        if let Some(secure) = &secure {
            secure.broker_args(&mut command, args.base_port + i - 1);
        }
        let child = command
            .args(["--broker-id", &i.to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", args.base_port + i - 1)])
            .args([
                "--admin-listen",
                &format!("127.0.0.1:{}", args.base_port + 300 + i - 1),
            ])
            .args(["--data-dir", &dir.join("data").to_string_lossy()])
            .args(["--controller-quorum-voters", &voters])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting broker {i}"))?;
        children.push((i, child));
    }
    let listeners: Vec<String> = (1..=args.nodes)
        .map(|i| format!("127.0.0.1:{}", args.base_port + i - 1))
        .collect();
    info!(
        bootstrap = %listeners.join(","),
        metrics = %format!("http://127.0.0.1:{}/metrics (one port up per broker)", args.base_port + 300),
        dir = %args.dir.display(),
        "dev cluster running; logs in DIR/node-N/seedlog.log; Ctrl-C stops it"
    );
    let signal = crate::shutdown_signal();
    tokio::pin!(signal);
    if let Some(secure) = &secure {
        let bootstrap = listeners.join(",");
        let admin_ports = args.base_port + 200..args.base_port + 200 + args.nodes;
        let made = secure.finish(&args.dir, &bootstrap, admin_ports);
        tokio::select! {
            _ = &mut signal => return stop(&mut children),
            made = made => made?,
        }
    }
    let mut exited = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for (i, child) in &mut children {
            if let Ok(Some(status)) = child.try_wait() {
                if exited.insert(*i) {
                    warn!(broker = *i, %status, "broker exited; the others keep running");
                }
            }
        }
    }
    stop(&mut children)
}

/// Stops every broker with SIGTERM and waits for each.
fn stop(children: &mut [(u16, Child)]) -> anyhow::Result<()> {
    info!("stopping the dev cluster");
    for (_, child) in children.iter_mut() {
        if let Ok(None) = child.try_wait() {
            // SAFETY: kill(2) on a pid we spawned and have not reaped; no memory is touched.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    for (i, child) in children.iter_mut() {
        let status = child
            .wait()
            .with_context(|| format!("waiting for broker {i}"))?;
        info!(broker = *i, %status, "broker stopped");
    }
    Ok(())
}
