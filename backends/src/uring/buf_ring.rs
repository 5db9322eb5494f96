//! A provided-buffer ring: `count` buffers of `size` bytes that the kernel picks from when
//! data arrives. The entry array is page-aligned memory shared with the kernel.
//!
//! A buffer the kernel hands us is a [`RingBuf`] handle, and the handle is the only way
//! back: dropping it puts the buffer back in the ring. So a buffer returns exactly once,
//! wherever its last use is — after the send that echoes it, or when its connection is
//! closed — and no code path can forget it or return it twice. Returned buffers become
//! visible to the kernel at the next [`BufRing::publish`], once per loop turn.
//!
//! Public so its recycle path can be benchmarked on its own.

use std::alloc::{self, Layout};
use std::cell::Cell;
use std::io;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// `IOU_PBUF_RING_INC` of `<linux/io_uring.h>` (the io-uring crate keeps its copy private).
const IOU_PBUF_RING_INC: u16 = 2;

/// The buffer group every worker registers its ring as.
pub const BUF_GROUP: u16 = 0;

struct Inner {
    entries: NonNull<BufRingEntry>,
    layout: Layout,
    pool: Box<[u8]>,
    size: usize,
    mask: u16,
    count: u16,
    tail: Cell<u16>,
    /// Buffers handed to us (live handles).
    out: Cell<u16>,
    /// Buffers went back since the last publish.
    dirty: Cell<bool>,
    /// Which buffer each ring entry holds, and which entry each buffer was last put in:
    /// a receive bundle names only its first buffer, and the rest are the entries after
    /// it, which hold whatever buffers went back in that order.
    entry_bid: Box<[Cell<u16>]>,
    bid_entry: Box<[Cell<u16>]>,
}

/// A worker's provided-buffer ring.
pub struct BufRing(Rc<Inner>);

/// One buffer the kernel filled; goes back to the ring when dropped.
pub struct RingBuf {
    bid: u16,
    ring: Rc<Inner>,
}

impl BufRing {
    /// Allocates the buffers and registers them with the ring as [`BUF_GROUP`];
    /// `incremental`: the kernel consumes each buffer a receive at a time
    /// (`IOU_PBUF_RING_INC`), and a completion's `IORING_CQE_F_BUF_MORE` says it kept the
    /// buffer for the next receive.
    pub fn new(sub: &Submitter<'_>, count: u16, size: usize, incremental: bool) -> io::Result<BufRing> {
        Self::with_group(sub, count, size, incremental, BUF_GROUP)
    }

    /// [`BufRing::new`] as buffer group `group`.
    pub fn with_group(
        sub: &Submitter<'_>,
        count: u16,
        size: usize,
        incremental: bool,
        group: u16,
    ) -> io::Result<BufRing> {
        if !count.is_power_of_two() || size == 0 || size > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a buffer ring needs a power-of-two count and a size that fits u32 (got {count} x {size})"),
            ));
        }
        let layout = Layout::from_size_align(usize::from(count) * std::mem::size_of::<BufRingEntry>(), 4096)
            .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
        let entries = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let inner = Inner {
            entries,
            layout,
            pool: vec![0u8; usize::from(count) * size].into_boxed_slice(),
            size,
            mask: count - 1,
            count,
            tail: Cell::new(0),
            // Every buffer starts "out" and is handed to the kernel by the loop below.
            out: Cell::new(count),
            dirty: Cell::new(false),
            entry_bid: (0..count).map(|_| Cell::new(0)).collect(),
            bid_entry: (0..count).map(|_| Cell::new(0)).collect(),
        };
        let flags = if incremental { IOU_PBUF_RING_INC } else { 0 };
        // SAFETY: `entries` is page-aligned, zeroed, `count` entries long, and lives until
        // `Inner` drops, which happens only after the group is unregistered or the ring is
        // gone (a worker that cannot unregister leaks the ring instead).
        unsafe { sub.register_buf_ring_with_flags(entries.as_ptr() as u64, count, group, flags)? };
        for bid in 0..count {
            inner.recycle(bid);
        }
        let ring = BufRing(Rc::new(inner));
        ring.publish();
        Ok(ring)
    }

    /// A completion handed us buffer `bid`: ours until the handle drops.
    pub fn take(&self, bid: u16) -> RingBuf {
        let out = self.0.out.get();
        debug_assert!(out < self.0.count, "buffer {bid} handed out while all {out} were out");
        self.0.out.set(out + 1);
        RingBuf { bid, ring: Rc::clone(&self.0) }
    }

    /// A bundle completion handed us `n` buffers, starting with `first`: the buffers of
    /// the `n` ring entries from the one `first` was put in.
    pub fn take_bundle(&self, first: u16, n: usize, out: &mut Vec<RingBuf>) {
        let inner = &self.0;
        let start = inner.bid_entry[usize::from(first & inner.mask)].get();
        for i in 0..n {
            let entry = start.wrapping_add(i as u16) & inner.mask;
            out.push(self.take(inner.entry_bid[usize::from(entry)].get()));
        }
    }

    /// Bytes per buffer.
    pub fn buffer_size(&self) -> usize {
        self.0.size
    }

    /// The memory every buffer lies in, for registering it as one fixed buffer.
    pub fn region(&self) -> libc::iovec {
        libc::iovec { iov_base: self.0.pool.as_ptr().cast_mut().cast(), iov_len: self.0.pool.len() }
    }

    /// Buffers the kernel can pick from (once published).
    pub fn available(&self) -> usize {
        usize::from(self.0.count - self.0.out.get())
    }

    /// Makes returned buffers visible to the kernel.
    pub fn publish(&self) {
        if !self.0.dirty.replace(false) {
            return;
        }
        // SAFETY: the tail field is the `resv` of the first entry, a u16 inside our
        // allocation; the kernel reads it with acquire semantics, so a release store makes
        // the entries written before it visible.
        unsafe {
            let tail = BufRingEntry::tail(self.0.entries.as_ptr()) as *const AtomicU16;
            (*tail).store(self.0.tail.get(), Ordering::Release);
        }
    }
}

impl RingBuf {
    /// The start of the buffer.
    pub fn ptr(&self) -> *const u8 {
        self.ring.ptr(self.bid)
    }
}

impl Drop for RingBuf {
    fn drop(&mut self) {
        self.ring.recycle(self.bid);
    }
}

impl Inner {
    fn ptr(&self, bid: u16) -> *const u8 {
        self.pool[usize::from(bid) * self.size..].as_ptr()
    }

    /// Puts buffer `bid` back at the tail (visible after the next publish).
    fn recycle(&self, bid: u16) {
        let tail = self.tail.get();
        let entry = tail & self.mask;
        self.entry_bid[usize::from(entry)].set(bid);
        self.bid_entry[usize::from(bid & self.mask)].set(entry);
        // SAFETY: `tail & mask` indexes inside the `mask + 1` entries we allocated, and the
        // kernel only reads entries between its head and the published tail, never this one.
        let e = unsafe { &mut *self.entries.as_ptr().add(usize::from(tail & self.mask)) };
        e.set_addr(self.ptr(bid) as u64);
        e.set_len(self.size as u32);
        e.set_bid(bid);
        self.tail.set(tail.wrapping_add(1));
        let out = self.out.get();
        debug_assert!(out > 0, "buffer {bid} returned while none was out");
        self.out.set(out - 1);
        self.dirty.set(true);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: allocated in `BufRing::new` with this layout.
        unsafe { alloc::dealloc(self.entries.as_ptr().cast(), self.layout) };
    }
}
