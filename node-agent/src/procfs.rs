//! What the agent reads about a workload from /proc: its anonymous mappings, which of their
//! pages are present, and their contents (process_vm_readv).

use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    os::unix::fs::FileExt,
};

use crate::pages::PAGE;

/// Private, writable, anonymous mappings of `pid` that the agent manages: the brk heap, anonymous
/// mmaps (malloc arenas, Python and jemalloc heaps, thread stacks). Not the main stack, not file
/// mappings, not shared memory, and not the `.bss` of libraries (the anonymous mapping right
/// after a library's writable data): libc keeps state there that the shim's helper thread needs
/// while it drops pages, and a page it needs must never be part of the eviction it serves.
pub fn anonymous_ranges(pid: u32) -> io::Result<Vec<(u64, u64)>> {
    let f = File::open(format!("/proc/{pid}/maps"))?;
    let mut out = Vec::new();
    let mut prev_file_end = None;
    for line in BufReader::new(f).lines() {
        let line = line?;
        match parse_anonymous(&line) {
            Some((start, end)) if prev_file_end != Some(start) => out.push((start, end)),
            _ => {}
        }
        prev_file_end = file_writable_end(&line);
    }
    Ok(out)
}

/// A cheap fingerprint of a process's address space: `/proc/PID/statm`'s size (all mappings)
/// and data (private writable mappings and stack) fields, read through a descriptor kept open.
/// A new mapping, a `brk`, a munmap or an `mprotect` that makes memory writable changes it; a
/// mapping replaced by one of the same size and kind does not.
pub struct LayoutProbe {
    file: File,
}

impl LayoutProbe {
    /// Opens the probe of process `pid`.
    pub fn open(pid: u32) -> io::Result<Self> {
        Ok(Self {
            file: File::open(format!("/proc/{pid}/statm"))?,
        })
    }

    /// The current fingerprint: (size, data) in pages.
    pub fn read(&self) -> io::Result<(u64, u64)> {
        let mut buf = [0u8; 128];
        let n = self.file.read_at(&mut buf, 0)?;
        let text = std::str::from_utf8(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        let mut field = |i: usize| {
            fields
                .nth(i)
                .and_then(Result::ok)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short statm"))
        };
        let size = field(0)?;
        let data = field(4)?; // the sixth field: skip resident, shared, text, lib
        Ok((size, data))
    }
}

/// The thread group (process) of thread `tid`.
pub fn tgid(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

/// The executable mapping of process `pid` whose file name contains `name` (a library's code).
pub fn code_of(pid: u32, name: &str) -> Option<(u64, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (s, e) = f.next()?.split_once('-')?;
        let perms = f.next()?;
        let path = f.nth(3)?;
        let file = path.rsplit('/').next()?;
        (perms.contains('x') && file.contains(name)).then_some((
            u64::from_str_radix(s, 16).ok()?,
            u64::from_str_radix(e, 16).ok()?,
        ))
    })
}

/// Every mapping of `pid`, whatever it maps: `(start, end)`.
pub fn all_ranges(pid: u32) -> io::Result<Vec<(u64, u64)>> {
    let f = File::open(format!("/proc/{pid}/maps"))?;
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        let line = line?;
        let range = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = range.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                out.push((a, b));
            }
        }
    }
    Ok(out)
}

/// The end of a writable file mapping (a library's data segment), if the line is one.
fn file_writable_end(line: &str) -> Option<u64> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let inode = fields.nth(2)?;
    if !perms.starts_with("rw") || inode == "0" {
        return None;
    }
    u64::from_str_radix(range.split_once('-')?.1, 16).ok()
}

fn parse_anonymous(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.collect::<Vec<_>>().join(" ");
    if !perms.starts_with("rw") || !perms.ends_with('p') || inode != "0" {
        return None;
    }
    if !(path.is_empty() || path == "[heap]" || path.starts_with("[anon:")) {
        return None;
    }
    let (a, b) = range.split_once('-')?;
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

/// Pages of `[start, end)` that hold the process's data: present in memory or swapped out by
/// the kernel (from /proc/PID/pagemap; reading it faults nothing).
///
/// A swapped-out page is not "present" but is no less the program's: a node with swap may page
/// out managed memory, and taking such a page for an empty one loses it (session 20).
pub fn populated_pages(pid: u32, start: u64, end: u64) -> io::Result<Vec<u64>> {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    // Bit 62 is set for every non-present entry that is not empty, guard regions included
    // (`MADV_GUARD_INSTALL`, Linux 6.13, which a C library may use for thread stack guards):
    // those hold no data and must not count (bit 58 marks them from Linux 6.14).
    const GUARD: u64 = 1 << 58;
    let f = File::open(format!("/proc/{pid}/pagemap"))?;
    let mut out = Vec::new();
    let mut page = start;
    let mut buf = vec![0u8; 8 * 4096];
    while page < end {
        let n = (((end - page) / PAGE) as usize).min(4096);
        let bytes = &mut buf[..n * 8];
        f.read_exact_at(bytes, page / PAGE * 8)?;
        for (i, e) in bytes.chunks_exact(8).enumerate() {
            let entry = u64::from_le_bytes(e.try_into().expect("8-byte chunk"));
            if entry & PRESENT != 0 || entry & (SWAPPED | GUARD) == SWAPPED {
                out.push(page + i as u64 * PAGE);
            }
        }
        page += n as u64 * PAGE;
    }
    Ok(out)
}

/// Mappings of `pid` a child does not inherit as they are: `(start, end)` of those marked
/// `MADV_WIPEONFORK` (the child gets them empty: zeros) or `MADV_DONTFORK` (the child has no
/// mapping there). Read from the `VmFlags` (`wf`, `dc`) of /proc/PID/smaps, which only smaps has.
pub fn not_inherited_ranges(pid: u32) -> io::Result<Vec<(u64, u64)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    Ok(parse_not_inherited(&text))
}

/// The ranges of an smaps text whose `VmFlags` hold `wf` or `dc`.
fn parse_not_inherited(smaps: &str) -> Vec<(u64, u64)> {
    ranges_flagged(smaps, &["wf", "dc"])
}

/// Mappings of `pid` locked in memory (`mlock`, `mlockall`, `MAP_LOCKED`: `VmFlags` `lo`), as
/// `(start, end)`. Reads /proc/PID/smaps, which walks the page tables: ask only when
/// [`LockProbe`] says the locked amount changed.
pub fn locked_ranges(pid: u32) -> io::Result<Vec<(u64, u64)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    Ok(ranges_flagged(&text, &["lo"]))
}

/// Reads how much memory a process has locked (`VmLck` of /proc/PID/status, which is cheap: no
/// page-table walk), to notice `mlock` and `munlock` without reading smaps.
pub struct LockProbe {
    file: File,
}

impl LockProbe {
    /// Opens the probe of process `pid`.
    pub fn open(pid: u32) -> io::Result<Self> {
        Ok(Self {
            file: File::open(format!("/proc/{pid}/status"))?,
        })
    }

    /// Locked memory now, bytes.
    pub fn read(&self) -> io::Result<u64> {
        let mut buf = [0u8; 4096];
        let n = self.file.read_at(&mut buf, 0)?;
        let text = String::from_utf8_lossy(&buf[..n]);
        parse_locked(&text)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmLck in status"))
    }
}

/// `VmLck` of a /proc/PID/status text, bytes.
fn parse_locked(status: &str) -> Option<u64> {
    kib_field(status, "VmLck:")
}

/// The value of a `Key:   N kB` line of a /proc text (status, smaps_rollup), in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The ranges of an smaps text whose `VmFlags` hold any of `wanted`.
fn ranges_flagged(smaps: &str, wanted: &[&str]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut current = None;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if flags.split_whitespace().any(|f| wanted.contains(&f)) {
                out.extend(current.take());
            }
            continue;
        }
        // A mapping's header line starts with its range; field lines start with "Name:".
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                current = Some((a, b));
            }
        }
    }
    out
}

/// Of `pages` (sorted), those present in `pid` and mapped by another process too: after a fork,
/// a page parent and child share copy-on-write until one of them writes it (pagemap's "exclusively
/// mapped" bit, 56, is clear; it needs no privilege, unlike the page frame number).
pub fn shared_pages(pid: u32, pages: &[u64]) -> io::Result<Vec<u64>> {
    const PRESENT: u64 = 1 << 63;
    const EXCLUSIVE: u64 = 1 << 56;
    let f = File::open(format!("/proc/{pid}/pagemap"))?;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut i = 0;
    while i < pages.len() {
        // A run of consecutive pages, read in one go (at most 4096 entries).
        let start = pages[i];
        let mut n = 1;
        while i + n < pages.len() && n < 4096 && pages[i + n] == start + n as u64 * PAGE {
            n += 1;
        }
        buf.resize(n * 8, 0);
        f.read_exact_at(&mut buf, start / PAGE * 8)?;
        for (k, e) in buf.chunks_exact(8).enumerate() {
            let entry = u64::from_le_bytes(e.try_into().expect("8-byte chunk"));
            if entry & PRESENT != 0 && entry & EXCLUSIVE == 0 {
                out.push(start + k as u64 * PAGE);
            }
        }
        i += n;
    }
    Ok(out)
}

/// Parent pid of `pid`, if the process exists.
pub fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (in parentheses) may hold spaces: the fields after it are fixed.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` is `ancestor` or descends from it.
pub fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut p = pid;
    for _ in 0..128 {
        if p == ancestor {
            return true;
        }
        match ppid(p) {
            Some(q) if q > 1 && q != p => p = q,
            _ => return false,
        }
    }
    false
}

/// Anonymous resident memory of `pid` in bytes (RssAnon), if the process still exists.
pub fn rss_anon(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&status, "RssAnon:")
}

/// Proportional anonymous resident memory of process `pid` in bytes (`Pss_Anon` of
/// `/proc/PID/smaps_rollup`): a page shared copy-on-write by n processes counts 1/n in each, so
/// the sum over a fork tree counts it once. Costs a walk of the page tables, unlike
/// [`rss_anon`].
pub fn pss_anon(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_field(&rollup, "Pss_Anon:")
}

/// CPU time the calling thread has used (user and system).
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Copies the given pages of `pid` into `out` (one page each, in order). The pages must be
/// present: reading a missing page of a registered range would wait on the agent's own fault
/// service, so callers run this off the fault loop's thread.
///
/// `process_vm_readv` reads with the program's own access rights, so it fails on a page the
/// program made inaccessible (`mprotect(PROT_NONE)`: a heap or GC region it decommitted, say); such
/// pages are read through /proc/PID/mem, which reads them as a debugger would. A page neither
/// can read (unmapped meanwhile) is an error.
pub fn read_pages(pid: u32, pages: &[u64], out: &mut [u8]) -> io::Result<()> {
    assert_eq!(out.len(), pages.len() * PAGE as usize);
    let mut mem: Option<File> = None;
    let mut done = 0;
    while done < pages.len() {
        let n = read_run(pid, &pages[done..], &mut out[done * PAGE as usize..])?;
        done += n;
        if done == pages.len() {
            break;
        }
        // The page at `done` could not be read with the program's rights.
        let page = pages[done];
        if mem.is_none() {
            mem = Some(File::open(format!("/proc/{pid}/mem"))?);
        }
        let buf = &mut out[done * PAGE as usize..][..PAGE as usize];
        mem.as_ref()
            .expect("opened above")
            .read_exact_at(buf, page)
            .map_err(|e| io::Error::new(e.kind(), format!("reading page {page:#x}: {e}")))?;
        done += 1;
    }
    Ok(())
}

/// Reads as many of `pages` as `process_vm_readv` will, in order, into `out`; returns how many
/// (fewer than all when one cannot be read: the next one is the first it refused).
fn read_run(pid: u32, pages: &[u64], out: &mut [u8]) -> io::Result<usize> {
    const IOV_MAX: usize = 1024;
    let mut done = 0;
    for chunk in pages.chunks(IOV_MAX) {
        let local_buf = &mut out[done * PAGE as usize..][..chunk.len() * PAGE as usize];
        let local = libc::iovec {
            iov_base: local_buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: local_buf.len(),
        };
        let remote: Vec<libc::iovec> = chunk
            .iter()
            .map(|&p| libc::iovec {
                iov_base: p as *mut libc::c_void,
                iov_len: PAGE as usize,
            })
            .collect();
        // SAFETY: `local` covers exactly `local_buf`, which we own mutably; the remote iovecs
        // only name addresses in the other process, which the kernel checks.
        let n = unsafe {
            libc::process_vm_readv(
                pid as libc::pid_t,
                &local,
                1,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        let n = if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EFAULT) {
                return Err(e);
            }
            0
        } else {
            n as usize
        };
        // Whole pages only: a page read in part is read again by the caller.
        let whole = n / PAGE as usize;
        done += whole;
        if whole < chunk.len() {
            return Ok(done);
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_wipe_on_fork_and_dont_copy_mappings_in_smaps() {
        let smaps = "\
7f0000000000-7f0000800000 rw-p 00000000 00:00 0 
Size:               8192 kB
VmFlags: rd wr mr mw me ac wf sd
7f0000800000-7f0001000000 rw-p 00000000 00:00 0 
Size:               8192 kB
VmFlags: rd wr mr mw me ac sd
7f0001000000-7f0001800000 rw-p 00000000 00:00 0                          [anon:x]
Size:               8192 kB
VmFlags: rd wr mr mw me dc ac sd
55d000000000-55d000021000 rw-p 00000000 00:00 0                          [heap]
VmFlags: rd wr mr mw me ac sd
";
        assert_eq!(
            parse_not_inherited(smaps),
            [
                (0x7f00_0000_0000, 0x7f00_0080_0000),
                (0x7f00_0100_0000, 0x7f00_0180_0000)
            ]
        );
    }

    /// A fresh private anonymous read-write mapping of `len` bytes, for the test to unmap.
    fn map_anonymous(len: usize) -> *mut libc::c_void {
        // SAFETY: a new mapping at an address the kernel picks; nothing else refers to it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        addr
    }

    #[test]
    fn guard_regions_do_not_count_as_populated() {
        const MADV_GUARD_INSTALL: i32 = 102;
        let len = 3 * PAGE as usize;
        let addr = map_anonymous(len);
        let start = addr as u64;
        // SAFETY: the first page of the mapping made above, writable.
        unsafe { std::ptr::write_bytes(addr.cast::<u8>(), 1, PAGE as usize) };
        // SAFETY: advice on the last page of the mapping made above, which holds no data.
        let rc = unsafe {
            libc::madvise(
                addr.cast::<u8>().add(2 * PAGE as usize).cast(),
                PAGE as usize,
                MADV_GUARD_INSTALL,
            )
        };
        let err = io::Error::last_os_error();
        let found = populated_pages(std::process::id(), start, start + 3 * PAGE);
        // SAFETY: the mapping made above, not used after.
        unsafe { libc::munmap(addr, len) };
        assert_eq!(rc, 0, "MADV_GUARD_INSTALL (Linux 6.13) refused: {err}");
        assert_eq!(
            found.unwrap(),
            vec![start],
            "the guard page counted as data"
        );
    }

    #[test]
    fn pages_the_program_made_inaccessible_are_read_all_the_same() {
        let len = 3 * PAGE as usize;
        let addr = map_anonymous(len);
        let start = addr as u64;
        for i in 0..3 {
            // SAFETY: page i of the mapping made above, writable.
            unsafe {
                std::ptr::write_bytes(
                    addr.cast::<u8>().add(i * PAGE as usize),
                    i as u8 + 1,
                    PAGE as usize,
                )
            };
        }
        // SAFETY: the middle page of the mapping made above, which nothing here touches again.
        let rc = unsafe {
            libc::mprotect(
                addr.cast::<u8>().add(PAGE as usize).cast(),
                PAGE as usize,
                libc::PROT_NONE,
            )
        };
        assert_eq!(rc, 0);
        let pages: Vec<u64> = (0..3).map(|i| start + i * PAGE).collect();
        let mut out = vec![0u8; len];
        let r = read_pages(std::process::id(), &pages, &mut out);
        // SAFETY: the mapping made above, not used after.
        unsafe { libc::munmap(addr, len) };
        r.unwrap();
        for i in 0..3 {
            assert!(
                out[i * PAGE as usize..][..PAGE as usize]
                    .iter()
                    .all(|&b| b == i as u8 + 1),
                "page {i}"
            );
        }
        // A page that is not mapped at all is an error (the first page above zero: below
        // vm.mmap_min_addr, never mapped).
        assert!(read_pages(std::process::id(), &[PAGE], &mut out[..PAGE as usize]).is_err());
    }

    #[test]
    fn locked_memory_is_seen_in_status_and_its_range_in_smaps() {
        let len = 4 * PAGE as usize;
        let addr = map_anonymous(len);
        let start = addr as u64;
        let me = std::process::id();
        let probe = LockProbe::open(me).unwrap();
        let before = probe.read().unwrap();
        // SAFETY: locks two pages of the mapping made above (root, or a memlock limit above 8 KiB).
        let rc = unsafe {
            libc::mlock(
                addr.cast::<u8>().add(PAGE as usize).cast(),
                2 * PAGE as usize,
            )
        };
        if rc != 0 {
            // SAFETY: the mapping made above, not used after.
            unsafe { libc::munmap(addr, len) };
            panic!(
                "mlock: {} (the test needs RLIMIT_MEMLOCK of a few pages)",
                io::Error::last_os_error()
            );
        }
        let locked = probe.read().unwrap();
        let ranges = locked_ranges(me).unwrap();
        // SAFETY: unlocks and unmaps the mapping made above, not used after.
        unsafe {
            libc::munlock(
                addr.cast::<u8>().add(PAGE as usize).cast(),
                2 * PAGE as usize,
            );
            libc::munmap(addr, len);
        }
        // Other tests of this binary may lock memory of their own meanwhile: at least ours.
        assert!(locked >= before + 2 * PAGE, "{before} -> {locked}");
        assert!(
            ranges.contains(&(start + PAGE, start + 3 * PAGE)),
            "{ranges:x?} should hold {:#x}-{:#x}",
            start + PAGE,
            start + 3 * PAGE
        );
        assert_eq!(
            parse_locked("Name:\tx\nVmLck:\t   12 kB\nVmPin:\t0 kB\n"),
            Some(12 * 1024)
        );
        assert_eq!(parse_locked("Name:\tx\n"), None);
    }

    #[test]
    fn pages_shared_with_a_forked_child_are_found() {
        let len = 8 * PAGE as usize;
        let addr = map_anonymous(len);
        // SAFETY: the mapping made above, `len` bytes long.
        unsafe { std::ptr::write_bytes(addr.cast::<u8>(), 7, len) };
        let start = addr as u64;
        let pages: Vec<u64> = (0..8).map(|i| start + i * PAGE).collect();
        let me = std::process::id();
        assert!(
            shared_pages(me, &pages).unwrap().is_empty(),
            "not forked yet"
        );
        let (mut r, w) = std::io::pipe().unwrap();
        // SAFETY: the child only sleeps until the parent closes the pipe, then exits at once
        // (no allocation, no lock: fork in a threaded test binary).
        let child = unsafe { libc::fork() };
        if child == 0 {
            drop(w);
            let mut b = [0u8; 1];
            let _ = std::io::Read::read(&mut r, &mut b);
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        assert!(child > 0);
        let shared = shared_pages(me, &pages).unwrap();
        drop(w);
        let mut status = 0;
        // SAFETY: reaps the child forked above.
        unsafe { libc::waitpid(child, &mut status, 0) };
        // SAFETY: the mapping made above, not used after.
        unsafe { libc::munmap(addr, len) };
        assert_eq!(
            shared, pages,
            "every page is shared copy-on-write after the fork"
        );
    }

    #[test]
    fn this_process_wipe_on_fork_mapping_is_found() {
        let len = 4 * PAGE as usize;
        let addr = map_anonymous(len);
        // SAFETY: the mapping made above.
        let rc = unsafe { libc::madvise(addr, len, libc::MADV_WIPEONFORK) };
        assert_eq!(rc, 0);
        let ranges = not_inherited_ranges(std::process::id()).unwrap();
        // SAFETY: the mapping made above, not used after.
        unsafe { libc::munmap(addr, len) };
        let start = addr as u64;
        assert!(
            ranges
                .iter()
                .any(|&(a, b)| a <= start && start + len as u64 <= b),
            "{ranges:x?} does not hold {start:#x}"
        );
    }

    #[test]
    fn parses_only_private_anonymous_writable_mappings() {
        assert_eq!(
            parse_anonymous("7f00-7f10 rw-p 00000000 00:00 0 "),
            Some((0x7f00, 0x7f10))
        );
        assert_eq!(
            parse_anonymous("5500-5600 rw-p 00000000 00:00 0  [heap]"),
            Some((0x5500, 0x5600))
        );
        assert_eq!(
            parse_anonymous("7ffc-7ffd rw-p 00000000 00:00 0  [stack]"),
            None
        );
        assert_eq!(parse_anonymous("7f00-7f10 r--p 00000000 00:00 0 "), None);
        assert_eq!(
            parse_anonymous("7f00-7f10 rw-s 00000000 00:05 123 /dev/zero"),
            None
        );
        assert_eq!(
            parse_anonymous("7f00-7f10 rw-p 00001000 08:01 4242 /usr/lib/libc.so.6"),
            None
        );
    }

    #[test]
    fn library_bss_is_recognised() {
        let data = "7f00-7f10 rw-p 001d3000 fe:00 326279 /usr/lib/x86_64-linux-gnu/libc.so.6";
        assert_eq!(file_writable_end(data), Some(0x7f10));
        assert_eq!(
            file_writable_end("7f00-7f10 r--p 001d3000 fe:00 326279 /usr/lib/libc.so.6"),
            None
        );
        assert_eq!(file_writable_end("7f00-7f10 rw-p 00000000 00:00 0"), None);
    }

    #[test]
    fn finds_its_own_ancestry() {
        let me = std::process::id();
        let parent = ppid(me).unwrap();
        assert!(descends_from(me, me));
        assert!(descends_from(me, parent));
        assert!(!descends_from(parent, me));
    }

    #[test]
    fn reads_own_pages_and_presence() {
        let pid = std::process::id();
        let mut data = vec![0u8; 3 * PAGE as usize];
        let base = (data.as_ptr() as u64 + PAGE - 1) & !(PAGE - 1);
        let off = (base - data.as_ptr() as u64) as usize;
        data[off..off + PAGE as usize].fill(7);
        let present = populated_pages(pid, base, base + PAGE).unwrap();
        assert_eq!(present, vec![base]);
        let mut out = vec![0u8; PAGE as usize];
        read_pages(pid, &[base], &mut out).unwrap();
        assert!(out.iter().all(|&b| b == 7));
    }
}
