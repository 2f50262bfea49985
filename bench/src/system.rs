//! The machine changes the kernel-swap baselines of `compare` need, and their guaranteed undoing:
//! swap on a zram device or on a file, and memory cgroups with a limit.
//!
//! Every change is written to a state file (`/run/yonder-bench/state.json`) *before* it is made,
//! and undone by [`Machine`]'s `Drop` (swapoff, zram reset or hot-remove, processes left in a
//! cgroup killed and the cgroup removed, the swap file deleted). Ctrl-C and SIGTERM only set a
//! flag ([`interrupted`]) so that the bench unwinds and the guard runs; a second one exits at
//! once. A run that was SIGKILLed leaves its state file behind: the next run undoes what it
//! lists (and anything named `yonder-bench-*`) before it starts.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Prefix of every swap file and cgroup the bench makes.
pub const PREFIX: &str = "yonder-bench-";

/// Where the state of a run's machine changes is kept.
const STATE_DIR: &str = "/run/yonder-bench";

static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Makes SIGINT and SIGTERM set the [`interrupted`] flag instead of ending the process (a second
/// signal ends it with status 1, without cleaning up: the next run cleans up).
pub fn catch_interrupts() -> anyhow::Result<()> {
    // Once per process: a second registration would make the first signal end it.
    if INTERRUPTED.get().is_some() {
        return Ok(());
    }
    let flag = INTERRUPTED.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Order matters: the conditional shutdown sees the flag before this signal sets it.
        signal_hook::flag::register_conditional_shutdown(sig, 1, flag.clone())?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(())
}

/// Whether Ctrl-C or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// Sends `sig` to process `pid`, or to process group `-pid` when negative.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) takes no pointers; callers pass processes (groups) they started or that
    // are in a cgroup they made.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A zram device used as swap.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Zram {
    /// Device number (`/dev/zramN`).
    pub id: u32,
    /// Made by this run through `/sys/class/zram-control/hot_add` (removed again afterwards).
    pub hot_added: bool,
    /// The compression algorithm before this run changed it (set back after the reset).
    #[serde(default)]
    pub algorithm_before: Option<String>,
}

impl Zram {
    fn dev(&self) -> String {
        format!("/dev/zram{}", self.id)
    }

    fn sys(&self, file: &str) -> PathBuf {
        PathBuf::from(format!("/sys/block/zram{}/{file}", self.id))
    }
}

/// The machine changes in force.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// The run that made them.
    pid: u32,
    zram: Vec<Zram>,
    swap_files: Vec<PathBuf>,
    cgroups: Vec<PathBuf>,
}

/// Which memory cgroup hierarchy the machine has.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// cgroup v1 memory controller (`memory.limit_in_bytes`).
    V1,
    /// cgroup v2 with the memory controller (`memory.max`).
    V2,
}

/// The memory cgroup root to make groups under: v2 where its root offers the memory controller,
/// else the v1 memory hierarchy.
pub fn cgroup_root() -> anyhow::Result<(CgroupVersion, PathBuf)> {
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let controllers = fs::read_to_string(format!("{root}/cgroup.controllers"));
        if controllers.is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")) {
            return Ok((CgroupVersion::V2, root.into()));
        }
    }
    let v1 = PathBuf::from("/sys/fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() {
        return Ok((CgroupVersion::V1, v1));
    }
    bail!("no memory cgroup controller (neither cgroup v2 with `memory` nor v1 memory) is mounted")
}

/// A memory cgroup made by the bench.
#[derive(Debug)]
pub struct Memcg {
    /// Its directory.
    pub dir: PathBuf,
    /// Its hierarchy.
    pub version: CgroupVersion,
}

impl Memcg {
    /// `sh` arguments that move the shell into this group and then exec `argv` in it.
    pub fn wrap(&self, argv: &[String]) -> Vec<String> {
        let mut a = vec![
            "-c".to_string(),
            r#"echo $$ > "$0" && exec "$@""#.to_string(),
            self.dir.join("cgroup.procs").display().to_string(),
        ];
        a.extend(argv.iter().cloned());
        a
    }

    /// Peak memory charged to the group, in bytes.
    pub fn peak(&self) -> Option<u64> {
        let file = match self.version {
            CgroupVersion::V1 => "memory.max_usage_in_bytes",
            CgroupVersion::V2 => "memory.peak",
        };
        fs::read_to_string(self.dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Processes the group's OOM killer killed.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        };
        fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A counter of `memory.stat` (e.g. `pgmajfault`).
    pub fn stat(&self, key: &str) -> Option<u64> {
        let s = fs::read_to_string(self.dir.join("memory.stat")).ok()?;
        s.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
    }
}

/// The guard over the machine changes of one run: undoes all of them when dropped.
pub struct Machine {
    state: State,
    path: PathBuf,
    cgroup: (CgroupVersion, PathBuf),
}

impl Machine {
    /// Takes the machine for this run: undoes the leftovers of a run that died, refuses while
    /// another live run holds it.
    pub fn take() -> anyhow::Result<Self> {
        let path = PathBuf::from(STATE_DIR).join("state.json");
        fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        if let Ok(text) = fs::read_to_string(&path) {
            let old: State = serde_json::from_str(&text).unwrap_or_default();
            if old.pid != std::process::id() && is_bench(old.pid) {
                bail!(
                    "another yonder-bench run (pid {}) holds the machine ({}); wait for it or stop it",
                    old.pid,
                    path.display()
                );
            }
            eprintln!(
                "compare: undoing the machine changes of a run that did not finish (pid {})",
                old.pid
            );
            for e in undo(&old) {
                eprintln!("compare: {e}");
            }
        }
        let cgroup = cgroup_root()?;
        for e in undo_named(&cgroup.1) {
            eprintln!("compare: {e}");
        }
        let m = Self {
            state: State {
                pid: std::process::id(),
                ..State::default()
            },
            path,
            cgroup,
        };
        m.save()?;
        Ok(m)
    }

    /// The cgroup hierarchy groups are made in.
    pub fn cgroup_version(&self) -> CgroupVersion {
        self.cgroup.0
    }

    fn save(&self) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string_pretty(&self.state)?.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        Ok(())
    }

    /// Turns on swap on a zram device of `bytes` (uncompressed capacity), compressing with
    /// `algorithm` if given; zram0 when it is free, else a hot-added device.
    pub fn zram_swap_on(&mut self, bytes: u64, algorithm: Option<&str>) -> anyhow::Result<Zram> {
        let zram0 = Zram {
            id: 0,
            hot_added: false,
            algorithm_before: None,
        };
        let mut zram = if zram0.sys("disksize").exists()
            && read_trim(&zram0.sys("disksize")) == "0"
            && !fs::read_to_string("/proc/swaps")
                .unwrap_or_default()
                .contains(&zram0.dev())
        {
            zram0
        } else {
            let control = "/sys/class/zram-control/hot_add";
            let id: u32 = read_trim(Path::new(control)).parse().with_context(|| {
                format!("no free zram device and {control} did not add one (modprobe zram?)")
            })?;
            Zram {
                id,
                hot_added: true,
                algorithm_before: None,
            }
        };
        if algorithm.is_some() && !zram.hot_added {
            let current = read_trim(&zram.sys("comp_algorithm"));
            zram.algorithm_before = current
                .split_whitespace()
                .find(|a| a.starts_with('['))
                .map(|a| a.trim_matches(['[', ']']).to_string());
        }
        self.state.zram.push(zram.clone());
        self.save()?;
        if let Some(alg) = algorithm {
            fs::write(zram.sys("comp_algorithm"), alg)
                .with_context(|| format!("setting zram compression to {alg}"))?;
        }
        fs::write(zram.sys("disksize"), bytes.to_string())
            .with_context(|| format!("setting {} disksize", zram.dev()))?;
        command("mkswap", &[&zram.dev()])?;
        command("swapon", &[&zram.dev()])?;
        Ok(zram)
    }

    /// Turns on swap on a new file of `bytes` in `dir` (a disk, not tmpfs).
    pub fn file_swap_on(&mut self, dir: &Path, bytes: u64) -> anyhow::Result<PathBuf> {
        let fstype = fs_type(dir);
        if matches!(
            fstype.as_deref(),
            Some("tmpfs" | "ramfs" | "overlay" | "zfs")
        ) {
            bail!(
                "{} is on {}: a swap file there is not swap to a disk (use --swap-dir)",
                dir.display(),
                fstype.unwrap_or_default()
            );
        }
        let path = dir.join(format!("{PREFIX}swap-{}", std::process::id()));
        self.state.swap_files.push(path.clone());
        self.save()?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        // Written out, not fallocated: swapon refuses files with holes on some filesystems.
        let chunk = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
        drop(f);
        let p = path.display().to_string();
        command("mkswap", &[&p])?;
        command("swapon", &[&p])?;
        Ok(path)
    }

    /// Turns off every swap this run turned on and undoes its devices and files.
    pub fn swap_off(&mut self) -> anyhow::Result<()> {
        let swaps = State {
            zram: std::mem::take(&mut self.state.zram),
            swap_files: std::mem::take(&mut self.state.swap_files),
            ..State::default()
        };
        let errors = undo(&swaps);
        if !errors.is_empty() {
            // Keep them recorded so that Drop or the next run tries again.
            self.state.zram = swaps.zram;
            self.state.swap_files = swaps.swap_files;
            self.save()?;
            bail!("{}", errors.join("; "));
        }
        self.save()
    }

    /// Makes a memory cgroup `yonder-bench-<pid>-<name>` with a limit of `limit` bytes (swap
    /// unlimited).
    pub fn cgroup(&mut self, name: &str, limit: u64) -> anyhow::Result<Memcg> {
        let (version, root) = self.cgroup.clone();
        let dir = root.join(format!("{PREFIX}{}-{name}", std::process::id()));
        self.state.cgroups.push(dir.clone());
        self.save()?;
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        let file = match version {
            CgroupVersion::V1 => "memory.limit_in_bytes",
            CgroupVersion::V2 => "memory.max",
        };
        fs::write(dir.join(file), limit.to_string())
            .with_context(|| format!("setting {} in {}", file, dir.display()))?;
        Ok(Memcg { dir, version })
    }

    /// Kills what is left in the group and removes it.
    pub fn remove_cgroup(&mut self, memcg: Memcg) -> anyhow::Result<()> {
        remove_cgroup(&memcg.dir)?;
        self.state.cgroups.retain(|d| *d != memcg.dir);
        self.save()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let errors = undo(&self.state);
        for e in &errors {
            eprintln!("compare: restoring the machine: {e}");
        }
        if errors.is_empty() {
            let _ = fs::remove_file(&self.path);
            // Only when empty: nothing else of ours lives there.
            let _ = fs::remove_dir(STATE_DIR);
        } else {
            eprintln!(
                "compare: some changes are still in force (listed in {}); the next run retries",
                self.path.display()
            );
        }
    }
}

/// Undoes the changes `state` lists; returns what failed.
fn undo(state: &State) -> Vec<String> {
    let mut errors = Vec::new();
    for dir in &state.cgroups {
        if let Err(e) = remove_cgroup(dir) {
            errors.push(format!("{e:#}"));
        }
    }
    let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
    let active = |dev: &str| {
        swaps
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().next() == Some(dev))
    };
    for z in &state.zram {
        if active(&z.dev()) {
            if let Err(e) = command("swapoff", &[&z.dev()]) {
                errors.push(format!("{e:#}"));
                continue;
            }
        }
        if z.sys("reset").exists() {
            if let Err(e) = fs::write(z.sys("reset"), "1") {
                errors.push(format!("resetting {}: {e}", z.dev()));
                continue;
            }
        }
        if let Some(alg) = &z.algorithm_before {
            if let Err(e) = fs::write(z.sys("comp_algorithm"), alg) {
                errors.push(format!("setting {} back to {alg}: {e}", z.dev()));
            }
        }
        if z.hot_added && z.sys("reset").exists() {
            if let Err(e) = fs::write("/sys/class/zram-control/hot_remove", z.id.to_string()) {
                errors.push(format!("removing {}: {e}", z.dev()));
            }
        }
    }
    for f in &state.swap_files {
        let p = f.display().to_string();
        if active(&p) {
            if let Err(e) = command("swapoff", &[&p]) {
                errors.push(format!("{e:#}"));
                continue;
            }
        }
        match fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("removing {p}: {e}")),
        }
    }
    errors
}

/// Undoes leftovers found by name: swap files and cgroups called `yonder-bench-*` (zram devices
/// carry no name; only the state file knows them).
fn undo_named(cgroup_root: &Path) -> Vec<String> {
    let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
    let state = State {
        swap_files: swaps
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .filter(|p| p.contains(PREFIX))
            .map(PathBuf::from)
            .collect(),
        cgroups: fs::read_dir(cgroup_root)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default(),
        ..State::default()
    };
    for f in &state.swap_files {
        eprintln!(
            "compare: a swap file of an earlier run is active: {}",
            f.display()
        );
    }
    for c in &state.cgroups {
        eprintln!(
            "compare: a cgroup of an earlier run is left: {}",
            c.display()
        );
    }
    undo(&state)
}

/// SIGKILLs every process in cgroup `dir` until it is empty, then removes it.
fn remove_cgroup(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let procs = dir.join("cgroup.procs");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<i32> = fs::read_to_string(&procs)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("processes {pids:?} in {} did not die", dir.display());
        }
        for pid in pids {
            kill(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // rmdir can fail with EBUSY for a moment after the last process was reaped.
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) if tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("removing cgroup {}", dir.display())),
        }
    }
}

/// Swap areas active now that this bench did not make, as `/proc/swaps` names them.
pub fn foreign_swaps() -> Vec<String> {
    fs::read_to_string("/proc/swaps")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// Whether process `pid` is alive and is a `yonder-bench`.
fn is_bench(pid: u32) -> bool {
    pid != 0
        && fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim().starts_with("yonder-bench"))
}

/// The filesystem type `path` is on, from /proc/self/mounts (longest mount point prefix).
fn fs_type(path: &Path) -> Option<String> {
    let path = fs::canonicalize(path).ok()?;
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(at).then(|| (at.len(), kind.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}

fn read_trim(path: &Path) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A sysctl-like value read from a file, for the report.
pub fn read_setting(path: &str) -> String {
    read_trim(Path::new(path))
}

fn command(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_moves_the_shell_then_execs() {
        let m = Memcg {
            dir: "/sys/fs/cgroup/memory/yonder-bench-1-x".into(),
            version: CgroupVersion::V1,
        };
        let a = m.wrap(&["prog".into(), "arg".into()]);
        assert_eq!(a[2], "/sys/fs/cgroup/memory/yonder-bench-1-x/cgroup.procs");
        assert_eq!(&a[3..], ["prog", "arg"]);
    }

    #[test]
    fn fs_type_of_root_is_known() {
        assert!(fs_type(Path::new("/")).is_some());
    }
}
