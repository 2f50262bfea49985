//! The soak itself: the servers, the workload under the agent, the kill schedule (waiting for a
//! whole cluster before each kill), and the report from what the workload and the agent said.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use yonder_common::size::ByteSize;
use yonder_tests::{bin, children, free_tcp_port, KillOnDrop, Process};

use super::{
    observe::{agent_saw_every_comeback, describe, last_line, lost_slots, AgentMetrics, Health},
    Args, Kill, SoakReport,
};
use crate::{cluster::Cluster, latency::AgentSummary, run_info, stats::human_ns};

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
