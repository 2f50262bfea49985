//! Where a result file came from (the command, the date, the commit, the machine), and writing it.

use std::{path::Path, process::Command};

use anyhow::Context;

/// The command line this process was started with.
pub fn command() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// The date and time now, UTC, to the minute.
pub fn utc_date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The commit the working directory is at (`git rev-parse --short HEAD`), `-dirty` when it has
/// uncommitted changes to tracked files; read when a run starts, as the binary was built from it.
pub fn git_commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        None => "unknown".into(),
    }
}

/// The kernel and CPU count, in a few words.
pub fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("Linux {}, {cpus} CPUs", kernel.trim())
}

/// Writes `json` and a newline to `path`, creating its directory.
pub fn write_result(path: &Path, json: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{json}\n")).with_context(|| format!("writing {}", path.display()))
}

/// Reads a result file written by [`write_result`].
pub fn read_result<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)?;
    Ok(serde_json::from_str(&text)?)
}

/// Puts out a run's result: the JSON object on stdout with `json`, else `text` of it; and the
/// JSON object into `out` when given.
pub fn emit<T: serde::Serialize>(
    report: &T,
    json: bool,
    out: Option<&Path>,
    text: fn(&T) -> String,
) -> anyhow::Result<()> {
    let object = serde_json::to_string_pretty(report)?;
    if let Some(out) = out {
        write_result(out, &object)?;
    }
    if json {
        println!("{object}");
    } else {
        print!("{}", text(report));
    }
    Ok(())
}

/// The result file of a report section: read, or `Err` with the whole section (`heading` and a
/// line saying the file could not be read and how to make it, `how`).
pub fn section_result<T: serde::de::DeserializeOwned>(
    heading: &str,
    what: &str,
    path: &Path,
    how: &str,
) -> Result<T, String> {
    read_result(path).map_err(|e| {
        format!(
            "{heading}No {what} result: {} could not be read ({e:#}). Run {how}, then \
             regenerate.\n\n",
            path.display()
        )
    })
}
