//! Counters a running server shares with the process that measures it, without waking it.
//!
//! A sweep that alternates short slices between servers needs each server's syscalls per
//! slice, not just its total at exit. The sweep makes a small memory file (`memfd`), maps
//! it, and hands the descriptor to the server, which maps the same pages: every server
//! thread adds its new syscalls to a slot once per event-loop turn (one relaxed atomic add
//! a turn, not one per syscall), and the sweep sums the slots at each slice boundary. The
//! server is never asked anything, so reading the counters costs it nothing.
//!
//! Slots are a cache line apart, so threads on different CPUs do not share a line; a
//! thread uses slot `id % SLOTS`, and threads sharing a slot add to it atomically.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{cvt, owned};

/// Slots in the mapping.
pub const SLOTS: usize = 64;
/// Bytes between slots: one cache line.
const STRIDE: usize = 64;
/// The mapping's size: one page.
const BYTES: usize = SLOTS * STRIDE;

/// A mapping of shared counters; see the module docs. Without a mapping (a server nobody
/// measures live) adds go to private memory and cost the same.
pub struct LiveCounters {
    base: NonNull<u8>,
    /// Whether `base` is our mmap (unmapped on drop) rather than the private slots.
    mapped: bool,
    /// Keeps the private slots alive: `base` points into them when not mapped.
    _private: Option<Box<[AtomicU64]>>,
}

// SAFETY: the memory is only ever accessed through `AtomicU64`s, which may be shared and
// sent between threads; the mapping lives as long as the value.
unsafe impl Send for LiveCounters {}
// SAFETY: as above.
unsafe impl Sync for LiveCounters {}

impl std::fmt::Debug for LiveCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiveCounters({} syscalls, {})", self.total(), if self.mapped { "shared" } else { "private" })
    }
}

impl LiveCounters {
    /// Counters in this process's own memory: nobody else reads them.
    pub fn private() -> LiveCounters {
        let slots: Box<[AtomicU64]> = (0..SLOTS * STRIDE / 8).map(|_| AtomicU64::new(0)).collect();
        let base = NonNull::from(&slots[0]).cast::<u8>();
        LiveCounters { base, mapped: false, _private: Some(slots) }
    }

    /// A new zeroed shared mapping and the descriptor to hand to the server.
    pub fn create() -> io::Result<(LiveCounters, OwnedFd)> {
        // SAFETY: the name is a NUL-terminated literal; MFD_CLOEXEC so only the child we
        // hand it to on purpose (by dup2 before exec) inherits it.
        let fd = owned(cvt(unsafe { libc::memfd_create(c"ringbench-counters".as_ptr(), libc::MFD_CLOEXEC) })?);
        // SAFETY: plain integer arguments on a descriptor we own.
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), BYTES as libc::off_t) })?;
        Ok((Self::map(fd.as_fd())?, fd))
    }

    /// Maps the counters the measuring process made (`--counters-fd`).
    pub fn open(fd: BorrowedFd<'_>) -> io::Result<LiveCounters> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: `st` is a writable stat buffer.
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
        // SAFETY: zeroed and filled by the kernel; any bit pattern of stat is valid.
        let size = unsafe { st.assume_init() }.st_size;
        if size < BYTES as libc::off_t {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("counters descriptor holds {size} bytes, fewer than the {BYTES} needed"),
            ));
        }
        Self::map(fd)
    }

    fn map(fd: BorrowedFd<'_>) -> io::Result<LiveCounters> {
        // SAFETY: a fresh shared mapping of BYTES of a file at least that long; we check
        // the result against MAP_FAILED before using it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(LiveCounters { base, mapped: true, _private: None })
    }

    fn slot(&self, i: usize) -> &AtomicU64 {
        // SAFETY: `i % SLOTS * STRIDE` is inside the BYTES-long, page-aligned mapping (or
        // the private slots), 8-byte aligned, and only ever accessed atomically.
        unsafe { &*self.base.as_ptr().add(i % SLOTS * STRIDE).cast::<AtomicU64>() }
    }

    /// Adds `n` syscalls made by thread `id`.
    #[inline]
    pub fn add(&self, id: usize, n: u64) {
        self.slot(id).fetch_add(n, Ordering::Relaxed);
    }

    /// Every syscall published so far.
    pub fn total(&self) -> u64 {
        (0..SLOTS).map(|i| self.slot(i).load(Ordering::Relaxed)).sum()
    }
}

impl Drop for LiveCounters {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: the mapping we made in `map`, of BYTES; nothing refers to it after this.
            unsafe { libc::munmap(self.base.as_ptr().cast(), BYTES) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_one_mapping_adds_the_other_sees() {
        let (reader, fd) = LiveCounters::create().unwrap();
        let writer = LiveCounters::open(fd.as_fd()).unwrap();
        writer.add(0, 5);
        writer.add(SLOTS + 3, 7);
        writer.add(3, 1);
        assert_eq!(reader.total(), 13);
        let private = LiveCounters::private();
        private.add(1, 2);
        assert_eq!(private.total(), 2);
    }
}
