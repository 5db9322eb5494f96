//! The start gate: every connection is made first; then the measured phase starts for
//! all of them at once.

use std::sync::{Condvar, Mutex, OnceLock, RwLock, RwLockWriteGuard};
use std::time::Instant;

/// Threads report ready and wait; the main thread opens the gate for all at once.
///
/// The gate itself is a write-locked `RwLock`: releasing the write lock wakes every waiting
/// reader together. (A condvar would hand its mutex to thousands of threads one at a time,
/// so the last would start hundreds of milliseconds after the first.)
///
/// Only the last thread to arrive wakes the main thread. Every wake-up is a `futex_wake`,
/// which walks the waiters of its hash bucket, and thousands of threads are parked on the
/// door: with a notify per arrival, the seed's client at 4000 connections spent 0.2–0.6 s
/// more CPU in `futex_wake` itself in every other slice of a process (21 % of its samples
/// there, 1 % in the others) and stretched those slices by as much. As we read it, a
/// slice's gate is allocated afresh at one of two addresses in turn, and at one of them
/// its futex shares the door's bucket.
pub struct Gate {
    /// Threads that will arrive.
    expected: usize,
    ready: Mutex<usize>,
    ready_cv: Condvar,
    door: RwLock<()>,
    /// When the gate opened; set before it opens, read lock-free after.
    opened_at: OnceLock<Instant>,
}

impl Gate {
    /// A gate for `expected` threads.
    pub fn new(expected: usize) -> Gate {
        Gate {
            expected,
            ready: Mutex::new(0),
            ready_cv: Condvar::new(),
            door: RwLock::new(()),
            opened_at: OnceLock::new(),
        }
    }

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

    /// The threads it waits for.
    pub fn expected(&self) -> usize {
        self.expected
    }

    /// Reports ready, waits for the gate, and returns when it opened.
    pub fn arrive_and_wait(&self) -> Instant {
        let all_here = {
            let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
            *ready += 1;
            *ready >= self.expected
        };
        if all_here {
            self.ready_cv.notify_one();
        }
        drop(self.door.read().unwrap_or_else(|p| p.into_inner()));
        self.opened_at.get().copied().unwrap_or_else(Instant::now)
    }

    /// Waits until every expected thread is ready.
    pub fn wait_for_all(&self) {
        let mut g = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        while *g < self.expected {
            g = self.ready_cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}
