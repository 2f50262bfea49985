//! Memory servers for a benchmark: started on loopback with one fresh CA (the default), or
//! given by the user (`--servers`), and the `yonder-agent run` arguments that use them.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context;

use yonder_tests::{bin, Certs, Process};

/// Tenant (client certificate) the benchmarks' agents use on embedded servers.
pub const TENANT: &str = "yonder-bench";

/// Datagram size on loopback: one page per packet (see bench/RESULTS.md).
pub const LOOPBACK_MTU: u16 = 4400;

/// Where the agent's memory servers are.
pub struct Cluster {
    addrs: Vec<String>,
    tls_dir: PathBuf,
    cert_name: String,
    mtu: Option<u16>,
    /// Servers this process started (stopped by PID when dropped), with their certificates.
    own: Option<Own>,
}

/// The servers a [`Cluster`] started itself, and what it takes to start one again.
struct Own {
    procs: Vec<Process>,
    /// Starts of each server so far (restarts get a log file of their own).
    starts: Vec<usize>,
    capacity: String,
    extra: Vec<String>,
    certs: Certs,
    logs: tempfile::TempDir,
}

/// Starts one `yonder-server` on `listen` with the cluster's certificates; returns it and the
/// address it listens on.
fn start_server(
    listen: &str,
    capacity: &str,
    extra: &[String],
    tls_dir: &Path,
    name: &str,
    logs: &Path,
) -> anyhow::Result<(Process, String)> {
    let mut cmd = Command::new(bin("yonder-server"));
    cmd.args(["--listen", listen, "--capacity", capacity])
        .args(["--mtu", &LOOPBACK_MTU.to_string(), "--tls-dir"])
        .arg(tls_dir)
        .args(extra);
    Process::start(cmd, name, "listening on", logs)
}

impl Cluster {
    /// Starts `n` release-or-debug `yonder-server`s on loopback ports, each with `capacity`.
    pub fn start(n: usize, capacity: &str) -> anyhow::Result<Self> {
        Self::start_with(n, capacity, &[])
    }

    /// Like [`Cluster::start`], with `extra` flags for every server.
    pub fn start_with(n: usize, capacity: &str, extra: &[String]) -> anyhow::Result<Self> {
        let certs = Certs::new(&[TENANT])?;
        let logs = tempfile::Builder::new().prefix("yonder-bench-").tempdir()?;
        let mut procs = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..n {
            let (p, addr) = start_server(
                "127.0.0.1:0",
                capacity,
                extra,
                certs.dir(),
                &format!("server{i}"),
                logs.path(),
            )?;
            procs.push(p);
            addrs.push(addr);
        }
        Ok(Self {
            addrs,
            tls_dir: certs.dir().to_path_buf(),
            cert_name: TENANT.into(),
            mtu: Some(LOOPBACK_MTU),
            own: Some(Own {
                starts: vec![1; procs.len()],
                procs,
                capacity: capacity.to_string(),
                extra: extra.to_vec(),
                certs,
                logs,
            }),
        })
    }

    /// Servers the user runs: `addrs` with the client certificate `cert_name` in `tls_dir`.
    pub fn external(addrs: Vec<String>, tls_dir: &Path, cert_name: &str, mtu: Option<u16>) -> Self {
        Self {
            addrs,
            tls_dir: tls_dir.to_path_buf(),
            cert_name: cert_name.into(),
            mtu,
            own: None,
        }
    }

    /// SIGKILLs server `i` of the servers this cluster started, and reaps it.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let own = self
            .own
            .as_mut()
            .context("not a cluster this process started")?;
        let p = own.procs.get_mut(i).context("no such server")?;
        p.signal(libc::SIGKILL);
        p.wait_timeout(Duration::from_secs(10))
            .with_context(|| format!("server {i} (pid {}) outlived SIGKILL", p.pid()))?;
        Ok(())
    }

    /// Starts server `i` again on the address it had (an empty store, as after a crash); retries
    /// for a few seconds if the port is not free yet.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let own = self
            .own
            .as_mut()
            .context("not a cluster this process started")?;
        let addr = self.addrs.get(i).context("no such server")?;
        own.starts[i] += 1;
        let name = format!("server{i}-start{}", own.starts[i]);
        let mut tries = 0;
        let (p, at) = loop {
            match start_server(
                addr,
                &own.capacity,
                &own.extra,
                own.certs.dir(),
                &name,
                own.logs.path(),
            ) {
                Ok(started) => break started,
                Err(e) if tries < 10 => {
                    tracing::warn!("restarting server {i} on {addr}: {e:#}; retrying");
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e.context(format!("restarting server {i} on {addr}"))),
            }
        };
        anyhow::ensure!(&at == addr, "server {i} came back on {at}, not {addr}");
        own.procs[i] = p;
        Ok(())
    }

    /// Directory of the log files (stderr) of the servers this cluster started, one per start:
    /// `serverI.log`, then `serverI-startK.log`.
    pub fn log_dir(&self) -> Option<&Path> {
        self.own.as_ref().map(|o| o.logs.path())
    }

    /// Process ids of the servers this cluster started (none for servers the user runs).
    pub fn pids(&self) -> Vec<u32> {
        self.own
            .as_ref()
            .map_or_else(Vec::new, |o| o.procs.iter().map(Process::pid).collect())
    }

    /// The servers' addresses.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// `yonder-agent` arguments up to and including `--` that run a program standalone with
    /// `local_mem` of local memory and `replicas` copies of each evicted page on these servers.
    pub fn agent_args(&self, local_mem: &str, replicas: usize) -> Vec<String> {
        let mut a: Vec<String> = ["run", "--standalone", "--local-mem", local_mem, "--servers"]
            .map(String::from)
            .into();
        a.push(self.addrs.join(","));
        a.push("--tls-dir".into());
        a.push(self.tls_dir.display().to_string());
        a.extend(["--cert-name".into(), self.cert_name.clone()]);
        a.extend([
            "--replicas".into(),
            replicas.min(self.addrs.len()).to_string(),
        ]);
        if let Some(mtu) = self.mtu {
            a.extend(["--mtu".into(), mtu.to_string()]);
        }
        a.push("--".into());
        a
    }
}
