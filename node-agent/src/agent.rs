//! `yonder-agent run`: launches a workload with the preload shim and serves its memory (see
//! [`crate::workload`] for how).

use std::{
    ffi::OsString,
    io,
    net::SocketAddr,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::PathBuf,
    process::ExitStatus,
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use tokio::net::UnixListener;

use crate::{
    connect::connect_servers,
    pages::PAGE,
    remote::{Policy, Servers},
    shim_proto as proto,
    workload::Group,
};

pub use crate::workload::MIN_BUDGET;

/// What `yonder-agent run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Local-memory budget in bytes for the workload's managed memory.
    pub local_mem: u64,
    /// Memory servers (`HOST:PORT`); empty for the embedded default.
    pub servers: Vec<String>,
    /// Certificate directory (with `ca.pem` and the client certificate).
    pub tls_dir: PathBuf,
    /// File stem of the client certificate.
    pub cert_name: String,
    /// Fixed datagram size towards the servers.
    pub mtu: Option<u16>,
    /// Which QUIC client talks to the servers.
    pub transport: crate::remote::Transport,
    /// Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
    /// The program and its arguments.
    pub command: Vec<OsString>,
    /// The node daemon's control socket: the daemon serves the workload instead of this process.
    pub daemon: Option<PathBuf>,
    /// Replication and failure detection.
    pub policy: Policy,
    /// Which pages leave first.
    pub eviction: crate::eviction::Policy,
    /// Spin window of the agent's thread after a fault or reply, µs; 0 sleeps between events
    /// (see `spin.rs`).
    pub spin_us: u64,
    /// Share of the budget kept parked in the grace window, percent (docs/eviction.md).
    pub parked_share: u32,
    /// Evict by write protection only, as on a kernel without `UFFDIO_MOVE` (`--evict-by
    /// protect`); false moves pages to the parking area where the kernel can.
    pub protect_only: bool,
    /// Whether the shim intercepts the C library's mmap and brk: `auto`, `always` or `off`
    /// (docs/node-agent.md, "New memory").
    pub intercept: String,
}

impl RunConfig {
    /// Budget in pages.
    pub fn budget_pages(&self) -> usize {
        (self.local_mem / PAGE) as usize
    }

    /// Pages below the budget where evictions start (see [`crate::workload::slack_for`]).
    pub fn slack_pages(&self) -> usize {
        crate::workload::slack_for(self.budget_pages())
    }
}

/// Runs the workload to completion and returns its exit status.
pub fn run(config: RunConfig) -> anyhow::Result<ExitStatus> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run_async(config))
}

async fn run_async(config: RunConfig) -> anyhow::Result<ExitStatus> {
    if let Some(socket) = config.daemon.clone() {
        return run_via_daemon(config, &socket).await;
    }
    if let Some(addr) = config.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("metrics endpoint on {addr}"))?;
    }
    let (servers, _embedded) = connect_servers(
        &config.servers,
        &config.tls_dir,
        &config.cert_name,
        config.mtu,
        config.policy,
        config.transport,
    )
    .await?;
    let servers = Rc::new(servers);
    tokio::task::spawn_local(crate::remote::prober(servers.clone()));
    crate::spin::start(config.spin_us);
    let result = serve(&config, &servers).await;
    // Whatever happened to the program (managed or not), the servers hear that the connections
    // end now rather than at their idle time-out.
    servers.close().await;
    result
}

/// Starts the program and serves its memory until it and every process of its workload ended.
///
/// A SIGTERM to the agent goes on to the program, as it would reach the program without Yonder
/// (a supervisor stops a workload by stopping the process it started); the agent serves the
/// program until it exits, then cleans up as always (before, SIGTERM killed the agent at once:
/// the program died with "lost the node agent" and the socket directory stayed behind).
async fn serve(config: &RunConfig, servers: &Rc<Servers>) -> anyhow::Result<ExitStatus> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let dir = tempfile::Builder::new().prefix("yonder-run-").tempdir()?;
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock)?;
    let mut child = spawn_workload(config, &sock)?;
    let child_pid = child.id().unwrap_or(0);
    let name = config
        .command
        .first()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    let group = Group::new(name, servers.clone(), config.budget_pages());
    group.set_policy(config.eviction);
    group.set_parked_share(config.parked_share);
    if config.protect_only {
        group.forbid_moves();
    }
    group.set_root(child_pid);

    let shim_wait = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(shim_wait);
    let accepted = loop {
        tokio::select! {
            r = listener.accept() => break Some(r?.0),
            status = child.wait() => {
                eprintln!("yonder: the program ended before loading the shim (statically linked, or LD_PRELOAD ignored): it ran unmanaged");
                return Ok(status?);
            }
            () = &mut shim_wait => break None,
            _ = term.recv() => crate::workload::signal(child_pid, libc::SIGTERM),
        }
    };
    let Some(stream) = accepted else {
        eprintln!("yonder: the program did not load the shim within 10 s (statically linked?): it runs unmanaged");
        return Ok(wait_forwarding(&mut child, &mut term).await?);
    };
    let started = Instant::now();
    if let Err(e) = group.hello(stream).await {
        eprintln!(
            "yonder: the program could not be put under management ({e:#}): it runs unmanaged"
        );
        return Ok(wait_forwarding(&mut child, &mut term).await?);
    }
    group.start(listener);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = term.recv() => crate::workload::signal(child_pid, libc::SIGTERM),
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if let Some(msg) = group.fatal() {
                    eprintln!("yonder: {msg}; stopping the workload");
                    let _ = child.start_kill();
                    group.kill_all();
                }
                group.reap();
                group.sample_share();
            }
        }
    };
    // Processes of the workload that outlive the program are served until they end.
    let mut told = false;
    while group.reap() > 0 {
        if !told {
            eprintln!(
                "yonder: the program ended; serving {} more process(es) of the workload until they exit",
                group.process_count()
            );
            told = true;
        }
        if let Some(msg) = group.fatal() {
            eprintln!("yonder: {msg}; stopping the workload");
            group.kill_all();
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            // The program is gone: the processes it left are what a SIGTERM is for now.
            _ = term.recv() => group.signal_all(libc::SIGTERM),
        }
    }
    let freed = group.stop().await;
    eprint!(
        "{}",
        group
            .stats
            .borrow()
            .summary(config.budget_pages(), config.slack_pages())
    );
    eprintln!(
        "yonder: workload {} after {:.1} s; {} remote pages freed",
        describe(status),
        started.elapsed().as_secs_f64(),
        freed
    );
    Ok(status)
}

/// Waits for an unmanaged program, passing a SIGTERM to the agent on to it.
async fn wait_forwarding(
    child: &mut tokio::process::Child,
    term: &mut tokio::signal::unix::Signal,
) -> io::Result<ExitStatus> {
    let pid = child.id().unwrap_or(0);
    loop {
        tokio::select! {
            status = child.wait() => return status,
            _ = term.recv() => crate::workload::signal(pid, libc::SIGTERM),
        }
    }
}

/// Runs the workload with the node daemon serving its memory.
async fn run_via_daemon(config: RunConfig, socket: &std::path::Path) -> anyhow::Result<ExitStatus> {
    use crate::daemon::{Control, Reply, Request};
    let mut control = Control::connect(socket).await?;
    let name = config
        .command
        .first()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    control
        .send(&Request::Register {
            name,
            budget: config.local_mem,
        })
        .await?;
    let shim_socket = match control.recv().await? {
        Some(Reply::Registered { shim_socket, .. }) => shim_socket,
        Some(Reply::Error { message }) => bail!("the daemon refused the workload: {message}"),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    };
    let started = Instant::now();
    // As in `serve`: a SIGTERM to the agent goes on to the program.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut child = spawn_workload(&config, &shim_socket)?;
    let child_pid = child.id().unwrap_or(0);
    control.send(&Request::Started { pid: child_pid }).await?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = term.recv() => crate::workload::signal(child_pid, libc::SIGTERM),
            reply = control.recv() => match reply {
                Ok(Some(Reply::Fatal { message })) => {
                    eprintln!("yonder: {message}; stopping the workload");
                    let _ = child.start_kill();
                }
                Ok(Some(other)) => tracing::debug!("daemon: {other:?}"),
                // The daemon is gone: the shim stops the program (its memory is incomplete).
                Ok(None) | Err(_) => {
                    let status = child.wait().await?;
                    eprintln!("yonder: lost the node daemon");
                    return Ok(status);
                }
            },
        }
    };
    control.send(&Request::Finish).await?;
    loop {
        match control.recv().await? {
            Some(Reply::Summary { text }) => {
                eprint!("{text}");
                break;
            }
            Some(Reply::Fatal { message }) => eprintln!("yonder: {message}"),
            Some(_) => {}
            None => {
                eprintln!("yonder: the daemon ended before sending the summary");
                break;
            }
        }
    }
    eprintln!(
        "yonder: workload {} after {:.1} s",
        describe(status),
        started.elapsed().as_secs_f64()
    );
    Ok(status)
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (_, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".into(),
    }
}

/// glibc's `malloc` pad when it grows its heap, unless the user chose one: 64 MiB (address space;
/// nothing is touched until used).
///
/// glibc grows the heap (and maps arenas) itself, not through the `mmap` the shim catches, so the
/// agent finds that memory at its next scan of the maps (every 10 ms) and a fast writer can fill
/// some of it unregistered, beyond the budget. Growing by 64 MiB at a time leaves the program
/// about one such window per 64 MiB instead of one per 128 KiB: a Python program building a
/// 32 MiB list at an 8 MiB budget peaked at 22.8 MiB without it and 9.0 MiB with it.
pub const MALLOC_TOP_PAD: &str = "67108864";

/// Environment variable telling the shim whether to intercept the C library's mmap and brk.
pub const INTERCEPT_ENV: &str = "YONDER_INTERCEPT";

/// The `MALLOC_TOP_PAD_` to give the workload: none if the user set one, by that variable or by
/// the `glibc.malloc.top_pad` tunable.
fn malloc_top_pad(env_set: bool, tunables: Option<&str>) -> Option<&'static str> {
    let tuned = tunables.is_some_and(|t| t.contains("glibc.malloc.top_pad"));
    (!env_set && !tuned).then_some(MALLOC_TOP_PAD)
}

fn spawn_workload(
    config: &RunConfig,
    sock: &std::path::Path,
) -> anyhow::Result<tokio::process::Child> {
    let shim = shim_path()?;
    let preload = match std::env::var_os("LD_PRELOAD") {
        Some(old) if !old.is_empty() => {
            let mut v = shim.clone().into_os_string();
            v.push(":");
            v.push(old);
            v
        }
        _ => shim.into_os_string(),
    };
    let (program, args) = config.command.split_first().context("no program to run")?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env("LD_PRELOAD", preload)
        .env(proto::SOCKET_ENV, sock)
        .env(INTERCEPT_ENV, &config.intercept);
    if let Some(pad) = malloc_top_pad(
        std::env::var_os("MALLOC_TOP_PAD_").is_some(),
        std::env::var("GLIBC_TUNABLES").ok().as_deref(),
    ) {
        cmd.env("MALLOC_TOP_PAD_", pad);
    }
    // SAFETY: runs between fork and exec: prctl(2) only, async-signal-safe, no allocation.
    unsafe {
        cmd.pre_exec(|| {
            // If the agent dies, the workload dies too rather than wait forever on its faults.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = tokio::process::Command::from(cmd)
        .spawn()
        .with_context(|| format!("cannot run {}", program.to_string_lossy()))?;
    Ok(child)
}

/// The shim library: next to the agent binary.
fn shim_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("agent binary has no directory")?;
    for candidate in [
        dir.join("libyonder_shim.so"),
        dir.join("../lib/yonder/libyonder_shim.so"),
    ] {
        if candidate.exists() {
            return Ok(candidate.canonicalize()?);
        }
    }
    bail!("libyonder_shim.so not found next to {}", exe.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_malloc_pad_is_set_unless_the_user_chose_one() {
        assert_eq!(malloc_top_pad(false, None), Some(MALLOC_TOP_PAD));
        assert_eq!(
            malloc_top_pad(false, Some("glibc.malloc.arena_max=2")),
            Some(MALLOC_TOP_PAD)
        );
        assert_eq!(malloc_top_pad(true, None), None);
        assert_eq!(
            malloc_top_pad(
                false,
                Some("glibc.malloc.top_pad=0:glibc.malloc.arena_max=2")
            ),
            None
        );
    }
}
