//! `yonder-bench soak`: a long run under failures. Three memory servers on loopback, the soak
//! workload (`soak_workload.rs`) under the real `yonder-agent` with R = 2 at 25 % local memory,
//! verifying every page it reads; every 30–120 s (`--kill-every`) one server, chosen at random,
//! is SIGKILLed and, after 1–5 s (`--down-for`), started again on the same address with an empty
//! store. At the end: bytes lost (must be 0), kills, pages verified, pages re-replicated by the
//! agent, and the pauses the workload saw. docs/soak.md explains the definitions.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use yonder_common::size::ByteSize;
use yonder_tests::{bin, children, free_tcp_port, KillOnDrop, Process};

use crate::{
    cluster::Cluster,
    latency::AgentSummary,
    run_info, scrape,
    soak_workload::{Mismatch, SoakResult},
    stats::human_ns,
};

/// A range of seconds, `MIN-MAX` (or one figure).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Span {
    /// Shortest, seconds.
    pub min: f64,
    /// Longest, seconds.
    pub max: f64,
}

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let num = |v: &str| {
            v.trim()
                .parse::<f64>()
                .map_err(|_| format!("{s:?}: expected seconds as MIN-MAX, e.g. 30-120"))
        };
        let (min, max) = (num(a)?, num(b)?);
        if !(min.is_finite() && max.is_finite() && 0.0 <= min && min <= max) {
            return Err(format!("{s:?}: expected 0 <= MIN <= MAX"));
        }
        Ok(Self { min, max })
    }
}

impl Span {
    fn draw(&self, rng: &mut impl Rng) -> Duration {
        let s = if self.max > self.min {
            rng.random_range(self.min..=self.max)
        } else {
            self.min
        };
        Duration::from_secs_f64(s)
    }

    fn text(&self) -> String {
        if self.min == self.max {
            format!("{} s", self.min)
        } else {
            format!("{}–{} s", self.min, self.max)
        }
    }
}

/// Arguments of `yonder-bench soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// How long the workload visits random pages, in minutes (fractions allowed).
    #[arg(long)]
    pub minutes: f64,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON object to this file (e.g. bench/results/soak.json, which
    /// `yonder-bench report` renders).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seconds between server kills, drawn uniformly from MIN-MAX.
    #[arg(long, default_value = "30-120")]
    pub kill_every: Span,
    /// Seconds a killed server stays down before it is started again, MIN-MAX.
    #[arg(long, default_value = "1-5")]
    pub down_for: Span,
    /// Longest wait, in seconds, for every server to be up and every page to have its replicas
    /// before a due kill; after it the kill happens anyway (and is counted as forced).
    #[arg(long, default_value_t = 120)]
    pub repair_wait: u64,
    /// Memory the workload maps and writes.
    #[arg(long, default_value = "64MiB")]
    pub size: ByteSize,
    /// Local memory as a percentage of `--size`.
    #[arg(long, default_value_t = 25)]
    pub local_pct: u32,
    /// Memory servers started on loopback.
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// Copies of each evicted page.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Percentage of page visits that rewrite the page.
    #[arg(long, default_value_t = 50)]
    pub write_pct: u8,
    /// Seed of the kill schedule and of the workload (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// `--server-timeout-ms` for the agent (default: the agent's own, 2000).
    #[arg(long)]
    pub server_timeout_ms: Option<u64>,
    /// Directory for the logs of the agent, the workload and the servers (default: a new
    /// directory under the temporary directory, kept).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
}

/// One server kill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Kill {
    /// Seconds since the workload's random visits began.
    pub at_s: f64,
    /// Index of the server (0-based).
    pub server: usize,
    /// Seconds it stayed down (killed → started again and listening).
    pub down_s: f64,
    /// Seconds the kill waited, once due, for a cluster with every server up and no page short of
    /// copies.
    pub waited_s: f64,
    /// Whether it happened without that (after `--repair-wait`).
    pub forced: bool,
}

/// What `yonder-bench soak` measured: the JSON object it prints and writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SoakReport {
    /// The exact command.
    pub command: String,
    /// When it started (UTC).
    pub date: String,
    /// The commit it was built from (`git rev-parse --short HEAD` in the working directory,
    /// `-dirty` when there were uncommitted changes).
    pub commit: String,
    /// The machine's kernel and CPU count.
    pub machine: String,
    /// Minutes of random visits asked for.
    pub minutes: f64,
    /// What the workload does.
    pub workload: String,
    /// Memory the workload maps, bytes.
    pub size: u64,
    /// Local memory of the workload, bytes.
    pub local_mem: u64,
    /// Copies of each evicted page.
    pub replicas: usize,
    /// Memory servers.
    pub servers: usize,
    /// Seconds between kills (range).
    pub kill_every_s: Span,
    /// Seconds a killed server stays down (range).
    pub down_for_s: Span,
    /// The agent's request deadline, if not its default.
    pub server_timeout_ms: Option<u64>,
    /// Seed of the kill schedule and of the workload.
    pub seed: u64,
    /// Whether the run passed: nothing lost, the workload finished and exited 0.
    pub ok: bool,
    /// Why it did not pass (empty when it did).
    pub failure: String,
    /// Bytes read back different from what was written, plus 4096 per page the agent could not
    /// read back from any server (it then stops the workload). Must be 0.
    pub bytes_lost: u64,
    /// Servers SIGKILLed.
    pub server_kills: u64,
    /// Kills made before the cluster was whole again (after waiting `--repair-wait`).
    pub forced_kills: u64,
    /// Pages the workload read and checked word by word.
    pub pages_verified: u64,
    /// Pages the agent re-replicated after servers went down or came back empty.
    pub repairs: u64,
    /// Pages still short of copies when the agent ended.
    pub repair_deficit_at_end: u64,
    /// 99th percentile of the workload's page visits (every visit, hits included), ms.
    pub pause_p99_ms: f64,
    /// Longest page visit, ms.
    pub pause_max_ms: f64,
    /// Median page visit, ms.
    pub pause_p50_ms: f64,
    /// 99.9th percentile of page visits, ms.
    pub pause_p999_ms: f64,
    /// Page visits.
    pub touches: u64,
    /// Page visits of a page that was not resident (remote faults).
    pub remote_touches: u64,
    /// Page visits that rewrote the page.
    pub rewrites: u64,
    /// Page visits of 100 ms or more.
    pub touches_over_100ms: u64,
    /// Page visits of 1 s or more.
    pub touches_over_1s: u64,
    /// Words read back wrong.
    pub bad_words: u64,
    /// Pages the agent declared lost (every copy gone).
    pub pages_lost: u64,
    /// The first wrong pages the workload found.
    pub mismatches: Vec<Mismatch>,
    /// "memory server ... is down" lines of the agent.
    pub agent_saw_down: u64,
    /// "memory server ... is back" lines of the agent.
    pub agent_saw_back: u64,
    /// The agent's fatal lines ("... stopping the workload"), if any.
    pub agent_fatal: Vec<String>,
    /// Whether the workload finished its run and its final pass over every page.
    pub workload_finished: bool,
    /// How `yonder-agent run` (and so the workload) ended.
    pub workload_status: String,
    /// Every kill.
    pub kills: Vec<Kill>,
    /// Seconds the whole soak took.
    pub elapsed_s: f64,
    /// Where the logs are.
    pub log_dir: String,
}

/// Runs `yonder-bench soak`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let report = soak(&args, &mut |s| eprintln!("soak: {s}"))?;
    run_info::emit(&report, args.json, args.out.as_deref(), text)?;
    if !report.ok {
        bail!(
            "soak failed: {} (logs in {})",
            report.failure,
            report.log_dir
        );
    }
    Ok(())
}

/// The agent's view of the servers, from its Prometheus endpoint.
#[derive(Debug, Default, Clone, PartialEq)]
struct AgentMetrics {
    /// `yonder_agent_server_up` of each server.
    up: Vec<f64>,
    /// `yonder_agent_replication_deficit_pages`.
    deficit: Option<f64>,
    /// `yonder_agent_repaired_pages_total`.
    repaired: Option<f64>,
}

impl AgentMetrics {
    fn parse(body: &str) -> Self {
        let mut m = Self::default();
        for (name, v) in scrape::samples(body) {
            match name {
                "yonder_agent_server_up" => m.up.push(v),
                "yonder_agent_replication_deficit_pages" => m.deficit = Some(v),
                "yonder_agent_repaired_pages_total" => m.repaired = Some(v),
                _ => {}
            }
        }
        m
    }

    fn scrape(port: u16) -> Option<Self> {
        scrape::get(port).map(|body| Self::parse(&body))
    }

    /// No server down and no page short of copies. A gauge the agent never set counts as fine:
    /// `yonder-agent run` sets a server's gauge when it goes down or comes back, and the deficit
    /// at the first repair pass.
    fn whole(&self) -> bool {
        self.up.iter().all(|u| *u == 1.0) && self.deficit.unwrap_or(0.0) == 0.0
    }
}

/// Whether the agent's log shows every kill of every server noticed and the server back: for
/// each address, at least as many "is down" lines as kills, and its last line "is back".
fn agent_saw_every_comeback(log: &str, addrs: &[String], kills: &[Kill]) -> bool {
    addrs.iter().enumerate().all(|(i, addr)| {
        let down = format!("memory server {addr} is down");
        let back = format!("memory server {addr} is back");
        let mut downs = 0;
        let mut last_back = true;
        for l in log.lines() {
            if l.contains(&down) {
                downs += 1;
                last_back = false;
            } else if l.ends_with(&back) {
                last_back = true;
            }
        }
        let killed = kills.iter().filter(|k| k.server == i).count();
        downs >= killed && last_back
    })
}

/// Waits for a whole cluster before a kill: every kill so far noticed by the agent and the
/// server back in its eyes, no page short of copies, and the repair counter unchanged for two
/// seconds (a repair pass starts within 200 ms of a change and raises the deficit at once).
struct Health {
    stable_since: Option<(Instant, Option<f64>)>,
}

impl Health {
    fn whole(&mut self, m: Option<AgentMetrics>, comebacks_seen: bool) -> bool {
        let Some(m) = m.filter(|m| comebacks_seen && m.whole()) else {
            self.stable_since = None;
            return false;
        };
        match self.stable_since {
            Some((since, repaired)) if repaired == m.repaired => {
                since.elapsed() >= Duration::from_secs(2)
            }
            _ => {
                self.stable_since = Some((Instant::now(), m.repaired));
                false
            }
        }
    }
}

/// The last `KIND {json}` line of the workload's output.
fn last_line(out: &str, kind: &str) -> Option<SoakResult> {
    out.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.strip_prefix(kind)?.strip_prefix(' ')?).ok())
}

/// Distinct slots the agent declared lost ("every copy of slot S (version V) is lost").
fn lost_slots(log: &str) -> u64 {
    let mut slots: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" is lost"))
        .filter_map(|l| {
            l.split("every copy of slot ")
                .nth(1)?
                .split_whitespace()
                .next()
        })
        .collect();
    slots.sort_unstable();
    slots.dedup();
    slots.len() as u64
}

fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "did not end (stopped by the soak)".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (_, Some(sig)) => format!("killed by signal {sig}"),
            _ => "ended".into(),
        },
    }
}

/// Runs the soak as `args` says; `log` gets a line per event.
pub fn soak(args: &Args, log: &mut dyn FnMut(String)) -> anyhow::Result<SoakReport> {
    anyhow::ensure!(
        args.minutes > 0.0 && args.minutes.is_finite(),
        "--minutes must be > 0"
    );
    anyhow::ensure!(
        (1..=100).contains(&args.local_pct),
        "--local-pct must be 1..=100"
    );
    anyhow::ensure!(
        args.servers >= 2 && (1..=args.servers).contains(&args.replicas),
        "--servers must be at least 2 and --replicas 1..=--servers"
    );
    let command = run_info::command();
    let date = run_info::utc_date();
    // Read now: the binary is built from what is checked out when it starts.
    let commit = run_info::git_commit();
    let started = Instant::now();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let log_dir = match &args.log_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "yonder-soak-{}-{}",
            seed % 1_000_000,
            std::process::id()
        )),
    };
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let local_mem = args.size.0 * u64::from(args.local_pct) / 100 / 4096 * 4096;
    let run_for = Duration::from_secs_f64(args.minutes * 60.0);

    let mut cluster = Cluster::start(args.servers, "1GiB")?;
    log(format!(
        "{} memory servers on {}; logs in {}",
        args.servers,
        cluster.addrs().join(", "),
        log_dir.display()
    ));
    let port = free_tcp_port();
    let mut agent_args = cluster.agent_args(&format!("{}KiB", local_mem / 1024), args.replicas);
    let at = agent_args.len() - 1; // before the `--`
    let mut extra = vec!["--metrics".to_string(), format!("127.0.0.1:{port}")];
    if let Some(t) = args.server_timeout_ms {
        extra.extend(["--server-timeout-ms".into(), t.to_string()]);
    }
    agent_args.splice(at..at, extra);
    let mut cmd = Command::new(bin("yonder-agent"));
    cmd.args(&agent_args)
        .arg(std::env::current_exe()?)
        .arg("soak-workload")
        .args(["--size", &format!("{}KiB", args.size.0 / 1024)])
        .args(["--seconds", &run_for.as_secs_f64().to_string()])
        .args(["--write-pct", &args.write_pct.to_string()])
        .args(["--seed", &seed.to_string()]);
    // agent.out: the workload's stdout; agent.log: the agent's stderr (and the workload's).
    let mut agent = Process::spawn(cmd, "agent", &log_dir)?;

    let mut status = None;
    let filled = Instant::now();
    while !agent.stdout().contains("filled\n") {
        if let Some(s) = agent.wait_timeout(Duration::from_millis(100)) {
            status = Some(s);
            break;
        }
        if filled.elapsed() > Duration::from_secs(600) {
            bail!(
                "the workload did not fill its memory within 600 s; agent log:\n{}",
                agent.log()
            );
        }
    }
    // The workload is the agent's child; it dies with the agent, and by this guard.
    let _workload: Vec<KillOnDrop> = children(agent.pid())
        .into_iter()
        .map(KillOnDrop::new)
        .collect();
    let workload_pid = children(agent.pid()).first().copied();
    let visits_began = Instant::now();
    if status.is_none() {
        log(format!(
            "workload filled {} in {:.1} s; visiting random pages for {:.1} min",
            ByteSize(args.size.0),
            filled.elapsed().as_secs_f64(),
            args.minutes
        ));
    }

    let mut kills: Vec<Kill> = Vec::new();
    let mut health = Health { stable_since: None };
    let mut next_kill = visits_began + args.kill_every.draw(&mut rng);
    let mut last_repaired = 0.0_f64;
    let mut last_status_log = Instant::now();
    // The final pass over every page, and a slow agent, get this much on top.
    let give_up = visits_began + run_for + Duration::from_secs(600);
    let mut stopped_by_soak = false;
    'run: while status.is_none() {
        if let Some(s) = agent.wait_timeout(Duration::from_millis(250)) {
            status = Some(s);
            break;
        }
        let now = Instant::now();
        if now > give_up {
            log("the workload overran its time by 600 s: stopping it".into());
            if let Some(pid) = workload_pid {
                // SIGTERM makes the workload print its result and exit.
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            status = agent.wait_timeout(Duration::from_secs(60));
            stopped_by_soak = true;
            break;
        }
        if now.duration_since(last_status_log) >= Duration::from_secs(60) {
            last_status_log = now;
            if let Some(p) = last_line(&agent.stdout(), "progress") {
                log(format!(
                    "{:.1} min: {} pages verified, {} bad words, {} kills, longest visit {}",
                    p.seconds / 60.0,
                    p.pages_verified,
                    p.bad_words,
                    kills.len(),
                    human_ns(p.touch.max_ns as f64)
                ));
            }
        }
        // No kill that would leave a server down at the end.
        if now < next_kill
            || now + Duration::from_secs_f64(args.down_for.max + 5.0) > visits_began + run_for
        {
            continue;
        }
        let m = AgentMetrics::scrape(port);
        if let Some(r) = m.as_ref().and_then(|m| m.repaired) {
            last_repaired = r;
        }
        let waited = now.duration_since(next_kill);
        let forced = waited >= Duration::from_secs(args.repair_wait);
        let seen = agent_saw_every_comeback(&agent.log(), cluster.addrs(), &kills);
        if !health.whole(m, seen) && !forced {
            continue;
        }
        let victim = rng.random_range(0..args.servers);
        let at_s = visits_began.elapsed().as_secs_f64();
        cluster.kill(victim)?;
        let killed = Instant::now();
        log(format!(
            "{at_s:.1} s: SIGKILLed server {victim} ({}){}",
            cluster.addrs()[victim],
            if forced {
                format!(
                    " without a whole cluster after waiting {} s",
                    args.repair_wait
                )
            } else {
                String::new()
            }
        ));
        let back_at = killed + args.down_for.draw(&mut rng);
        while Instant::now() < back_at {
            let left = back_at.saturating_duration_since(Instant::now());
            if let Some(s) = agent.wait_timeout(left.min(Duration::from_millis(250))) {
                status = Some(s);
                kills.push(Kill {
                    at_s,
                    server: victim,
                    down_s: killed.elapsed().as_secs_f64(),
                    waited_s: waited.as_secs_f64(),
                    forced,
                });
                break 'run;
            }
        }
        cluster.restart(victim)?;
        let down_s = killed.elapsed().as_secs_f64();
        log(format!(
            "{:.1} s: server {victim} is listening again after {down_s:.1} s",
            visits_began.elapsed().as_secs_f64()
        ));
        kills.push(Kill {
            at_s,
            server: victim,
            down_s,
            waited_s: waited.as_secs_f64(),
            forced,
        });
        health.stable_since = None;
        next_kill = Instant::now() + args.kill_every.draw(&mut rng);
    }
    if status.is_none() {
        // The soak is ending early (the workload did not end): the guards stop everything.
        agent.signal(libc::SIGKILL);
        status = agent.wait_timeout(Duration::from_secs(10));
    }

    // Keep the servers' logs with the agent's.
    if let Some(dir) = cluster.log_dir() {
        for e in std::fs::read_dir(dir)?.flatten() {
            let _ = std::fs::copy(e.path(), log_dir.join(e.file_name()));
        }
    }
    let out = agent.stdout();
    let err = agent.log();
    let result = last_line(&out, "result");
    let finished = result.as_ref().is_some_and(|r| r.finished);
    let w = result
        .or_else(|| last_line(&out, "progress"))
        .unwrap_or_default();
    let summary = AgentSummary::parse(&err);
    let pages_lost = lost_slots(&err);
    let bytes_lost = w.bad_bytes + pages_lost * 4096;
    let success = status.is_some_and(|s| s.success());
    let mut failure = Vec::new();
    if bytes_lost > 0 {
        failure.push(format!(
            "{bytes_lost} bytes lost ({} wrong words, {pages_lost} pages lost)",
            w.bad_words
        ));
    }
    if !success {
        failure.push(format!("the workload {}", describe(status)));
    }
    if !finished {
        failure.push(if stopped_by_soak {
            "the workload overran its time and was stopped".into()
        } else {
            "the workload did not finish its final pass".to_string()
        });
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    let report = SoakReport {
        command,
        date,
        commit,
        machine: run_info::machine(),
        minutes: args.minutes,
        workload: format!(
            "yonder-bench soak-workload: {} mapped, random page visits (each reads and checks all \
             512 words of the page, {} % also rewrite it with its next generation), one thread, \
             then one pass checking every page",
            ByteSize(args.size.0),
            args.write_pct.min(100)
        ),
        size: args.size.0,
        local_mem,
        replicas: args.replicas,
        servers: args.servers,
        kill_every_s: args.kill_every,
        down_for_s: args.down_for,
        server_timeout_ms: args.server_timeout_ms,
        seed,
        ok: failure.is_empty(),
        failure: failure.join("; "),
        bytes_lost,
        server_kills: kills.len() as u64,
        forced_kills: kills.iter().filter(|k| k.forced).count() as u64,
        pages_verified: w.pages_verified,
        repairs: summary.repaired.max(last_repaired as u64),
        repair_deficit_at_end: summary.repair_deficit,
        pause_p99_ms: ms(w.touch.p99_ns),
        pause_max_ms: ms(w.touch.max_ns),
        pause_p50_ms: ms(w.touch.p50_ns),
        pause_p999_ms: ms(w.touch.p999_ns),
        touches: w.touches,
        remote_touches: w.remote_touches,
        rewrites: w.rewrites,
        touches_over_100ms: w.touches_over_100ms,
        touches_over_1s: w.touches_over_1s,
        bad_words: w.bad_words,
        pages_lost,
        mismatches: w.mismatches,
        agent_saw_down: err.lines().filter(|l| l.contains(" is down (")).count() as u64,
        agent_saw_back: err.lines().filter(|l| l.ends_with(" is back")).count() as u64,
        agent_fatal: err
            .lines()
            .filter(|l| l.contains("stopping the workload"))
            .take(10)
            .map(str::to_string)
            .collect(),
        workload_finished: finished,
        workload_status: describe(status),
        kills,
        elapsed_s: started.elapsed().as_secs_f64(),
        log_dir: log_dir.display().to_string(),
    };
    Ok(report)
}

/// The human summary.
pub fn text(r: &SoakReport) -> String {
    let ms = |v: f64| human_ns(v * 1e6);
    let mut s = format!(
        "Soak: {:.1} min of random page visits over {} at {} local ({} %), {} memory servers on \
         loopback, R = {}; a server SIGKILLed every {} and started again after {}\n",
        r.minutes,
        ByteSize(r.size),
        ByteSize(r.local_mem),
        r.local_mem * 100 / r.size.max(1),
        r.servers,
        r.replicas,
        r.kill_every_s.text(),
        r.down_for_s.text(),
    );
    s += &format!(
        "  result:          {}\n",
        if r.ok {
            "PASSED".to_string()
        } else {
            format!("FAILED: {}", r.failure)
        }
    );
    s += &format!(
        "  bytes lost:      {} ({} wrong words, {} pages the agent could not read back)\n",
        r.bytes_lost, r.bad_words, r.pages_lost
    );
    s += &format!(
        "  server kills:    {} ({} before the cluster was whole again); the agent saw {} downs, {} comebacks\n",
        r.server_kills, r.forced_kills, r.agent_saw_down, r.agent_saw_back
    );
    s += &format!(
        "  pages verified:  {} ({} visits, {} remote faults, {} rewrites)\n",
        r.pages_verified, r.touches, r.remote_touches, r.rewrites
    );
    s += &format!(
        "  repairs:         {} pages re-replicated ({} still short of copies at the end)\n",
        r.repairs, r.repair_deficit_at_end
    );
    s += &format!(
        "  pauses (page visits as the workload saw them): p50 {}, p99 {}, p99.9 {}, max {}; {} of 100 ms or more, {} of 1 s or more\n",
        ms(r.pause_p50_ms),
        ms(r.pause_p99_ms),
        ms(r.pause_p999_ms),
        ms(r.pause_max_ms),
        r.touches_over_100ms,
        r.touches_over_1s
    );
    for f in &r.agent_fatal {
        s += &format!("  agent: {f}\n");
    }
    for m in &r.mismatches {
        s += &format!(
            "  wrong page {} at {:.1} s: wanted generation {}, found page {} generation {} ({} words differ)\n",
            m.page, m.at_s, m.want_generation, m.found_page, m.found_generation, m.words
        );
    }
    s += &format!(
        "  workload {}; {:.0} s in all; seed {}; logs in {}\n",
        r.workload_status, r.elapsed_s, r.seed, r.log_dir
    );
    s
}

/// The "## Soak" section of bench/RESULTS.md, from the JSON a soak wrote to `path`.
pub fn markdown(path: &Path) -> String {
    let mut s = String::from("## Soak\n\n");
    let how = format!(
        "`yonder-bench soak --minutes 60 --json --out {}` (about an hour, so not part of \
         `bench/regenerate`; docs/soak.md)",
        path.display()
    );
    let r: SoakReport = match run_info::section_result(&s, "soak", path, &how) {
        Ok(r) => r,
        Err(section) => return section,
    };
    s += &format!(
        "Rendered from {}, written by a separate run of {how}: `{}`, on {}, commit {}, {}. \
         Three memory servers on loopback, the soak workload under the agent with R = {} at {} \
         of its {} local; one server SIGKILLed every {} (chosen at random) and started again \
         empty on the same address after {}. Pauses are the workload's page visits (read and \
         check a whole page, rewrite it for {}), every visit counted.\n\n",
        path.display(),
        r.command,
        r.date,
        r.commit,
        r.machine,
        r.replicas,
        ByteSize(r.local_mem),
        ByteSize(r.size),
        r.kill_every_s.text(),
        r.down_for_s.text(),
        match (r.rewrites * 100).checked_div(r.touches) {
            Some(pct) => format!("{pct} % of them"),
            None => "some".into(),
        },
    );
    s += "| | |\n|---|---:|\n";
    let ms = |v: f64| human_ns(v * 1e6);
    for (k, v) in [
        (
            "result",
            if r.ok {
                "passed".to_string()
            } else {
                format!("FAILED: {}", r.failure)
            },
        ),
        ("minutes", format!("{}", r.minutes)),
        ("bytes lost", r.bytes_lost.to_string()),
        ("server kills", r.server_kills.to_string()),
        (
            "kills before the cluster was whole again",
            r.forced_kills.to_string(),
        ),
        ("pages verified", r.pages_verified.to_string()),
        ("remote faults", r.remote_touches.to_string()),
        ("pages re-replicated (repairs)", r.repairs.to_string()),
        (
            "times the agent marked a server down",
            r.agent_saw_down.to_string(),
        ),
        ("pause p50", ms(r.pause_p50_ms)),
        ("pause p99", ms(r.pause_p99_ms)),
        ("pause p99.9", ms(r.pause_p999_ms)),
        ("pause max", ms(r.pause_max_ms)),
        (
            "page visits of 100 ms or more",
            r.touches_over_100ms.to_string(),
        ),
        ("page visits of 1 s or more", r.touches_over_1s.to_string()),
    ] {
        s += &format!("| {k} | {v} |\n");
    }
    s + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_and_refuse_nonsense() {
        assert_eq!(
            "5-10".parse::<Span>().unwrap(),
            Span {
                min: 5.0,
                max: 10.0
            }
        );
        assert_eq!("3".parse::<Span>().unwrap(), Span { min: 3.0, max: 3.0 });
        assert!("10-5".parse::<Span>().is_err());
        assert!("a-b".parse::<Span>().is_err());
    }

    #[test]
    fn agent_lines_are_read() {
        let err = "yonder: memory server 127.0.0.1:1 is down (no answer within 2s); its pages are served and re-replicated from the others\n\
                   yonder: memory server 127.0.0.1:1 is back\n\
                   yonder: every copy of slot 3284 (version 3286) is lost: x; stopping the workload\n\
                   yonder: every copy of slot 3284 (version 3286) is lost: x; stopping the workload\n\
                   yonder: re-replicated 1234 pages after memory-server failures (5 still short of copies)\n";
        assert_eq!(lost_slots(err), 1);
        let s = AgentSummary::parse(err);
        assert_eq!((s.repaired, s.repair_deficit), (1234, 5));
        let m = AgentMetrics::parse(
            "# TYPE x gauge\nyonder_agent_server_up{server=\"a\"} 1\nyonder_agent_server_up{server=\"b\"} 0\n\
             yonder_agent_replication_deficit_pages 0\nyonder_agent_repaired_pages_total 17\n",
        );
        assert_eq!(m.up, vec![1.0, 0.0]);
        assert_eq!(m.repaired, Some(17.0));
        assert!(!m.whole());
        assert!(
            AgentMetrics::parse("").whole(),
            "no gauge yet: nothing went down"
        );
        let addrs = vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
        let kill = Kill {
            at_s: 1.0,
            server: 0,
            down_s: 1.0,
            waited_s: 0.0,
            forced: false,
        };
        assert!(agent_saw_every_comeback("", &addrs, &[]));
        assert!(!agent_saw_every_comeback(
            "",
            &addrs,
            std::slice::from_ref(&kill)
        ));
        assert!(!agent_saw_every_comeback(
            err.lines().next().unwrap(),
            &addrs,
            std::slice::from_ref(&kill)
        ));
        assert!(agent_saw_every_comeback(err, &addrs, &[kill]));
    }

    #[test]
    fn a_written_report_is_rendered() {
        let r = SoakReport {
            command: "yonder-bench soak --minutes 60".into(),
            date: "2025-01-01 00:00 UTC".into(),
            commit: "abc1234".into(),
            machine: "Linux 6.x, 2 CPUs".into(),
            minutes: 60.0,
            workload: "w".into(),
            size: 64 << 20,
            local_mem: 16 << 20,
            replicas: 2,
            servers: 3,
            kill_every_s: Span {
                min: 30.0,
                max: 120.0,
            },
            down_for_s: Span { min: 1.0, max: 5.0 },
            server_timeout_ms: None,
            seed: 1,
            ok: true,
            failure: String::new(),
            bytes_lost: 0,
            server_kills: 48,
            forced_kills: 0,
            pages_verified: 1000,
            repairs: 5000,
            repair_deficit_at_end: 0,
            pause_p99_ms: 1.5,
            pause_max_ms: 900.0,
            pause_p50_ms: 0.1,
            pause_p999_ms: 20.0,
            touches: 900,
            remote_touches: 600,
            rewrites: 450,
            touches_over_100ms: 3,
            touches_over_1s: 0,
            bad_words: 0,
            pages_lost: 0,
            mismatches: vec![],
            agent_saw_down: 48,
            agent_saw_back: 48,
            agent_fatal: vec![],
            workload_finished: true,
            workload_status: "exited with status 0".into(),
            kills: vec![],
            elapsed_s: 3700.0,
            log_dir: "/tmp/x".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("soak.json");
        std::fs::write(&path, serde_json::to_string(&r).unwrap()).unwrap();
        let md = markdown(&path);
        for want in [
            "## Soak\n",
            "`yonder-bench soak --minutes 60`",
            "commit abc1234",
            "| result | passed |",
            "| bytes lost | 0 |",
            "| server kills | 48 |",
            "| times the agent marked a server down | 48 |",
            "| pause p99 | 1.50 ms |",
            "50 % of them",
        ] {
            assert!(md.contains(want), "{want:?} missing:\n{md}");
        }
        assert!(text(&r).contains("PASSED"));
    }

    #[test]
    fn the_section_says_when_the_file_is_missing() {
        let md = markdown(Path::new("/nonexistent/soak.json"));
        assert!(md.starts_with("## Soak\n"), "{md}");
        assert!(md.contains("No soak result"), "{md}");
    }
}
