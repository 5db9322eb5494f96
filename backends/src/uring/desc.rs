//! How a connection's requests name its socket: its regular descriptor, or a *direct*
//! descriptor — a slot in the worker ring's own file table, which spares the kernel a
//! descriptor-table lookup (and its reference count) on every request.
//!
//! A connection arrives as a regular descriptor, because the acceptor learns the peer
//! address from it (a direct descriptor has no `getpeername`, and the log needs the peer).
//! With direct descriptors on, the worker installs it in its table with one
//! `IORING_OP_FILES_UPDATE` (the kernel picks the slot) and, once installed, closes the
//! regular one with `IORING_OP_CLOSE`: two submission entries, no syscall. Requests already
//! armed on the regular descriptor hold their own reference to the socket and go on;
//! every later request names the slot, and the connection ends with a close of the slot.
//! If the table is full the connection keeps its regular descriptor.

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};

use io_uring::{opcode, squeue, types};

/// `IORING_FILE_INDEX_ALLOC`: "any free slot", written back into the update's array.
const FILE_INDEX_ALLOC: i32 = -1;

/// The socket as a request names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Fd(RawFd),
    Fixed(u32),
}

/// Builds a request for a connection's socket, whichever way it is named: `$fd` is a
/// `types::Fd` or a `types::Fixed` in `$build`.
macro_rules! on_socket {
    ($target:expr, |$fd:ident| $build:expr) => {
        match $target {
            $crate::uring::desc::Target::Fd(raw) => {
                let $fd = io_uring::types::Fd(raw);
                $build
            }
            $crate::uring::desc::Target::Fixed(slot) => {
                let $fd = io_uring::types::Fixed(slot);
                $build
            }
        }
    };
}
pub(crate) use on_socket;

/// Where a connection's descriptor stands.
pub enum Desc {
    /// A regular descriptor, ours until the close request takes it.
    Plain(OwnedFd),
    /// Being installed in the ring's file table; the kernel writes the slot it picked into
    /// `slot` (boxed: it must stay put until the request completes).
    Installing { fd: OwnedFd, slot: Box<i32> },
    /// A slot of the ring's file table; the regular descriptor is closed.
    Fixed(u32),
    /// Handed to the close request.
    Closed,
}

impl Desc {
    /// How requests name the socket now.
    pub fn target(&self) -> Target {
        match self {
            Desc::Plain(fd) | Desc::Installing { fd, .. } => Target::Fd(fd.as_raw_fd()),
            Desc::Fixed(slot) => Target::Fixed(*slot),
            Desc::Closed => Target::Fd(-1),
        }
    }

    pub fn installing(&self) -> bool {
        matches!(self, Desc::Installing { .. })
    }

    /// Starts installing a regular descriptor in the file table: the request to submit.
    pub fn install(&mut self) -> Option<squeue::Entry> {
        let Desc::Plain(_) = self else { return None };
        let Desc::Plain(fd) = std::mem::replace(self, Desc::Closed) else { return None };
        let mut slot = Box::new(fd.as_raw_fd());
        let e = opcode::FilesUpdate::new(&mut *slot as *mut i32 as *const RawFd, 1).offset(FILE_INDEX_ALLOC).build();
        *self = Desc::Installing { fd, slot };
        Some(e)
    }

    /// The install completed with `res` (1: installed). Returns the request that closes the
    /// regular descriptor once the slot holds the socket.
    pub fn installed(&mut self, res: i32) -> Option<squeue::Entry> {
        let Desc::Installing { .. } = self else { return None };
        let Desc::Installing { fd, slot } = std::mem::replace(self, Desc::Closed) else { return None };
        if res == 1 && *slot >= 0 {
            *self = Desc::Fixed(*slot as u32);
            Some(opcode::Close::new(types::Fd(fd.into_raw_fd())).build())
        } else {
            // The table is full (or the kernel refused): keep the regular descriptor.
            *self = Desc::Plain(fd);
            None
        }
    }

    /// The request that closes the socket; the descriptor is the request's from here on.
    pub fn close(&mut self) -> Option<squeue::Entry> {
        match std::mem::replace(self, Desc::Closed) {
            Desc::Plain(fd) => Some(opcode::Close::new(types::Fd(fd.into_raw_fd())).build()),
            Desc::Fixed(slot) => Some(opcode::Close::new(types::Fixed(slot)).build()),
            // Never with the install in flight (it counts as in flight); keep it put.
            d @ Desc::Installing { .. } => {
                *self = d;
                None
            }
            Desc::Closed => None,
        }
    }

    /// The regular descriptor, if the connection still has one (a slot closes with its
    /// ring's file table).
    pub fn into_fd(self) -> Option<OwnedFd> {
        match self {
            Desc::Plain(fd) | Desc::Installing { fd, .. } => Some(fd),
            Desc::Fixed(_) | Desc::Closed => None,
        }
    }
}
