//! Harness for end-to-end tests and benchmarks: locate the built binaries, create certificates,
//! start real processes and always stop them (by PID) when a test ends, passes or fails.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use yonder_common::{client, tls};

/// Path of a binary of this workspace, built by `cargo build --workspace`: next to the
/// running executable (a binary such as the bench) or one level up (a test in `deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let dir = exe.parent().expect("executable has a directory");
    let candidates = [Some(dir.join(name)), dir.parent().map(|d| d.join(name))];
    for path in candidates.into_iter().flatten() {
        if path.exists() {
            return path;
        }
    }
    panic!(
        "{name} is missing next to {}: build the binaries first with `cargo build --workspace` (tests/run does)",
        exe.display()
    );
}

/// A temporary certificate directory made by the real `yonder-server certs` command.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    /// Creates a CA, a loopback server certificate and client certificates for `clients`.
    pub fn new(clients: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("yonder-certs-").tempdir()?;
        let mut cmd = Command::new(bin("yonder-server"));
        cmd.arg("certs").arg("--dir").arg(dir.path());
        for c in clients {
            cmd.arg("--client").arg(c);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!(
                "yonder-server certs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A QUIC client configuration for client `name` (path-MTU discovery).
    pub fn client_config(&self, name: &str) -> anyhow::Result<quinn::ClientConfig> {
        Ok(tls::client_config(
            &tls::TlsFiles::in_dir(self.dir(), name),
            None,
        )?)
    }

    /// Connects as client `name` to `addr` and says hello; `mtu` fixes the datagram size.
    pub async fn connect(
        &self,
        name: &str,
        addr: SocketAddr,
        mtu: Option<u16>,
    ) -> anyhow::Result<client::Client> {
        let config = tls::client_config(&tls::TlsFiles::in_dir(self.dir(), name), mtu)?;
        let endpoint = client::endpoint(config, addr.is_ipv6())?;
        Ok(client::Client::connect(&endpoint, addr, "localhost", "yonder-tests").await?)
    }
}

/// A running process that is stopped by PID when dropped.
pub struct Process {
    child: Option<Child>,
    name: String,
    log: PathBuf,
}

impl Process {
    /// Starts `cmd` with stderr going to a log file and waits until a stdout line starts with
    /// `ready_prefix`; returns the process and the rest of that line.
    pub fn start(
        mut cmd: Command,
        name: &str,
        ready_prefix: &str,
        log_dir: &Path,
    ) -> anyhow::Result<(Self, String)> {
        let log = log_dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log)?;
        die_with_parent(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut proc = Self {
            child: Some(child),
            name: name.to_string(),
            log,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(ready_prefix) {
                        return Ok((proc, rest.trim().to_string()));
                    }
                }
                Err(_) => {
                    let log = proc.stop_and_log();
                    bail!("{name} did not become ready; its log:\n{log}");
                }
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a PID of a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's log (its stderr) so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Stops the process (SIGTERM, then SIGKILL after 5 s) and returns its log.
    pub fn stop_and_log(&mut self) -> String {
        if self.child.is_some() {
            self.signal(libc::SIGTERM);
            if self.wait_timeout(Duration::from_secs(5)).is_none() {
                eprintln!("{} ignored SIGTERM; killing it", self.name);
                self.signal(libc::SIGKILL);
                self.wait_timeout(Duration::from_secs(5));
            }
        }
        self.log()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGKILL);
            self.wait_timeout(Duration::from_secs(5));
        }
    }
}

/// Makes the child get SIGKILL when the process that started it dies, so a test or benchmark
/// killed by a signal (where no destructor runs) leaves nothing behind.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A memory server process on loopback with its own certificates.
pub struct Server {
    /// The process.
    pub process: Process,
    /// Address it listens on.
    pub addr: SocketAddr,
    /// Certificates of the cluster it belongs to.
    pub certs: Certs,
    /// Fixed datagram size both ends use, if any.
    pub mtu: Option<u16>,
}

impl Server {
    /// Starts `yonder-server` on an ephemeral loopback port with client certificates `clients`.
    pub fn start(capacity: &str, clients: &[&str], extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_mtu(capacity, clients, extra, None)
    }

    /// Like [`Server::start`], with a fixed datagram size on both ends when `mtu` is given.
    pub fn start_with_mtu(
        capacity: &str,
        clients: &[&str],
        extra: &[&str],
        mtu: Option<u16>,
    ) -> anyhow::Result<Self> {
        let certs = Certs::new(clients)?;
        let mut cmd = Command::new(bin("yonder-server"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--capacity",
            capacity,
            "--tls-dir",
        ])
        .arg(certs.dir())
        .args(extra);
        if let Some(mtu) = mtu {
            cmd.arg("--mtu").arg(mtu.to_string());
        }
        let (process, addr) = Process::start(cmd, "yonder-server", "listening on", certs.dir())?;
        Ok(Self {
            process,
            addr: addr.parse()?,
            certs,
            mtu,
        })
    }

    /// Connects as client `name`.
    pub async fn connect(&self, name: &str) -> anyhow::Result<client::Client> {
        self.certs.connect(name, self.addr, self.mtu).await
    }
}
