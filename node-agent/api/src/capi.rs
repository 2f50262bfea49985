//! The C ABI of `libyonder.so`, declared in `include/yonder.h`.
//!
//! Every function uses the process-wide connection (opened on first use, a new one in a forked
//! child) and returns 0 on success or a negative errno: `-ENOSYS` when the program does not run
//! under the agent (or the agent does not manage this process), the agent's errno for a refused
//! request, `-EINVAL` for a range that wraps around, `-EPROTO`, `-ECONNRESET` or another
//! negative errno when the connection to the agent fails. No function panics across the ABI: a
//! panic inside becomes `-EIO`.

use std::{
    ffi::{c_int, c_void},
    panic::{catch_unwind, AssertUnwindSafe},
};

use crate::Error;

/// 0 for success, else the negated errno of the error.
fn status(r: Result<(), Error>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => -e.errno(),
    }
}

/// Runs `f`, turning a panic into `-EIO` rather than unwinding into C.
fn guarded(f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(-libc::EIO)
}

/// `int yonder_available(void)`: 1 if the program runs under the agent and the agent accepted
/// its client connection, else 0.
#[no_mangle]
pub extern "C" fn yonder_available() -> c_int {
    guarded(|| c_int::from(crate::available()))
}

/// `int yonder_register(void *addr, size_t len)`: manage the range from now on.
#[no_mangle]
pub extern "C" fn yonder_register(addr: *mut c_void, len: usize) -> c_int {
    guarded(|| status(crate::register(addr as *const u8, len)))
}

/// `int yonder_unregister(void *addr, size_t len)`: bring the range back and keep it local.
#[no_mangle]
pub extern "C" fn yonder_unregister(addr: *mut c_void, len: usize) -> c_int {
    guarded(|| status(crate::unregister(addr as *const u8, len)))
}

/// `int yonder_prefetch(void *addr, size_t len)`: fetch the range's evicted pages ahead of use.
#[no_mangle]
pub extern "C" fn yonder_prefetch(addr: *mut c_void, len: usize) -> c_int {
    guarded(|| status(crate::prefetch(addr as *const u8, len)))
}

/// `int yonder_flush(void *addr, size_t len)`: evict the range's resident pages now.
#[no_mangle]
pub extern "C" fn yonder_flush(addr: *mut c_void, len: usize) -> c_int {
    guarded(|| status(crate::flush(addr as *const u8, len)))
}
