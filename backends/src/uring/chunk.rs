//! Where a connection's echo bytes live between the receive that brought them and the
//! send that returns them: in a provided buffer of its own, in one shared with other
//! holders, or in the connection's own buffer.

use std::rc::Rc;

use super::buf_ring::RingBuf;

/// Where queued echo bytes live.
pub enum Buf {
    /// A provided buffer, returned to the ring when the chunk is dropped.
    Ring(RingBuf),
    /// A provided buffer with more than one holder: zero-copy sends that carried part of
    /// it, or (incremental consumption) other receives' data in it and the worker while
    /// the kernel still fills it; returned when the last holder drops it.
    Shared(Rc<RingBuf>),
    /// The connection's own buffer (no buffer ring).
    Own,
}

impl Buf {
    /// A second handle on this buffer, for a zero-copy send that carried part of it.
    pub fn share(&mut self) -> Option<Buf> {
        if let Buf::Ring(_) = self {
            let Buf::Ring(b) = std::mem::replace(self, Buf::Own) else { return None };
            *self = Buf::Shared(Rc::new(b));
        }
        match self {
            Buf::Shared(rc) => Some(Buf::Shared(Rc::clone(rc))),
            _ => None,
        }
    }
}

/// What a receive completion filled, on its way from the worker to the connection.
#[derive(Default)]
pub struct Filled {
    /// Whole buffers, in order: one, or a bundle's several.
    pub bufs: Vec<RingBuf>,
    /// With incremental consumption: the buffer the data lies in and where it starts.
    pub part: Option<(Rc<RingBuf>, u32)>,
}

impl Filled {
    /// Lets go of whatever is left: a connection that is gone returns its buffers so.
    pub fn clear(&mut self) {
        self.bufs.clear();
        self.part = None;
    }
}

/// Echo bytes waiting to be sent: `buf[off..len]`.
pub struct Chunk {
    pub buf: Buf,
    pub off: u32,
    pub len: u32,
}
