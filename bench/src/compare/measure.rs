//! One workload in every mode: all local (the footprint), Yonder at each ratio, then swap to
//! zram and to a file in a memory cgroup at each ratio.

use std::{process::Command, time::Duration};

use anyhow::{bail, Context};

use super::{
    args::MemcgRest,
    summary::{median_u64, summarise},
    workloads::Workload,
    Args, Mode, Outcome, WorkloadReport,
};

/// A memory cgroup limit that limits nothing (both hierarchies accept it and cap it).
const UNLIMITED: u64 = i64::MAX as u64;
use crate::{cluster::Cluster, system::Machine};

pub(super) fn measure_workload(
    args: &Args,
    machine: &mut Option<Machine>,
    cluster: Option<&Cluster>,
    w: &Workload,
) -> anyhow::Result<WorkloadReport> {
    let (name, touches) = (w.name.as_str(), w.touches);
    let argv = w.plan()?.0;
    let deadline = Duration::from_secs(args.timeout);
    eprintln!("compare: {name}: all local ({} runs)", args.runs);
    let mut local = Vec::new();
    // With the swap modes to come, each all-local run runs in a memory cgroup without a limit,
    // to learn what the kernel charges the program beyond its anonymous memory.
    let mut charged = Vec::new();
    for run in 0..args.runs {
        let memcg = match machine.as_mut() {
            Some(m) => Some(m.cgroup(&format!("{name}-local-{run}"), UNLIMITED)?),
            None => None,
        };
        let o = w.run(
            |argv| match &memcg {
                Some(g) => {
                    let mut c = Command::new("sh");
                    c.args(g.wrap(argv));
                    c
                }
                None => {
                    let mut c = Command::new(&argv[0]);
                    c.args(&argv[1..]);
                    c
                }
            },
            deadline,
        );
        if let (Some(g), Some(m)) = (memcg, machine.as_mut()) {
            let peak = g.peak();
            m.remove_cgroup(g)?;
            if let (Some(peak), Ok(o)) = (peak, &o) {
                charged.push(peak.saturating_sub(o.anon_peak));
            }
        }
        let o = o?;
        keep_log(args, name, Mode::Local, 100, run, &o)?;
        if let Some(why) = &o.failure {
            bail!("{name} failed on its own ({why}):\n{}", o.stderr_tail());
        }
        local.push(o);
    }
    let anon = median_u64(local.iter().map(|o| o.anon_peak));
    let file = median_u64(local.iter().map(|o| o.file_peak));
    anyhow::ensure!(
        anon > 0,
        "{name}: no anonymous memory seen in the all-local run"
    );
    let charged_rest = (!charged.is_empty()).then(|| median_u64(charged.iter().copied()));
    let rest = match args.memcg_rest() {
        MemcgRest::None => 0,
        MemcgRest::Rss => file,
        MemcgRest::Charged => charged_rest.unwrap_or(file),
    };
    let local_row = summarise(Mode::Local, 100, None, None, &local, touches, 0.0, &[]);
    let base = local_row.time_s;
    let mut rows = vec![local_row];

    let budget = |ratio: u32| anon * u64::from(ratio) / 100;
    if let (Some(cluster), true) = (cluster, args.modes.contains(&Mode::Yonder)) {
        for &ratio in &args.ratios {
            eprintln!("compare: {name}: Yonder at {ratio} %");
            let local_mem = format!("{}KiB", budget(ratio).div_ceil(1024));
            let mut agent_args = cluster.agent_args(&local_mem, args.replicas);
            if let Some(policy) = &args.eviction_policy {
                // Before the "--" that ends the agent's own arguments.
                let at = agent_args.len() - 1;
                agent_args.splice(at..at, ["--eviction-policy".into(), policy.clone()]);
            }
            if let Some(extra) = &args.agent_args {
                let at = agent_args.len() - 1;
                agent_args.splice(at..at, extra.split_whitespace().map(String::from));
            }
            let mut outs = Vec::new();
            for run in 0..args.runs {
                let o = w.run(
                    |argv| {
                        let mut c = Command::new(yonder_tests::bin("yonder-agent"));
                        c.args(&agent_args).args(argv);
                        c
                    },
                    deadline,
                )?;
                keep_log(args, name, Mode::Yonder, ratio, run, &o)?;
                if let Some(why) = &o.failure {
                    eprintln!(
                        "compare: {name}: Yonder at {ratio} % failed ({why}):\n{}",
                        o.stderr_tail()
                    );
                }
                outs.push(o);
            }
            rows.push(summarise(
                Mode::Yonder,
                ratio,
                Some(budget(ratio)),
                None,
                &outs,
                touches,
                base,
                &[],
            ));
        }
    }
    for mode in [Mode::Zram, Mode::File] {
        if !args.modes.contains(&mode) {
            continue;
        }
        let m = machine
            .as_mut()
            .context("the swap modes need the machine guard")?;
        // Room for all of it and then some: swap must never run out.
        let swap_bytes = (anon + file) * 3 / 2 + (64 << 20);
        match mode {
            Mode::Zram => {
                m.zram_swap_on(swap_bytes, args.zram_algorithm.as_deref())?;
            }
            _ => {
                m.file_swap_on(&args.swap_dir, swap_bytes)?;
            }
        }
        eprintln!("compare: {name}: swapon ({})", mode.label());
        let result = (|| -> anyhow::Result<()> {
            for &ratio in &args.ratios {
                eprintln!("compare: {name}: {} at {ratio} %", mode.label());
                let limit = budget(ratio) + rest;
                let mut outs = Vec::new();
                let mut peaks = Vec::new();
                for run in 0..args.runs {
                    let memcg = m.cgroup(&format!("{name}-{ratio}-{run}"), limit)?;
                    let o = w.run(
                        |argv| {
                            let mut c = Command::new("sh");
                            c.args(memcg.wrap(argv));
                            c
                        },
                        deadline,
                    );
                    let faults = memcg.stat("pgmajfault").or(memcg.stat("total_pgmajfault"));
                    let peak = memcg.peak();
                    let oom_kills = memcg.oom_kills();
                    m.remove_cgroup(memcg)?;
                    let mut o = o?;
                    o.memcg_faults = faults;
                    if o.failure.is_some() && oom_kills > 0 {
                        o.failure = Some("killed by the memory cgroup's OOM killer".into());
                    }
                    keep_log(args, name, mode, ratio, run, &o)?;
                    if let Some(why) = &o.failure {
                        eprintln!(
                            "compare: {name}: {} at {ratio} % failed ({why}):\n{}",
                            mode.label(),
                            o.stderr_tail()
                        );
                    }
                    peaks.push(peak.unwrap_or(0));
                    outs.push(o);
                }
                rows.push(summarise(
                    mode,
                    ratio,
                    Some(budget(ratio)),
                    Some(limit),
                    &outs,
                    touches,
                    base,
                    &peaks,
                ));
            }
            Ok(())
        })();
        let off = m.swap_off();
        result?;
        off?;
    }
    Ok(WorkloadReport {
        name: name.into(),
        command: argv,
        anon_bytes: anon,
        file_bytes: file,
        charged_rest_bytes: charged_rest,
        memcg_rest_bytes: machine.is_some().then_some(rest),
        has_throughput: touches,
        rows,
    })
}

/// Writes one run's output to `--log-dir`, if given.
fn keep_log(
    args: &Args,
    name: &str,
    mode: Mode,
    ratio: u32,
    run: usize,
    o: &Outcome,
) -> anyhow::Result<()> {
    let Some(dir) = &args.log_dir else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mode = mode.label().replace(' ', "-");
    let path = dir.join(format!("{name}-{mode}-{ratio}-{run}.log"));
    let text = format!(
        "time {:.3} s, failure {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.wall_s, o.failure, o.stdout, o.stderr
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}
