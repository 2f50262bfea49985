//! Memory servers for a benchmark: started on loopback with one fresh CA (the default), or
//! given by the user (`--servers`), and the `yonder-agent run` arguments that use them.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

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
    _own: Option<(Vec<Process>, Certs, tempfile::TempDir)>,
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
            let mut cmd = Command::new(bin("yonder-server"));
            cmd.args(["--listen", "127.0.0.1:0", "--capacity", capacity])
                .args(["--mtu", &LOOPBACK_MTU.to_string(), "--tls-dir"])
                .arg(certs.dir())
                .args(extra);
            let (p, addr) =
                Process::start(cmd, &format!("server{i}"), "listening on", logs.path())?;
            procs.push(p);
            addrs.push(addr);
        }
        Ok(Self {
            addrs,
            tls_dir: certs.dir().to_path_buf(),
            cert_name: TENANT.into(),
            mtu: Some(LOOPBACK_MTU),
            _own: Some((procs, certs, logs)),
        })
    }

    /// Servers the user runs: `addrs` with the client certificate `cert_name` in `tls_dir`.
    pub fn external(addrs: Vec<String>, tls_dir: &Path, cert_name: &str, mtu: Option<u16>) -> Self {
        Self {
            addrs,
            tls_dir: tls_dir.to_path_buf(),
            cert_name: cert_name.into(),
            mtu,
            _own: None,
        }
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
