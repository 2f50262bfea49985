//! New memory registered before the program can touch it, whoever maps it.
//!
//! The interposed `mmap` sees only calls that go through the dynamic linker; the C library's own
//! `mmap` and `brk` (malloc's large blocks and heap growth) do not pass there, and the agent's
//! scanner finds that memory up to 10 ms late, after the program may have written megabytes of
//! it. So the shim installs a seccomp filter that hands every `mmap` of private anonymous memory
//! and every `brk` to the agent as a user notification (`SECCOMP_RET_USER_NOTIF`). The agent asks
//! the process's helper thread to make the very same call ([`map`], [`brk`]), which registers the
//! new range with the userfaultfd, and answers with the call's result: the program gets memory
//! that is managed from its first byte. See docs/node-agent.md, "New memory".
//!
//! - The helper's own calls come from [`syscall6`], in this library's code, which the filter lets
//!   through: the helper never waits for itself.
//! - One filter serves the whole workload: a forked child inherits it, and so does a program
//!   started by `exec` (filters cannot be removed, and the kernel refuses a second listener). The
//!   agent reads the listener and sends each call to the helper of the process that made it, or
//!   lets it through (a process it does not manage, or a helper of an `exec`'d program, whose
//!   code the filter no longer recognises).
//! - Without `CAP_SYS_ADMIN` a filter needs `no_new_privs`, which stops setuid programs in the
//!   workload from gaining privileges: the shim sets it only when asked (`YONDER_INTERCEPT=always`).

use std::{
    io,
    sync::atomic::{AtomicI32, AtomicU64, Ordering},
};

/// Environment variable: `auto` (the default: intercept when the process has `CAP_SYS_ADMIN`),
/// `always` (also without it, setting `no_new_privs`), `off`.
pub const MODE_ENV: &str = "YONDER_INTERCEPT";

/// This library's code, `[start, end)`: calls made there (the helper's) are let through.
static CODE_START: AtomicU64 = AtomicU64::new(0);
static CODE_END: AtomicU64 = AtomicU64::new(0);

/// Whether this process may install filters (decided at load time, kept for forked children).
static ALLOWED: AtomicI32 = AtomicI32::new(0);

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// Decides at load time whether to intercept, and finds this library's code (heap allowed:
/// called from the constructor). Returns why not, if not.
pub fn prepare() -> Result<(), &'static str> {
    let mode = std::env::var(MODE_ENV).unwrap_or_default();
    match mode.as_str() {
        "off" => return Err("turned off"),
        "" | "auto" | "always" => {}
        _ => return Err("unknown YONDER_INTERCEPT value"),
    }
    if !cfg!(target_arch = "x86_64") {
        return Err("not on x86-64");
    }
    let (start, end) =
        code_range_of(syscall6 as *const () as usize as u64).ok_or("the shim's code not found")?;
    if start >> 32 != (end - 1) >> 32 {
        return Err("the shim's code spans a 4 GiB boundary");
    }
    if !has_cap_sys_admin() {
        if mode != "always" {
            return Err("no CAP_SYS_ADMIN (YONDER_INTERCEPT=always sets no_new_privs instead)");
        }
        // SAFETY: prctl(2) with constant arguments; it only sets a flag of this process.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err("no_new_privs refused");
        }
    }
    CODE_START.store(start, Ordering::Release);
    CODE_END.store(end, Ordering::Release);
    ALLOWED.store(1, Ordering::Release);
    Ok(())
}

/// The executable mapping of this process holding address `a`.
fn code_range_of(a: u64) -> Option<(u64, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (s, e) = f.next()?.split_once('-')?;
        let perms = f.next()?;
        let (s, e) = (
            u64::from_str_radix(s, 16).ok()?,
            u64::from_str_radix(e, 16).ok()?,
        );
        (perms.contains('x') && s <= a && a < e).then_some((s, e))
    })
}

fn has_cap_sys_admin() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 21) != 0)
}

/// Installs the filter on the calling thread (the threads it creates from now on inherit it) and
/// returns its listener. Fails with EBUSY under a filter that has one already (an `exec` from a
/// workload process: the inherited filter serves).
pub fn install() -> io::Result<i32> {
    if ALLOWED.load(Ordering::Acquire) == 0 {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    let (start, end) = (
        CODE_START.load(Ordering::Acquire),
        CODE_END.load(Ordering::Acquire),
    );
    let prog = program(start, end);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: seccomp(2) reads `fprog` and the instructions it points to, which live across the
    // call; the program was checked by construction (every jump lands inside it, every path
    // returns).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd as i32)
}

/// One BPF instruction.
const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Length of the filter program.
const PROGRAM_LEN: usize = 16;

/// The filter: `mmap` of private anonymous memory (not huge pages) and `brk` go to the listener,
/// unless made from this library's code at `[start, end)`; everything else is allowed.
fn program(start: u64, end: u64) -> [libc::sock_filter; PROGRAM_LEN] {
    use libc::{
        BPF_ABS, BPF_ALU, BPF_AND, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W,
        SECCOMP_RET_ALLOW, SECCOMP_RET_USER_NOTIF,
    };
    const LD: u16 = (BPF_LD | BPF_W | BPF_ABS) as u16;
    const JEQ: u16 = (BPF_JMP | BPF_JEQ | BPF_K) as u16;
    const JGE: u16 = (BPF_JMP | BPF_JGE | BPF_K) as u16;
    const AND: u16 = (BPF_ALU | BPF_AND | BPF_K) as u16;
    const RET: u16 = (BPF_RET | BPF_K) as u16;
    // struct seccomp_data: nr at 0, arch at 4, instruction_pointer at 8, args at 16 (little
    // endian: the low half of a 64-bit field first).
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    const IP_LO: u32 = 8;
    const IP_HI: u32 = 12;
    const FLAGS_LO: u32 = 16 + 8 * 3;
    const MAP_TYPE: u32 = 0x0f;
    let kinds = MAP_TYPE | libc::MAP_ANONYMOUS as u32 | libc::MAP_HUGETLB as u32;
    let private_anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
    // A jump skips that many instructions after itself; ALLOW is at 14, NOTIFY at 15.
    [
        /* 0 */ insn(LD, 0, 0, ARCH),
        /* 1 */ insn(JEQ, 0, 12, AUDIT_ARCH_X86_64), // other → 14
        /* 2 */ insn(LD, 0, 0, NR),
        /* 3 */ insn(JEQ, 2, 0, libc::SYS_mmap as u32), // → 6
        /* 4 */ insn(JEQ, 4, 0, libc::SYS_brk as u32), // → 9
        /* 5 */ insn(RET, 0, 0, SECCOMP_RET_ALLOW),
        /* 6 */ insn(LD, 0, 0, FLAGS_LO),
        /* 7 */ insn(AND, 0, 0, kinds),
        /* 8 */ insn(JEQ, 0, 5, private_anon), // other kinds → 14
        /* 9 */ insn(LD, 0, 0, IP_HI),
        /* 10 */ insn(JEQ, 0, 4, (start >> 32) as u32), // elsewhere → 15
        /* 11 */ insn(LD, 0, 0, IP_LO),
        /* 12 */ insn(JGE, 0, 2, start as u32), // below → 15
        /* 13 */ insn(JGE, 1, 0, end as u32), // past the end → 15, inside → 14
        /* 14 */ insn(RET, 0, 0, SECCOMP_RET_ALLOW),
        /* 15 */ insn(RET, 0, 0, SECCOMP_RET_USER_NOTIF),
    ]
}

/// A system call made from this library's code, which the filter never hands over: the
/// helper's own `mmap` and `brk`. Returns the raw result (a negative errno on failure).
fn syscall6(nr: i64, a: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: the x86-64 system call convention: number in rax, arguments in rdi, rsi, rdx,
    // r10, r8, r9; the kernel clobbers rcx and r11. The calls made here (mmap, brk) are the ones
    // the program asked for, made on its behalf with its own arguments.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (nr, a);
        ret = -(libc::ENOSYS as i64);
    }
    ret
}

/// Makes the `mmap` a program thread asked for (its six arguments) on its behalf, and registers
/// the new range with `uffd` (a range the kernel will not register is left to the agent's
/// scanner): the raw result, a negative errno on failure. No heap.
pub fn map(a: [u64; 6], uffd: i32, register: fn(i32, u64, u64)) -> i64 {
    let r = syscall6(libc::SYS_mmap, a);
    if !(-4095..0).contains(&r) {
        register(uffd, r as u64, a[1]);
    }
    r
}

/// Makes the `brk` a program thread asked for on its behalf, and registers the pages the heap
/// grew by: the new break, as `brk` returns it. No heap.
pub fn brk(arg: u64, uffd: i32, register: fn(i32, u64, u64)) -> i64 {
    let old = syscall6(libc::SYS_brk, [0; 6]) as u64;
    let new = syscall6(libc::SYS_brk, [arg, 0, 0, 0, 0, 0]);
    let up = |x: u64| (x + 4095) & !4095;
    if up(new as u64) > up(old) {
        register(uffd, up(old), up(new as u64) - up(old));
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_of_the_filter_lands_inside_it_and_every_path_returns() {
        let prog = program(0x7f00_0000_1000, 0x7f00_0020_0000);
        for (i, ins) in prog.iter().enumerate() {
            if ins.code & 0x07 == libc::BPF_JMP as u16 {
                assert!(i + 1 + (ins.jt as usize) < PROGRAM_LEN, "jt of {i}");
                assert!(i + 1 + (ins.jf as usize) < PROGRAM_LEN, "jf of {i}");
            }
        }
        assert_eq!(prog[PROGRAM_LEN - 1].code & 0x07, libc::BPF_RET as u16);
        assert_eq!(prog[5].k, libc::SECCOMP_RET_ALLOW);
        assert_eq!(prog[14].k, libc::SECCOMP_RET_ALLOW);
        assert_eq!(prog[15].k, libc::SECCOMP_RET_USER_NOTIF);
    }
}
