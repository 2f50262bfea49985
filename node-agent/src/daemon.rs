//! `yonder-agent daemon`: one agent per node serving many workloads, each with its own budget,
//! under a node-wide limit, over one set of QUIC connections to the memory servers.
//!
//! `yonder-agent run` talks to it over a Unix control socket, one JSON object per line: it
//! registers a workload (name, budget) and gets the path of a socket for that workload's shims,
//! starts the program itself (so that its exit status, signals and stdio stay the caller's) and
//! says which pid it is. When the program ends, `run` asks for the summary, which the daemon sends
//! once every process of the workload is gone and its pages are freed. If `run` dies, the program
//! dies with it (PR_SET_PDEATHSIG) and the daemon frees the workload; if the daemon dies, the shims
//! stop their processes (their memory would be incomplete).

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{info, warn};
use yonder_common::size::ByteSize;

use crate::{
    connect::connect_servers,
    pages::PAGE,
    remote::Servers,
    workload::{Group, MIN_BUDGET},
};

/// Where `run` and `status` look for the daemon when nothing else is said.
pub const DEFAULT_CONFIG: &str = "/etc/yonder/agent.toml";
/// Environment variable naming the daemon's control socket (overrides the configuration file).
pub const SOCKET_ENV: &str = "YONDER_DAEMON";

/// How long a metric may go unchanged before the daemon's metrics endpoint drops it (an ended
/// workload's series; a live one's gauges are set every second).
const METRICS_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The daemon's configuration file (TOML).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Control socket. Default `/run/yonder/agent.sock`; workload sockets go next to it.
    pub socket: PathBuf,
    /// Sum of the budgets of all workloads on this node. Default `1GiB`.
    pub node_memory: ByteSize,
    /// Budget of a workload that asks for none. Default `256MiB`.
    pub default_budget: ByteSize,
    /// Memory servers (`HOST:PORT`); empty for an embedded loopback server (for trying it out).
    pub servers: Vec<String>,
    /// Directory with `ca.pem` and the client certificate. Default `/etc/yonder/tls`.
    pub tls_dir: PathBuf,
    /// File stem of the client certificate. Default `client`.
    pub cert_name: String,
    /// Fixed datagram size towards the servers on a known path.
    pub mtu: Option<u16>,
    /// Which QUIC client talks to the servers: `driven` (default) or `quinn`
    /// (docs/fault-path.md).
    pub transport: crate::remote::Transport,
    /// Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
    /// Copies of each page on distinct servers. Default 2 (capped at the number of servers).
    pub replicas: usize,
    /// Acks needed before a page is dropped locally. Default: all replicas.
    pub write_quorum: Option<usize>,
    /// A server that does not answer a request within this many milliseconds is marked down.
    /// Default 2000.
    pub server_timeout_ms: u64,
    /// Which pages leave first: `s3fifo` (default) or `clock` (docs/eviction.md).
    pub eviction_policy: crate::eviction::Policy,
    /// Spin window of the daemon's thread after a fault or reply, µs; 0 never spins
    /// (docs/fault-path.md).
    pub spin_us: u64,
    /// Share of each workload's budget kept parked in the grace window, percent; 0 saves pages
    /// as soon as they are parked (docs/eviction.md).
    pub parked_share: u32,
}

impl DaemonConfig {
    /// The replication policy this configuration asks for.
    pub fn policy(&self) -> crate::remote::Policy {
        crate::remote::Policy {
            replicas: self.replicas,
            write_quorum: self.write_quorum.unwrap_or(self.replicas),
            timeout: Duration::from_millis(self.server_timeout_ms),
            lost_after: Duration::from_millis(self.server_timeout_ms.saturating_mul(10)),
        }
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/yonder/agent.sock"),
            node_memory: ByteSize(1 << 30),
            default_budget: ByteSize(256 << 20),
            servers: Vec::new(),
            tls_dir: PathBuf::from("/etc/yonder/tls"),
            cert_name: yonder_common::certs::DEFAULT_CLIENT.into(),
            mtu: None,
            transport: crate::remote::Transport::default(),
            metrics: None,
            replicas: 2,
            write_quorum: None,
            server_timeout_ms: 2000,
            eviction_policy: crate::eviction::Policy::default(),
            spin_us: crate::spin::DEFAULT_WINDOW_US,
            parked_share: crate::workload::DEFAULT_PARKED_SHARE,
        }
    }
}

impl DaemonConfig {
    /// Reads a TOML configuration file; missing keys take their defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parses the text of a TOML configuration; missing keys take their defaults.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

/// A request on the control socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// A new workload (first request of `run`); `budget` in bytes, 0 for the default.
    Register {
        /// Name shown in status (the program).
        name: String,
        /// Local-memory budget in bytes.
        budget: u64,
    },
    /// The program of the registered workload was started with this pid.
    Started {
        /// Its pid.
        pid: u32,
    },
    /// The program ended: send the summary once the workload is gone.
    Finish,
    /// The node's workloads.
    Status,
}

/// A reply on the control socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The workload is registered; its shims connect to `shim_socket`.
    Registered {
        /// Workload id.
        id: u64,
        /// Socket for the workload's shims.
        shim_socket: PathBuf,
    },
    /// The workload hit a fatal error and is being stopped.
    Fatal {
        /// What went wrong.
        message: String,
    },
    /// The workload is gone; its summary.
    Summary {
        /// The summary lines.
        text: String,
    },
    /// The node's workloads.
    Status(NodeStatus),
    /// The request was refused.
    Error {
        /// Why.
        message: String,
    },
}

/// What `yonder-agent status` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node-wide limit in bytes.
    pub node_memory: u64,
    /// Sum of the budgets of the workloads.
    pub committed: u64,
    /// Memory servers.
    pub servers: Vec<String>,
    /// Health of each memory server.
    #[serde(default)]
    pub server_health: Vec<crate::remote::ServerHealth>,
    /// Copies of each page.
    #[serde(default)]
    pub replicas: usize,
    /// The workloads.
    pub workloads: Vec<WorkloadStatus>,
}

/// One workload in [`NodeStatus`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadStatus {
    /// Workload id.
    pub id: u64,
    /// Program name.
    pub name: String,
    /// Processes under management.
    pub pids: Vec<u32>,
    /// Budget in bytes.
    pub budget: u64,
    /// Resident managed bytes.
    pub resident: u64,
    /// Peak resident managed bytes.
    pub peak: u64,
    /// Missing faults served (zero-fill and remote).
    pub faults: u64,
    /// Remote faults served.
    pub remote_faults: u64,
    /// Faults per second over the last second.
    pub fault_rate: f64,
    /// Remote faults per second over the last second.
    pub remote_fault_rate: f64,
    /// Pages evicted.
    pub evicted: u64,
    /// Seconds since registration.
    pub uptime: f64,
    /// Pages copied to other servers after server failures.
    #[serde(default)]
    pub repaired: u64,
    /// Pages still short of replicas.
    #[serde(default)]
    pub repair_deficit: u64,
}

struct Entry {
    group: Rc<Group>,
    started: Instant,
    /// (faults, remote faults) at the last sample, and the rates since.
    sample: Cell<((u64, u64), (f64, f64))>,
}

struct Daemon {
    config: DaemonConfig,
    servers: Rc<Servers>,
    server_names: Vec<String>,
    dir: PathBuf,
    workloads: RefCell<BTreeMap<u64, Rc<Entry>>>,
    next_id: Cell<u64>,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn daemon(config: DaemonConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, daemon_async(config))
}

async fn daemon_async(config: DaemonConfig) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics {
        // Metrics carry the workload's id: without a time-out, every workload the node ever ran
        // would stay in the output. The sampler sets live workloads' gauges every second.
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .idle_timeout(
                metrics_util::MetricKindMask::ALL,
                Some(METRICS_IDLE_TIMEOUT),
            )
            .install()
            .with_context(|| format!("metrics endpoint on {addr}"))?;
    }
    let (servers, _embedded) = connect_servers(
        &config.servers,
        &config.tls_dir,
        &config.cert_name,
        config.mtu,
        config.policy(),
        config.transport,
    )
    .await?;
    crate::spin::start(config.spin_us);
    let dir = config
        .socket
        .parent()
        .context("the control socket has no directory")?
        .to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if config.socket.exists() {
        if std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
            bail!("another daemon is listening on {}", config.socket.display());
        }
        std::fs::remove_file(&config.socket)?;
    }
    let listener = UnixListener::bind(&config.socket)
        .with_context(|| format!("binding {}", config.socket.display()))?;
    std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(0o660))?;
    let d = Rc::new(Daemon {
        server_names: if config.servers.is_empty() {
            vec!["embedded".into()]
        } else {
            config.servers.clone()
        },
        config,
        servers: Rc::new(servers),
        dir,
        workloads: RefCell::default(),
        next_id: Cell::new(0),
    });
    println!(
        "yonder-agent daemon listening on {}",
        d.config.socket.display()
    );
    info!(socket = %d.config.socket.display(), node_memory = %d.config.node_memory, "daemon up");
    tokio::task::spawn_local(sampler(d.clone()));
    tokio::task::spawn_local(crate::remote::prober(d.servers.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let d2 = d.clone();
                tokio::task::spawn_local(async move {
                    if let Err(e) = d2.control(stream).await {
                        warn!("control connection: {e:#}");
                    }
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Workloads cannot outlive the daemon that holds their pages: stop them and free their pages.
    let entries: Vec<Rc<Entry>> = d.workloads.borrow().values().cloned().collect();
    for e in entries {
        e.group.kill_all();
        e.group.stop().await;
    }
    d.servers.close().await;
    let _ = std::fs::remove_file(&d.config.socket);
    info!("daemon stopped");
    Ok(())
}

async fn sampler(d: Rc<Daemon>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        d.servers.refresh_metrics();
        let entries: Vec<Rc<Entry>> = d.workloads.borrow().values().cloned().collect();
        for e in entries {
            let st = e.group.stats.borrow();
            st.refresh_gauges(e.group.resident());
            let now = (st.zero_faults + st.remote_faults, st.remote_faults);
            let (last, _) = e.sample.get();
            e.sample.set((
                now,
                (
                    now.0.saturating_sub(last.0) as f64,
                    now.1.saturating_sub(last.1) as f64,
                ),
            ));
        }
    }
}

async fn send(stream: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(reply)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    Ok(())
}

impl Daemon {
    fn status(&self) -> NodeStatus {
        let workloads: Vec<WorkloadStatus> = self
            .workloads
            .borrow()
            .iter()
            .map(|(&id, e)| {
                let g = &e.group;
                let st = g.stats.borrow();
                let (_, (rate, remote_rate)) = e.sample.get();
                WorkloadStatus {
                    id,
                    name: g.name.clone(),
                    pids: g.pids(),
                    budget: g.budget as u64 * PAGE,
                    resident: g.resident() as u64 * PAGE,
                    peak: st.peak_resident as u64 * PAGE,
                    faults: st.zero_faults + st.remote_faults,
                    remote_faults: st.remote_faults,
                    fault_rate: rate,
                    remote_fault_rate: remote_rate,
                    evicted: st.evicted,
                    uptime: e.started.elapsed().as_secs_f64(),
                    repaired: st.repaired,
                    repair_deficit: st.repair_deficit,
                }
            })
            .collect();
        NodeStatus {
            node_memory: self.config.node_memory.bytes(),
            committed: workloads.iter().map(|w| w.budget).sum(),
            servers: self.server_names.clone(),
            server_health: self.servers.health(),
            replicas: self.servers.policy().replicas,
            workloads,
        }
    }

    async fn control(self: &Rc<Self>, stream: UnixStream) -> anyhow::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let Some(first) = lines.next_line().await? else {
            return Ok(());
        };
        let (name, budget) = match serde_json::from_str::<Request>(&first) {
            Ok(Request::Status) => return send(&mut write, &Reply::Status(self.status())).await,
            Ok(Request::Register { name, budget }) => (name, budget),
            Ok(other) => {
                let message = format!("{other:?} before registering a workload");
                return send(&mut write, &Reply::Error { message }).await;
            }
            Err(e) => {
                let message = format!("bad request: {e}");
                return send(&mut write, &Reply::Error { message }).await;
            }
        };
        let budget = if budget == 0 {
            self.config.default_budget.bytes()
        } else {
            budget
        };
        if budget < MIN_BUDGET {
            let message = format!(
                "a budget of {} is too small: at least {} (64 pages)",
                ByteSize(budget),
                ByteSize(MIN_BUDGET)
            );
            return send(&mut write, &Reply::Error { message }).await;
        }
        let committed = self.status().committed;
        let limit = self.config.node_memory.bytes();
        if committed + budget > limit {
            let message = format!(
                "node memory is committed: {} of {} in use by other workloads, {} asked",
                ByteSize(committed),
                ByteSize(limit),
                ByteSize(budget)
            );
            return send(&mut write, &Reply::Error { message }).await;
        }
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        let shim_socket = self.dir.join(format!("workload-{id}.sock"));
        let _ = std::fs::remove_file(&shim_socket);
        let listener = UnixListener::bind(&shim_socket)
            .with_context(|| format!("binding {}", shim_socket.display()))?;
        // The workload runs as whoever started `run`; its processes must reach this socket.
        std::fs::set_permissions(&shim_socket, std::fs::Permissions::from_mode(0o666))?;
        let group = Group::new(name.clone(), self.servers.clone(), (budget / PAGE) as usize);
        group.set_policy(self.config.eviction_policy);
        group.set_parked_share(self.config.parked_share);
        group.stats.borrow_mut().labels = vec![
            metrics::Label::new("workload", id.to_string()),
            metrics::Label::new("name", name.clone()),
        ];
        group.start(listener);
        let entry = Rc::new(Entry {
            group: group.clone(),
            started: Instant::now(),
            sample: Cell::new(((0, 0), (0.0, 0.0))),
        });
        self.workloads.borrow_mut().insert(id, entry);
        info!(id, %name, budget = %ByteSize(budget), "workload registered");
        send(
            &mut write,
            &Reply::Registered {
                id,
                shim_socket: shim_socket.clone(),
            },
        )
        .await?;

        // Until the program ends (Finish) or `run` goes away (EOF).
        let mut finish = false;
        let mut fatal_sent = false;
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(l)) => match serde_json::from_str::<Request>(&l) {
                        Ok(Request::Started { pid }) => group.set_root(pid),
                        Ok(Request::Finish) => { finish = true; break; }
                        _ => warn!(id, "unexpected control line: {l}"),
                    },
                    _ => break,
                },
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    group.reap();
                    group.sample_share();
                    if let Some(message) = group.fatal() {
                        group.kill_all();
                        if !fatal_sent {
                            fatal_sent = true;
                            let _ = send(&mut write, &Reply::Fatal { message }).await;
                        }
                    }
                }
            }
        }
        // Serve what is left of the workload (children that outlive the program) until it ends.
        let mut reap_started = Instant::now();
        while group.reap() > 0 {
            if let Some(message) = group.fatal() {
                group.kill_all();
                if !fatal_sent {
                    fatal_sent = true;
                    let _ = send(&mut write, &Reply::Fatal { message }).await;
                }
            }
            if !finish && reap_started.elapsed() > Duration::from_secs(5) {
                // `run` is gone and so should the program be (it dies with `run`).
                warn!(
                    id,
                    "workload of a vanished `run` still has processes: stopping them"
                );
                group.kill_all();
                reap_started = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let freed = group.stop().await;
        self.workloads.borrow_mut().remove(&id);
        let _ = std::fs::remove_file(&shim_socket);
        info!(id, freed, "workload ended");
        if finish {
            let mut text = group.stats.borrow().summary(group.budget, group.slack);
            text.push_str(&format!("yonder: {freed} remote pages freed\n"));
            send(&mut write, &Reply::Summary { text }).await?;
        }
        Ok(())
    }
}

/// A connection to the daemon's control socket, for `run` and `status`.
pub struct Control {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl Control {
    /// Connects to the daemon at `socket`.
    pub async fn connect(socket: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot reach the Yonder daemon at {}", socket.display()))?;
        let (read, write) = stream.into_split();
        Ok(Self {
            lines: BufReader::new(read).lines(),
            write,
        })
    }

    /// Sends a request.
    pub async fn send(&mut self, req: &Request) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        self.write.write_all(&line).await?;
        Ok(())
    }

    /// The next reply; None when the daemon closed the connection.
    pub async fn recv(&mut self) -> anyhow::Result<Option<Reply>> {
        match self.lines.next_line().await? {
            Some(l) => Ok(Some(
                serde_json::from_str(&l).context("bad reply from the daemon")?,
            )),
            None => Ok(None),
        }
    }
}

/// The daemon's control socket if one is configured: `explicit`, else `$YONDER_DAEMON`, else the
/// `socket` of /etc/yonder/agent.toml if that file exists.
pub fn configured_socket(explicit: Option<PathBuf>) -> anyhow::Result<Option<PathBuf>> {
    if let Some(p) = explicit {
        return Ok(Some(p));
    }
    if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return Ok(Some(PathBuf::from(p)));
    }
    let default = Path::new(DEFAULT_CONFIG);
    if default.exists() {
        return Ok(Some(DaemonConfig::from_file(default)?.socket));
    }
    Ok(None)
}

/// Prints the daemon's status as a table (or JSON).
pub fn print_status(status: &NodeStatus, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(status)?);
        return Ok(());
    }
    println!(
        "node memory {} committed of {}; {} replicas per page",
        ByteSize(status.committed),
        ByteSize(status.node_memory),
        status.replicas
    );
    for h in &status.server_health {
        println!(
            "  server {:<24} {:<5} {}latency {:.0} µs",
            h.name,
            if h.up { "up" } else { "DOWN" },
            if h.full { "FULL " } else { "" },
            h.latency_us
        );
    }
    println!(
        "{:>4}  {:<20} {:<16} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10} {:>8}",
        "ID",
        "NAME",
        "PIDS",
        "BUDGET",
        "RESIDENT",
        "PEAK",
        "FAULTS/s",
        "REMOTE/s",
        "EVICTED",
        "UP(s)"
    );
    for w in &status.workloads {
        let pids: Vec<String> = w.pids.iter().map(|p| p.to_string()).collect();
        let name: String = w
            .name
            .chars()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        println!(
            "{:>4}  {:<20} {:<16} {:>10} {:>10} {:>10} {:>9.0} {:>9.0} {:>10} {:>8.0}",
            w.id,
            name,
            pids.join(","),
            ByteSize(w.budget).to_string(),
            ByteSize(w.resident).to_string(),
            ByteSize(w.peak).to_string(),
            w.fault_rate,
            w.remote_fault_rate,
            w.evicted,
            w.uptime
        );
    }
    for w in status
        .workloads
        .iter()
        .filter(|w| w.repaired + w.repair_deficit > 0)
    {
        println!(
            "  workload {}: {} pages re-replicated, {} still short of copies",
            w.id, w.repaired, w.repair_deficit
        );
    }
    if status.workloads.is_empty() {
        println!("(no workloads)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c: DaemonConfig =
            toml::from_str("node_memory = \"8GiB\"\nservers = [\"10.0.0.1:7070\"]\n").unwrap();
        assert_eq!(c.node_memory, ByteSize(8 << 30));
        assert_eq!(c.socket, DaemonConfig::default().socket);
        assert!(toml::from_str::<DaemonConfig>("node_memroy = \"1GiB\"").is_err());
        assert_eq!(c.transport, crate::remote::Transport::Driven);
        let d: DaemonConfig = toml::from_str("transport = \"quinn\"").unwrap();
        assert_eq!(d.transport, crate::remote::Transport::Quinn);
        assert!(toml::from_str::<DaemonConfig>("transport = \"tcp\"").is_err());
    }

    #[test]
    fn control_messages_round_trip() {
        let r: Request = serde_json::from_str(
            &serde_json::to_string(&Request::Register {
                name: "x".into(),
                budget: 4096,
            })
            .unwrap(),
        )
        .unwrap();
        assert!(matches!(r, Request::Register { budget: 4096, .. }));
    }
}
