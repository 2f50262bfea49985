//! The workloads `compare` runs: their command lines (built-in touch workloads, Python, xz
//! on a generated corpus, Redis driven by the bench, or any command), and one run of each.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context;

use super::{process::run_once, Args, Builtin, Outcome};
use crate::{
    corpus,
    redis_workload::{self, Control},
    system,
};

/// One workload of the comparison.
pub(super) struct Workload {
    /// Its name in tables, JSON and chart files.
    pub(super) name: String,
    /// Whether it reports touches (the built-in touch workloads).
    pub(super) touches: bool,
    /// How each run is set up.
    kind: Kind,
}

/// How each run of a workload is set up.
enum Kind {
    /// The same command line every run.
    Command(Vec<String>),
    /// `xz -9 -T1 -k -f CORPUS` on a generated corpus of `bytes` in `dir` (removed on drop).
    Xz {
        /// Kept for its `Drop`, which removes the corpus.
        _dir: tempfile::TempDir,
        corpus: PathBuf,
        bytes: u64,
    },
    /// `redis-server` with its `--dir` in `dir` (removed on drop), driven by the bench.
    Redis {
        dir: tempfile::TempDir,
        config: redis_workload::Config,
    },
}

impl Workload {
    fn command(name: String, argv: Vec<String>, touches: bool) -> Self {
        Self {
            name,
            touches,
            kind: Kind::Command(argv),
        }
    }

    /// The measured command line of a run and, for Redis, its port (a fresh one each run).
    pub(super) fn plan(&self) -> anyhow::Result<(Vec<String>, Option<u16>)> {
        Ok(match &self.kind {
            Kind::Command(argv) => (argv.clone(), None),
            Kind::Xz { corpus, .. } => (
                ["xz", "-9", "-T1", "-k", "-f"]
                    .map(String::from)
                    .into_iter()
                    .chain([corpus.display().to_string()])
                    .collect(),
                None,
            ),
            Kind::Redis { dir, .. } => {
                let port = redis_workload::free_port()?;
                (redis_workload::server_argv(port, dir.path()), Some(port))
            }
        })
    }

    /// One run: `wrap` makes the command that runs the measured command line in a mode; the
    /// bench drives the server (Redis) and checks the output (xz). A failed check or drive is
    /// the run's `failure`. The run's output files are removed afterwards.
    pub(super) fn run(
        &self,
        wrap: impl FnOnce(&[String]) -> Command,
        deadline: Duration,
    ) -> anyhow::Result<Outcome> {
        let (argv, port) = self.plan()?;
        let mut cmd = wrap(&argv);
        let result = match (&self.kind, port) {
            (Kind::Redis { dir, config }, Some(port)) => {
                let drive = |c: &Control| redis_workload::drive(config, port, dir.path(), c);
                run_once(&mut cmd, deadline, Some(&drive))
            }
            _ => run_once(&mut cmd, deadline, None),
        };
        let check = match (&result, &self.kind) {
            (Ok(o), Kind::Xz { corpus, bytes, .. }) if o.failure.is_none() => {
                check_xz(corpus, *bytes)
            }
            _ => Ok(()),
        };
        let cleaned = self.clean();
        let mut o = result?;
        if let Err(e) = check {
            o.failure = Some(format!("{e:#}"));
        }
        cleaned?;
        Ok(o)
    }

    /// Removes what a run wrote: xz's output, Redis's RDB files.
    fn clean(&self) -> anyhow::Result<()> {
        match &self.kind {
            Kind::Command(_) => {}
            Kind::Xz { corpus, .. } => {
                let out = xz_output(corpus);
                match std::fs::remove_file(&out) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("removing {}", out.display()));
                    }
                    _ => {}
                }
            }
            Kind::Redis { dir, .. } => {
                for e in std::fs::read_dir(dir.path())? {
                    let p = e?.path();
                    std::fs::remove_file(&p)
                        .with_context(|| format!("removing {}", p.display()))?;
                }
            }
        }
        Ok(())
    }
}

/// Where `xz -k` writes its output.
fn xz_output(corpus: &Path) -> PathBuf {
    let mut p = corpus.as_os_str().to_owned();
    p.push(".xz");
    p.into()
}

/// Checks that xz's output is there and says it holds `bytes` (`xz --robot --list` reads the
/// sizes from the file's index: cheap, no decompression).
fn check_xz(corpus: &Path, bytes: u64) -> anyhow::Result<()> {
    let out = xz_output(corpus);
    let list = Command::new("xz")
        .args(["--robot", "--list"])
        .arg(&out)
        .output()
        .context("running xz --list")?;
    let text = String::from_utf8_lossy(&list.stdout);
    let size = text
        .lines()
        .find_map(|l| l.strip_prefix("totals\t"))
        .and_then(|l| l.split('\t').nth(3)?.parse::<u64>().ok());
    anyhow::ensure!(
        list.status.success() && size == Some(bytes),
        "xz's output {} does not hold the {bytes} bytes of the corpus (xz --list: {}{})",
        out.display(),
        text.trim(),
        String::from_utf8_lossy(&list.stderr).trim()
    );
    Ok(())
}

/// A temporary directory for a workload's files in `--swap-dir` (on the disk, like the swap
/// file), named `yonder-bench-<what>-*`.
fn scratch_dir(args: &Args, what: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{}{what}-", system::PREFIX))
        .tempdir_in(&args.swap_dir)
        .with_context(|| format!("making a directory in {}", args.swap_dir.display()))
}

/// The workloads to run.
pub(super) fn workload_commands(args: &Args) -> anyhow::Result<Vec<Workload>> {
    if !args.command.is_empty() {
        let name = args.name.clone().unwrap_or_else(|| {
            Path::new(&args.command[0])
                .file_name()
                .map_or("command".into(), |n| n.to_string_lossy().into_owned())
        });
        return Ok(vec![Workload::command(name, args.command.clone(), false)]);
    }
    let exe = std::env::current_exe()?.display().to_string();
    let pages = args.size.0 / 4096;
    let touches = args.touches.unwrap_or(2 * pages).to_string();
    let fill = match args.fill {
        crate::workload::Fill::Random => "random",
        crate::workload::Fill::Compressible => "compressible",
    };
    // The fill is part of the name (tables, chart files) when it is not the default.
    let name = |pattern: &str| -> String {
        match args.fill {
            crate::workload::Fill::Random => pattern.into(),
            crate::workload::Fill::Compressible => format!("{pattern}-compressible"),
        }
    };
    let mut out = Vec::new();
    for w in &args.workloads {
        let touch = |pattern: &str| -> Vec<String> {
            [
                &exe,
                "workload",
                "--pattern",
                pattern,
                "--size",
                &args.size.0.to_string(),
                "--touches",
                &touches,
                "--settle-ms",
                "0",
                "--fill",
                fill,
            ]
            .map(String::from)
            .into()
        };
        out.push(match w {
            Builtin::Random => Workload::command(name("random"), touch("random"), true),
            Builtin::Zipfian => Workload::command(name("zipfian"), touch("zipfian"), true),
            Builtin::Sequential => Workload::command(name("sequential"), touch("sequential"), true),
            Builtin::Python => Workload::command(
                "python".into(),
                vec![python()?, "-c".into(), PYTHON.into()],
                false,
            ),
            Builtin::Xz => {
                anyhow::ensure!(args.xz_corpus.0 > 0, "--xz-corpus must not be 0");
                let dir = scratch_dir(args, "xz")?;
                let corpus = dir.path().join("corpus.txt");
                corpus::write(&corpus, args.xz_corpus.0 as usize, corpus::SEED)?;
                Workload {
                    name: "xz".into(),
                    touches: false,
                    kind: Kind::Xz {
                        _dir: dir,
                        corpus,
                        bytes: args.xz_corpus.0,
                    },
                }
            }
            Builtin::Redis => {
                anyhow::ensure!(
                    args.redis_dataset.0 > 0 && args.redis_value_bytes > 1,
                    "--redis-dataset must not be 0, --redis-value-bytes at least 2"
                );
                Workload {
                    name: "redis".into(),
                    touches: false,
                    kind: Kind::Redis {
                        dir: scratch_dir(args, "redis")?,
                        config: redis_workload::Config {
                            dataset: args.redis_dataset.0,
                            value_bytes: args.redis_value_bytes,
                            gets: args.redis_gets,
                            seed: redis_workload::SEED,
                        },
                    },
                }
            }
        });
    }
    Ok(out)
}

/// The demo's Python program with more passes, so that the run is not mostly start-up.
const PYTHON: &str = "
import hashlib
data = [bytes([i % 251]) * 200 for i in range(120_000)]
h = hashlib.sha256()
for _ in range(6):
    for b in data:
        h.update(b)
print(h.hexdigest())
";

/// The Python interpreter itself (not a wrapper script that would fork helpers first).
fn python() -> anyhow::Result<String> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("running python3")?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}
