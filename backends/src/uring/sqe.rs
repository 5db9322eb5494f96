//! Fields of a submission entry that the io-uring crate's builders do not have yet.

use io_uring::squeue::Entry;

/// `entry`, a multishot receive, capped at `cap` bytes (`sqe->optlen`, Linux 6.17): the
/// kernel ends it (a completion without `F_MORE`) once that many arrived. The io-uring
/// crate's builder has no field for it.
pub fn with_recv_cap(mut entry: Entry, cap: u32) -> Entry {
    const _: () = assert!(std::mem::size_of::<Entry>() == 64, "an SQE is 64 bytes");
    // SAFETY: `Entry` is `#[repr(C)]` around the kernel's 64-byte `io_uring_sqe`, whose
    // bytes 44..48 are one aligned u32 (`splice_fd_in` / `file_index` / `optlen`), unused by
    // a receive otherwise; the write stays inside the entry we own.
    unsafe { std::ptr::addr_of_mut!(entry).cast::<u8>().add(44).cast::<u32>().write(cap) };
    entry
}
