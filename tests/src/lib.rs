//! Harness for end-to-end tests and benchmarks: locate the built binaries, create certificates,
//! start real processes and always stop them (by PID) when a test ends, passes or fails.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use yonder_common::{client, tls};

pub mod relay;

pub use relay::{Faults, Relay, RelayStats};

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
        // No host given: `certs` makes the server certificate for loopback.
        Self::with_hosts(&[], clients)
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
    out: Option<PathBuf>,
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
            out: None,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Generous for a debug build on a loaded machine; a process that dies ends it at once.
        let deadline = Instant::now() + Duration::from_secs(60);
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

    /// Starts `cmd` with stdin from /dev/null, stdout to `LOG_DIR/NAME.out` and stderr to
    /// `LOG_DIR/NAME.log` (see [`Process::stdout`] and [`Process::log`]), without waiting.
    pub fn spawn(mut cmd: Command, name: &str, log_dir: &Path) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = log_dir.join(format!("{name}.out"));
        let stderr = std::fs::File::create(&log)?;
        let stdout = std::fs::File::create(&out)?;
        die_with_parent(&mut cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            child: Some(child),
            name: name.to_string(),
            log,
            out: Some(out),
        })
    }

    /// What the process wrote to stdout so far, when it was started with [`Process::spawn`].
    pub fn stdout(&self) -> String {
        self.out
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether the process has been reaped (it exited and its status was collected).
    pub fn exited(&self) -> bool {
        self.child.is_none()
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
        let mut b = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_end(&mut b);
        }
        String::from_utf8_lossy(&b).into_owned()
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

/// Compiles the C workload `tests/workloads/NAME.c` into `out_dir` with `cc -O2 -pthread` and
/// `extra` flags, once per process and flag set; panics with the compiler's output on failure.
pub fn compile_workload(name: &str, out_dir: &Path, extra: &[&str]) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let suffix: String = extra
        .iter()
        .map(|f| {
            f.trim_start_matches('-')
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        })
        .map(|f| format!("-{f}"))
        .collect();
    let out = out_dir.join(format!("{name}{suffix}"));
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if built.contains(&out) {
        return out;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workloads")
        .join(format!("{name}.c"));
    // Compile to a private name and rename, so that another test binary compiling the same
    // workload at the same time never sees a half-written file.
    let tmp = out_dir.join(format!(".{name}{suffix}.{}", std::process::id()));
    let result = Command::new("cc")
        .args(["-O2", "-pthread"])
        .args(extra)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .output()
        .expect("a C compiler (cc) is needed to build the test workloads");
    assert!(
        result.status.success(),
        "compiling {} with {extra:?} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::rename(&tmp, &out).expect("moving the compiled workload into place");
    built.push(out.clone());
    out
}

/// The state letter of process `pid` from /proc/PID/stat (`R`, `S`, `Z`, ...), if it exists.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything; the state follows it.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Whether process `pid` has ended: no longer in /proc, or a zombie waiting to be reaped.
pub fn proc_gone(pid: u32) -> bool {
    matches!(proc_state(pid), None | Some('Z' | 'X'))
}

/// The start time of process `pid` (field 22 of /proc/PID/stat), which tells a process from a
/// later one that reuses its pid.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at field 3 (state); the start time is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// RssAnon of process `pid` in bytes, from /proc/PID/status.
pub fn rss_anon(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The child processes of process `pid` (of its main thread).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A process this test did not spawn itself (a grandchild, say), SIGKILLed by PID when dropped
/// unless it has ended; its start time guards against killing a later process with its pid.
pub struct KillOnDrop {
    pid: u32,
    start_time: Option<u64>,
}

impl KillOnDrop {
    /// Guards process `pid`, which must be running now.
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            start_time: proc_start_time(pid),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.start_time.is_some() && proc_start_time(self.pid) == self.start_time {
            // SAFETY: kill(2) of the process this guard was made for (same pid and start time).
            unsafe {
                libc::kill(self.pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago, never the same twice in one test binary
/// (tests run in parallel threads; the kernel may hand a just-released port out again).
pub fn free_tcp_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding an ephemeral loopback port")
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// The first number after `label` in `text`, e.g. `number_after(summary, "evicted ")`.
pub fn number_after(text: &str, label: &str) -> Option<u64> {
    let at = text.find(label)?;
    text[at + label.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Certs {
    /// Creates a CA, a server certificate for `hosts` (names or IP addresses; none: loopback)
    /// and client certificates for `clients`.
    pub fn with_hosts(hosts: &[&str], clients: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("yonder-certs-").tempdir()?;
        let mut cmd = Command::new(bin("yonder-server"));
        cmd.arg("certs").arg("--dir").arg(dir.path());
        for h in hosts {
            cmd.arg("--host").arg(h);
        }
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
}

/// The value of the unlabelled Prometheus metric `name` served at `127.0.0.1:PORT/metrics`.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Runs `ip ARGS` (iproute2) and fails with its stderr if it fails.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2 is needed for the network-namespace tests)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Output of `ip ARGS` (empty if it fails).
fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Names of the network namespaces (`ip netns list`).
pub fn netns_list() -> Vec<String> {
    ip_output(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Prefix of the namespaces [`Netns`] creates; the pid of the test process follows it.
pub const NETNS_PREFIX: &str = "yonder-test-";

/// An N with 10.N.0.0/16 unused by this machine's addresses and routes and not handed out before.
pub fn free_ten_net() -> anyhow::Result<u8> {
    static TAKEN: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let used = format!(
        "{}\n{}",
        ip_output(&["-4", "-o", "addr", "show"]),
        ip_output(&["-4", "route", "show", "table", "all"])
    );
    let start = std::process::id() as usize * 7;
    for k in 0..190 {
        let n = (60 + (start + k) % 190) as u8;
        let in_use = used
            .split(|c: char| c.is_whitespace() || c == '/')
            .any(|w| w.starts_with(&format!("10.{n}.")));
        if !taken.contains(&n) && !in_use {
            taken.push(n);
            return Ok(n);
        }
    }
    bail!("no free 10.N.0.0/16 network for a test")
}

/// A network namespace joined to the root one by a veth pair, deleted (with the veth) on drop.
pub struct Netns {
    /// Name of the namespace (`NETNS_PREFIX`, the pid of this process, a counter).
    pub name: String,
    /// Host-side veth interface, in the root namespace.
    pub host_if: String,
    /// Address of the host side.
    pub host_addr: std::net::Ipv4Addr,
    /// Address inside the namespace.
    pub addr: std::net::Ipv4Addr,
}

impl Netns {
    /// Creates a namespace on `subnet`.0/24 (host side .1, inside .2, `lo` and the veth up).
    pub fn create(subnet: [u8; 3]) -> anyhow::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("{NETNS_PREFIX}{pid}-{k}");
        // "yt", a pid of at most 7 digits, "-", a small counter: interface names have at most 15.
        let host_if = format!("yt{pid}-{k}");
        if host_if.len() > 15 {
            bail!("interface name {host_if} is too long");
        }
        // A namespace of this name can only be left over from a killed run whose pid this
        // process now has (remove_stale skips live pids): delete it first.
        if netns_list().contains(&name) {
            let _ = ip(&["link", "del", &host_if]);
            let _ = ip(&["netns", "del", &name]);
        }
        ip(&["netns", "add", &name])?;
        // From here on, dropping `ns` deletes what was made.
        let [a, b, c] = subnet;
        let ns = Self {
            name,
            host_if,
            host_addr: std::net::Ipv4Addr::new(a, b, c, 1),
            addr: std::net::Ipv4Addr::new(a, b, c, 2),
        };
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            &ns.name,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_addr),
            "dev",
            &ns.host_if,
        ])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", &ns.name];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["link", "set", "lo", "up"])?;
        inside(&["addr", "add", &format!("{}/24", ns.addr), "dev", "veth0"])?;
        inside(&["link", "set", "veth0", "up"])?;
        Ok(ns)
    }

    /// A command running `program` in the namespace (`ip netns exec` execs: the pid stays).
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Brings the host side of the link down (cut off) or up (restored).
    pub fn set_link(&self, up: bool) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }])
    }

    /// Deletes namespaces and veths left by test processes that died without running destructors.
    pub fn remove_stale() {
        for name in netns_list() {
            let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
                continue;
            };
            let Some((pid, k)) = rest.split_once('-') else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = ip(&["link", "del", &format!("yt{pid}-{k}")]);
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both; the namespace goes once no process
        // is left in it.
        if let Err(e) = ip(&["link", "del", &self.host_if]) {
            eprintln!("{e}");
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("{e}");
        }
    }
}

/// What processes `pids` and their descendants are doing, for a test that found one stuck: each
/// thread's name, state, kernel wait channel and kernel stack, and (where gdb is installed) the
/// user-space stack of every thread of `backtrace_of`.
pub fn hang_report(pids: &[u32], backtrace_of: &[u32]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut todo: Vec<u32> = pids.to_vec();
    let mut seen = BTreeSet::new();
    while let Some(pid) = todo.pop() {
        if !seen.insert(pid) {
            continue;
        }
        todo.extend(children(pid));
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let _ = writeln!(out, "process {pid}:");
        for tid in tasks {
            let read = |f: &str| {
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{f}")).unwrap_or_default()
            };
            let stat = read("stat");
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            let _ = writeln!(
                out,
                "  thread {tid} {} state {} wchan {}",
                read("comm").trim(),
                state.unwrap_or("?"),
                read("wchan").trim()
            );
            for line in read("stack").lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    for &pid in backtrace_of {
        let gdb = Command::new("timeout")
            .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-nx"])
            .args(["-ex", "set pagination off", "-ex", "thread apply all bt"])
            .stdin(Stdio::null())
            .output();
        match gdb {
            Ok(o) => {
                let _ = writeln!(
                    out,
                    "gdb backtraces of {pid}:\n{}",
                    String::from_utf8_lossy(&o.stdout)
                );
            }
            Err(e) => {
                let _ = writeln!(out, "no gdb backtrace of {pid}: {e}");
            }
        }
    }
    out
}
