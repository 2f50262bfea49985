//! The workload's `mmap` and `brk` calls that the shim's seccomp filter hands to the agent: each
//! is made by the helper of the process that called, which registers the new memory before the
//! caller gets it (docs/node-agent.md, "New memory"; the shim's `intercept.rs`).

use std::{os::fd::OwnedFd, rc::Rc, time::Duration};

use tokio::io::unix::AsyncFd;
use tracing::debug;

use super::{
    process::Proc,
    shim_link::{read_words, write_words},
    Group,
};
use crate::{
    procfs,
    seccomp::{self, Answer, Call},
    shim_proto as proto,
};

/// How long a call may wait for the helper's connection (busy with an eviction) before the caller
/// is let through to make it itself.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the calls of the filter's listener and answers each, until no process uses the filter.
pub(super) async fn serve(g: Rc<Group>, listener: Rc<AsyncFd<OwnedFd>>) {
    loop {
        let Ok(mut guard) = listener.readable().await else {
            return;
        };
        let call = match seccomp::receive(listener.get_ref()) {
            Ok(Some(call)) => call,
            Ok(None) => {
                guard.clear_ready();
                continue;
            }
            Err(_) => return, // no process uses the filter any more
        };
        drop(guard);
        match caller(&g, &call) {
            Some(p) => {
                tokio::task::spawn_local(make_call(p, listener.clone(), call));
            }
            None => {
                g.stats.borrow_mut().calls_let_through += 1;
                seccomp::answer(listener.get_ref(), call.id, Answer::LetThrough);
            }
        }
    }
}

/// The managed process whose helper can make `call` for its caller: none for a process the agent
/// does not manage (or not yet), and for the helper's own calls (those of an `exec`'d program,
/// whose shim the inherited filter does not recognise).
fn caller(g: &Group, call: &Call) -> Option<Rc<Proc>> {
    let tgid = procfs::tgid(call.tid)?;
    let p = g
        .procs
        .borrow()
        .iter()
        .find(|p| p.pid.get() == tgid && !p.removed.get() && p.helper_up.get())
        .cloned()?;
    let code = match p.shim_code.get() {
        Some(c) => c,
        None => {
            let c = procfs::code_of(tgid, "libyonder_shim").unwrap_or((0, 0));
            p.shim_code.set(Some(c));
            c
        }
    };
    let from_helper = code.0 <= call.ip && call.ip < code.1;
    (!from_helper).then_some(p)
}

/// Has the helper of `p` make `call` and answers with its result; lets the caller make it
/// itself if the helper cannot (the process is ending).
async fn make_call(p: Rc<Proc>, listener: Rc<AsyncFd<OwnedFd>>, call: Call) {
    let started = std::time::Instant::now();
    let answer = match through_helper(&p, &call).await {
        Some(r) if (-4095..0).contains(&r) => Answer::Failed(-r as i32),
        Some(r) => {
            if call.nr == libc::SYS_mmap {
                p.mapped(r as u64, call.args[1]);
            } else {
                p.moved_break(r as u64);
            }
            Answer::Done(r)
        }
        None => Answer::LetThrough,
    };
    {
        let mut st = p.g.stats.borrow_mut();
        if answer == Answer::LetThrough {
            st.calls_let_through += 1;
        } else {
            st.calls_made += 1;
        }
    }
    seccomp::answer(listener.get_ref(), call.id, answer);
    debug!(nr = call.nr, ?answer, took = ?started.elapsed(), "call made");
}

/// Sends `call` to the helper of `p` and reads its raw result. Only the wait for the helper's
/// connection is bounded: once the request is sent, the helper makes the call whatever happens,
/// so the caller must not make it again, and cancelling the exchange would drop the connection
/// (every later eviction of the process would wait for it forever, and the helper would stop
/// the process when it saw it closed).
async fn through_helper(p: &Rc<Proc>, call: &Call) -> Option<i64> {
    let mut shim = tokio::time::timeout(CALL_TIMEOUT, p.take_shim())
        .await
        .ok()??;
    let id = p.g.next_drop_id.get() + 1;
    p.g.next_drop_id.set(id);
    let words: Vec<u64> = if call.nr == libc::SYS_mmap {
        let mut w = vec![proto::MAP, id];
        w.extend(call.args);
        w
    } else if call.nr == libc::SYS_brk {
        vec![proto::BRK, id, call.args[0]]
    } else {
        *p.shim.borrow_mut() = Some(shim);
        return None;
    };
    let reply = match write_words(&mut shim, &words).await {
        Ok(()) => read_words(&mut shim).await,
        Err(e) => Err(e),
    };
    *p.shim.borrow_mut() = Some(shim);
    match reply {
        Ok(r) if r.len() == 3 && r[0] == proto::MAPPED && r[1] == id => Some(r[2] as i64),
        other => {
            debug!(
                pid = p.pid.get(),
                "the helper did not make a call: {other:?}"
            );
            None
        }
    }
}
