//! The client against a fake agent that speaks the wire protocol: hello, requests and replies,
//! page rounding, errors, the C ABI's return values and a forked child's own connection.
//!
//! One test function: the C ABI reads `YONDER_AGENT_SOCK`, a process-wide setting.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::{
    ffi::c_void,
    io::{Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use yonder::{capi, Client, Error};

const API_MAGIC: u64 = 0x594f_4e44_4552_0003;
const READY: u64 = 1;
const REFUSED: u64 = 2;
const OP_REGISTER: u64 = 10;
const OP_UNREGISTER: u64 = 11;
const OP_PREFETCH: u64 = 12;
const OP_FLUSH: u64 = 13;

/// What the fake agent saw: hellos `(pid)` and requests `(pid of the connection, op, start, len)`.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Hello(u64),
    Request(u64, u64, u64, u64),
}

/// How the fake agent answers.
#[derive(Clone, Copy)]
enum Mode {
    /// READY, then `[op, errno]` with errno EINVAL for ranges starting at 0 and 0 otherwise;
    /// a range starting at `BAD_OP` is answered with the wrong op, at `CLOSE` by closing.
    Normal,
    /// REFUSED.
    Refuse,
    /// Closes the connection after reading the hello.
    Close,
}

const BAD_OP: u64 = 0x7000_0000_0000;
const CLOSE: u64 = 0x7100_0000_0000;

struct Fake {
    path: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn read_msg(s: &mut UnixStream) -> Option<Vec<u64>> {
    let mut w = [0u8; 8];
    s.read_exact(&mut w).ok()?;
    let n = u64::from_le_bytes(w);
    (0..n)
        .map(|_| {
            s.read_exact(&mut w).ok()?;
            Some(u64::from_le_bytes(w))
        })
        .collect()
}

fn send(s: &mut UnixStream, words: &[u64]) {
    let mut b = (words.len() as u64).to_le_bytes().to_vec();
    for w in words {
        b.extend_from_slice(&w.to_le_bytes());
    }
    let _ = s.write_all(&b);
}

fn serve(mut s: UnixStream, mode: Mode, seen: Arc<Mutex<Vec<Seen>>>) {
    let Some(hello) = read_msg(&mut s) else {
        return;
    };
    assert_eq!(hello.len(), 3, "hello {hello:?}");
    assert_eq!(hello[0], API_MAGIC);
    assert_eq!(hello[1], 1, "version");
    let pid = hello[2];
    seen.lock().unwrap().push(Seen::Hello(pid));
    match mode {
        Mode::Refuse => return send(&mut s, &[REFUSED]),
        Mode::Close => return,
        Mode::Normal => send(&mut s, &[READY]),
    }
    while let Some(req) = read_msg(&mut s) {
        let [op, start, len] = req[..] else {
            panic!("request {req:?}");
        };
        seen.lock()
            .unwrap()
            .push(Seen::Request(pid, op, start, len));
        match start {
            CLOSE => return,
            BAD_OP => send(&mut s, &[op + 1, 0]),
            0 => send(&mut s, &[op, libc::EINVAL as u64]),
            _ => send(&mut s, &[op, 0]),
        }
    }
}

impl Fake {
    fn start(name: &str, mode: Mode) -> Self {
        let path = std::env::temp_dir().join(format!(
            "yonder-api-test-{}-{name}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let seen = s2.clone();
                std::thread::spawn(move || serve(stream, mode, seen));
            }
        });
        Self { path, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn client_speaks_the_protocol() {
    let page = yonder::page_size() as u64;
    let me = u64::from(std::process::id());

    // Not under the agent: typed error in Rust, -ENOSYS in C.
    std::env::remove_var(yonder::SOCKET_ENV);
    assert!(matches!(Client::connect(), Err(Error::NotManaged)));
    assert!(!yonder::available());
    let mut buf = vec![7u8; 3 * page as usize];
    let p = buf.as_mut_ptr() as *mut c_void;
    assert_eq!(capi::yonder_available(), 0);
    assert_eq!(capi::yonder_register(p, 10), -libc::ENOSYS);
    assert_eq!(capi::yonder_unregister(p, 10), -libc::ENOSYS);
    assert_eq!(capi::yonder_prefetch(p, 10), -libc::ENOSYS);
    assert_eq!(capi::yonder_flush(p, 10), -libc::ENOSYS);

    // A socket path where nobody listens: an I/O error, the connect's errno in C.
    let nowhere = std::env::temp_dir().join(format!("yonder-api-test-{me}-nowhere.sock"));
    assert!(matches!(Client::connect_to(&nowhere), Err(Error::Io(_))));

    // Refused and closed hellos.
    let refusing = Fake::start("refuse", Mode::Refuse);
    assert!(matches!(
        Client::connect_to(&refusing.path),
        Err(Error::Refused)
    ));
    assert_eq!(refusing.seen(), [Seen::Hello(me)]);
    let closing = Fake::start("close", Mode::Close);
    assert!(matches!(
        Client::connect_to(&closing.path),
        Err(Error::Protocol(_))
    ));

    // Requests, rounded outward to pages.
    let fake = Fake::start("normal", Mode::Normal);
    let c = Client::connect_to(&fake.path).unwrap();
    let base = 0x5555_0000_0000u64;
    c.register((base + 100) as *const u8, page as usize)
        .unwrap();
    c.unregister(base as *const u8, 1).unwrap();
    c.prefetch((base + page - 1) as *const u8, 2).unwrap();
    c.flush(base as *const u8, 4 * page as usize).unwrap();
    c.flush(base as *const u8, 0).unwrap(); // empty: not sent
    assert!(matches!(
        c.flush(usize::MAX as *const u8, 2),
        Err(Error::InvalidRange { .. })
    ));
    let err = c.flush(std::ptr::null(), 1).unwrap_err();
    assert!(matches!(err, Error::Agent(libc::EINVAL)), "{err}");
    assert_eq!(err.errno(), libc::EINVAL);
    assert_eq!(
        fake.seen(),
        [
            Seen::Hello(me),
            Seen::Request(me, OP_REGISTER, base, 2 * page),
            Seen::Request(me, OP_UNREGISTER, base, page),
            Seen::Request(me, OP_PREFETCH, base, 2 * page),
            Seen::Request(me, OP_FLUSH, base, 4 * page),
            Seen::Request(me, OP_FLUSH, 0, page),
        ]
    );
    // A reply for another op: a protocol error, and the connection is not used again.
    assert!(matches!(
        c.flush(BAD_OP as *const u8, 1),
        Err(Error::Protocol(_))
    ));
    let err = c.flush(base as *const u8, 1).unwrap_err();
    assert_eq!(err.errno(), libc::ENOTCONN, "{err}");

    // Requests from several threads at once on one client are serialized.
    let c = Arc::new(Client::connect_to(&fake.path).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let addr = base + (t * 1000 + i + 1) * page;
                    c.flush(addr as *const u8, page as usize).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let flushes = fake
        .seen()
        .iter()
        .filter(|s| matches!(s, Seen::Request(_, OP_FLUSH, _, _)))
        .count();
    assert_eq!(flushes, 3 + 8 * 50);

    // The C ABI on the process-wide connection.
    let global = Fake::start("global", Mode::Normal);
    std::env::set_var(yonder::SOCKET_ENV, &global.path);
    let aligned = (p as u64 + page - 1) & !(page - 1);
    assert_eq!(capi::yonder_available(), 1);
    assert_eq!(capi::yonder_register(p, 10), 0);
    assert_eq!(capi::yonder_unregister(p, 10), 0);
    assert_eq!(capi::yonder_prefetch(aligned as *mut c_void, 1), 0);
    assert_eq!(capi::yonder_flush(aligned as *mut c_void, 0), 0);
    assert_eq!(capi::yonder_flush(std::ptr::null_mut(), 1), -libc::EINVAL);
    assert_eq!(
        capi::yonder_flush(usize::MAX as *mut c_void, 2),
        -libc::EINVAL
    );
    // The agent closing the connection: an error, and the next call connects again.
    assert_eq!(
        capi::yonder_flush(CLOSE as *mut c_void, 1),
        -libc::ECONNRESET
    );
    assert_eq!(capi::yonder_flush(aligned as *mut c_void, 1), 0);
    let hellos = global
        .seen()
        .iter()
        .filter(|s| matches!(s, Seen::Hello(_)))
        .count();
    assert_eq!(hellos, 2, "{:?}", global.seen());

    // A forked child opens a connection of its own with its own pid.
    // SAFETY: the child only uses this library and then leaves with _exit.
    let child = unsafe { libc::fork() };
    assert!(child >= 0);
    if child == 0 {
        let rc = capi::yonder_flush(aligned as *mut c_void, 1);
        // SAFETY: _exit(2) ends the child without running the test harness's destructors.
        unsafe { libc::_exit(if rc == 0 { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    assert_eq!(capi::yonder_flush(aligned as *mut c_void, 1), 0);
    let seen = global.seen();
    let child = child as u64;
    assert!(seen.contains(&Seen::Hello(child)), "{seen:?}");
    assert!(
        seen.contains(&Seen::Request(child, OP_FLUSH, aligned, page)),
        "{seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&Seen::Request(me, OP_FLUSH, aligned, page)),
        "the parent keeps its own connection"
    );
    drop(buf);
}
