//! The start gate: every connection is made first; then the measured phase starts for
//! all of them at once.

use std::sync::{Condvar, Mutex, OnceLock, RwLock, RwLockWriteGuard};
use std::time::Instant;

/// Threads report ready and wait; the main thread opens the gate for all at once.
///
/// The gate itself is a write-locked `RwLock`: releasing the write lock wakes every waiting
/// reader together. (A condvar would hand its mutex to thousands of threads one at a time,
/// so the last would start hundreds of milliseconds after the first.)
#[derive(Default)]
pub struct Gate {
    ready: Mutex<usize>,
    ready_cv: Condvar,
    door: RwLock<()>,
    /// When the gate opened; set before it opens, read lock-free after.
    opened_at: OnceLock<Instant>,
}

impl Gate {
    /// Closes the gate (before any thread can reach it); `open` takes the guard back.
    pub fn close(&self) -> RwLockWriteGuard<'_, ()> {
        self.door.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens it for every waiting thread; returns when it opened.
    pub fn open(&self, closed: RwLockWriteGuard<'_, ()>) -> Instant {
        let t0 = Instant::now();
        let _ = self.opened_at.set(t0);
        drop(closed);
        t0
    }

    /// Reports ready, waits for the gate, and returns when it opened.
    pub fn arrive_and_wait(&self) -> Instant {
        *self.ready.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.ready_cv.notify_one();
        drop(self.door.read().unwrap_or_else(|p| p.into_inner()));
        self.opened_at.get().copied().unwrap_or_else(Instant::now)
    }

    /// Waits until `n` threads are ready.
    pub fn wait_for(&self, n: usize) {
        let mut g = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        while *g < n {
            g = self.ready_cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}
