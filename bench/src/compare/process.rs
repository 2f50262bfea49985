//! One run of a command: started in its own process group, watched to the end (time-out,
//! Ctrl-C, a failing driver), the RSS of its process tree sampled.

use std::{
    io::Read,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::Outcome;
use crate::{redis_workload::Control, system};

/// What drives a server workload during a run (on its own thread, while the run is watched).
pub(super) type Driver<'a> = dyn Fn(&Control) -> anyhow::Result<String> + Sync + 'a;

/// Runs `cmd` in its own process group to the end, sampling the RSS of its process tree; a
/// non-zero exit or running past `deadline` (then the group is killed) is recorded in the
/// outcome's `failure`. With a `driver` (a server workload), the driver runs on its own thread
/// meanwhile; if it fails, the group and the server it found are killed and the run fails. On
/// Ctrl-C it kills the group (and the server) and fails.
pub(super) fn run_once(
    cmd: &mut Command,
    deadline: Duration,
    driver: Option<&Driver<'_>>,
) -> anyhow::Result<Outcome> {
    if system::interrupted() {
        bail!("interrupted");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id();
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = read(Box::new(child.stdout.take().context("stdout")?));
    let err = read(Box::new(child.stderr.take().context("stderr")?));
    let mut o = Outcome::default();
    let control = Control::default();
    let driver_failed = AtomicBool::new(false);
    // The whole group (the agent, the workload and anything they started), and the server by
    // its PID in case it left the group.
    let kill_all = || {
        system::kill(-(pid as i32), libc::SIGKILL);
        control.kill_server();
    };
    let (status, driven) = std::thread::scope(|scope| {
        let driving = driver.map(|d| {
            scope.spawn(|| {
                let r = d(&control);
                if r.is_err() {
                    driver_failed.store(true, Ordering::Relaxed);
                }
                r
            })
        });
        let watched = (|| -> anyhow::Result<std::process::ExitStatus> {
            let mut next_sample = Instant::now();
            let mut killed = false;
            loop {
                if let Some(status) = child.try_wait()? {
                    return Ok(status);
                }
                if driver_failed.load(Ordering::Relaxed) && !killed {
                    kill_all();
                    killed = true;
                }
                if Instant::now() >= next_sample {
                    let (anon, file) = tree_rss(pid);
                    o.anon_peak = o.anon_peak.max(anon);
                    o.file_peak = o.file_peak.max(file);
                    next_sample = Instant::now() + Duration::from_millis(10);
                }
                if system::interrupted() {
                    bail!("interrupted: killed {cmd:?}");
                }
                if started.elapsed() > deadline {
                    kill_all();
                    o.failure = Some(format!(
                        "timed out after {} s (--timeout)",
                        deadline.as_secs()
                    ));
                    return Ok(child.wait()?);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })();
        // The driver gives up at its next read or write; the scope waits for it.
        control.stop.store(true, Ordering::Relaxed);
        if watched.is_err() {
            kill_all();
            let _ = child.wait();
        }
        let driven = driving.map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the driver panicked")))
        });
        watched.map(|status| (status, driven))
    })?;
    o.wall_s = started.elapsed().as_secs_f64();
    // Anything of the group still running (a daemonised child) is killed too.
    kill_all();
    o.stdout = out.join().unwrap_or_default();
    o.stderr = err.join().unwrap_or_default();
    match driven {
        Some(Ok(summary)) => o.stdout.push_str(&format!("{summary}\n")),
        Some(Err(e)) if o.failure.is_none() => o.failure = Some(format!("{e:#}")),
        _ => {}
    }
    if !status.success() && o.failure.is_none() {
        o.failure = Some(status.to_string());
    }
    Ok(o)
}

/// Anonymous and other resident memory of process `pid` and its descendants, in bytes. When
/// processes of the workload share pages copy-on-write (more than one of them: a fork),
/// anonymous memory is the sum of their `Pss_Anon`: Redis's BGSAVE child shares the whole
/// dataset until either writes it, and summing `RssAnon` would count it twice. The agent at the
/// root of a Yonder run shares nothing with the program it starts (a fork and exec), so it does
/// not make the tree "forked": `Pss_Anon` walks a process's page tables under its memory map
/// lock, which every 10 ms cost about 7 % of this 2-CPU machine in a Yonder run (perf, session
/// 10), and none in a swap run, whose tree is the program alone.
fn tree_rss(pid: u32) -> (u64, u64) {
    let mut procs = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        procs.push(p);
        todo.extend(yonder_tests::children(p));
    }
    let kb = |s: &str, key: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let is_agent = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "yonder-agent")
    };
    let program = procs.iter().filter(|&&p| !is_agent(p)).count();
    let mut anon = 0;
    let mut other = 0;
    for &p in &procs {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/status")) else {
            continue;
        };
        other += (kb(&s, "RssFile:") + kb(&s, "RssShmem:")) * 1024;
        let pss = (program > 1 && !is_agent(p))
            .then(|| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
            .flatten()
            .filter(|r| r.contains("Pss_Anon:"));
        anon += match pss {
            Some(r) => kb(&r, "Pss_Anon:"),
            None => kb(&s, "RssAnon:"),
        } * 1024;
    }
    (anon, other)
}
