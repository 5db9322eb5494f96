//! Detached OS threads with a small stack, made with `pthread_create` directly.
//!
//! Why not `std::thread`: every thread std starts also maps an alternate signal stack and
//! its guard page (for its stack-overflow message) from *inside* the new thread, where a
//! failure cannot be returned — it aborts the process. At the machine's map limit
//! (vm.max_map_count; a thread-per-connection server reaches it at about 16,000 threads
//! here) that turned "no thread for this connection" into a crash. A pthread made here
//! costs two maps (its stack and guard page) instead of four, and every failure comes
//! back from [`spawn_detached`] as an error the caller can turn into a `rejected` row. The
//! price: a stack overflow in such a thread is a plain SIGSEGV, without std's message.

use std::ffi::c_void;
use std::io;
use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A pthread function's return: 0, or the error number itself (pthreads do not use errno).
fn check(ret: i32) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(ret))
    }
}

/// Runs `job` on a new detached thread with a stack of `stack_bytes` (at least the
/// platform minimum). Errors are those of `pthread_create`: EAGAIN at a thread, map or
/// memory limit.
pub fn spawn_detached(stack_bytes: usize, job: Job) -> io::Result<()> {
    let mut attr = MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: pthread_attr_init initialises the attribute object it is given.
    check(unsafe { libc::pthread_attr_init(attr.as_mut_ptr()) })?;
    let started = create(attr.as_mut_ptr(), stack_bytes, job);
    // SAFETY: `attr` was initialised above and is destroyed exactly once; a created thread
    // does not keep a reference to it.
    unsafe { libc::pthread_attr_destroy(attr.as_mut_ptr()) };
    started
}

fn create(attr: *mut libc::pthread_attr_t, stack_bytes: usize, job: Job) -> io::Result<()> {
    let stack = stack_bytes.max(libc::PTHREAD_STACK_MIN);
    // SAFETY: `attr` points to an initialised attribute object owned by the caller.
    check(unsafe { libc::pthread_attr_setstacksize(attr, stack) })?;
    // SAFETY: as above.
    check(unsafe { libc::pthread_attr_setdetachstate(attr, libc::PTHREAD_CREATE_DETACHED) })?;
    // The job crosses into the new thread as a raw pointer to a boxed box (a thin pointer).
    let arg = Box::into_raw(Box::new(job)).cast::<c_void>();
    let mut tid = MaybeUninit::<libc::pthread_t>::uninit();
    // SAFETY: `attr` is initialised, `start` has the signature pthreads expects, and `arg`
    // stays valid until `start` takes it back (or we do, below, if no thread starts).
    let ret = unsafe { libc::pthread_create(tid.as_mut_ptr(), attr, start, arg) };
    if ret != 0 {
        // SAFETY: no thread was started, so `arg` is still ours alone.
        drop(unsafe { Box::from_raw(arg.cast::<Job>()) });
    }
    check(ret)
}

extern "C" fn start(arg: *mut c_void) -> *mut c_void {
    // SAFETY: `arg` came from Box::into_raw in `create` and is taken back exactly once,
    // here, by the one thread it was handed to.
    let job = unsafe { Box::from_raw(arg.cast::<Job>()) };
    // A panic must not unwind into C; the panic hook has already printed it.
    let _ = catch_unwind(AssertUnwindSafe(job));
    std::ptr::null_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spawned_job_runs_and_a_panic_stays_in_its_thread() {
        let (tx, rx) = std::sync::mpsc::channel();
        spawn_detached(64 * 1024, Box::new(move || tx.send(7).unwrap())).unwrap();
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)), Ok(7));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        spawn_detached(
            64 * 1024,
            Box::new(move || {
                let _keep = tx;
                panic!("on purpose: this test checks that a panic stays in its thread");
            }),
        )
        .unwrap();
        // The sender is dropped during the unwind: the thread ended, the process did not.
        assert!(rx.recv_timeout(std::time::Duration::from_secs(5)).is_err());
    }
}
