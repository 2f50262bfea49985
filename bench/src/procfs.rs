//! Figures the benchmarks read from /proc: a process's memory and CPU time, the machine's memory.

/// A `Key:   N kB` field of a /proc file (`status`, `meminfo`), in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// A field of /proc/PID/status in bytes (`VmRSS`, `VmHWM`, `RssAnon`, ...), if the process exists.
pub fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    kib_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        key,
    )
}

/// A field of /proc/meminfo in bytes (`MemTotal`, `MemAvailable`, ...).
pub fn meminfo_bytes(key: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, key)
}

/// CPU time of process `pid` so far, all threads, user and system (utime + stime of
/// /proc/PID/stat), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain anything) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace().skip(14 - 3);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks_per_second())
}

/// The unit of the CPU times in /proc (USER_HZ).
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf(3) reads a configuration value and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_this_process() {
        let me = std::process::id();
        assert!(status_bytes(me, "VmRSS").unwrap() > 0);
        assert!(status_bytes(me, "VmHWM").unwrap() >= status_bytes(me, "VmRSS").unwrap() / 2);
        assert!(meminfo_bytes("MemTotal").unwrap() > meminfo_bytes("MemAvailable").unwrap() / 2);
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        assert_eq!(status_bytes(me, "NoSuchField"), None);
        assert_eq!(
            kib_field("VmRSS:\t  12 kB\nVmRSSx: 5 kB\n", "VmRSS"),
            Some(12 * 1024)
        );
    }
}
