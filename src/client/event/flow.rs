//! Requests in flight on one connection of the event engine, for every workload: they
//! leave in order, each with the payload of its connection and number, up to the
//! workload's depth at once (1 for rr, crr and the idle crowd's last echo; D for
//! `pipeline:D`; window ÷ size for `stream`), and their echoes are verified in order,
//! byte for byte, across any split of reads and writes.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;
use std::time::Instant;

use super::super::load::Next;
use super::super::payload::{fill_payload, first_difference, mismatch};
use super::{Engine, Phase};
use crate::workload::Workload;

/// What is in flight on one connection.
pub(super) struct Flow {
    /// Requests written whole or in part and not yet echoed whole, oldest first: their
    /// numbers and when they left.
    pub(super) out: VecDeque<(u64, Instant)>,
    /// The newest request's payload, and how much of it is written.
    wbuf: Vec<u8>,
    written: usize,
    /// The oldest request's payload, and how much of its echo is back and verified.
    rbuf: Vec<u8>,
    pub(super) echoed: usize,
    /// The last request sent, for the load to say what follows.
    last_sent: Option<u64>,
    /// The next request, waiting for its time (open loop) or for room.
    pub(super) pending: Option<(u64, Option<Instant>)>,
}

impl Flow {
    pub(super) fn new(size: usize) -> Flow {
        Flow {
            out: VecDeque::new(),
            wbuf: vec![0u8; size],
            written: size,
            rbuf: vec![0u8; size],
            echoed: 0,
            last_sent: None,
            pending: None,
        }
    }

    /// A new load begins (a slice): nothing in flight, numbering from the start.
    pub(super) fn reset(&mut self) {
        self.out.clear();
        self.written = self.wbuf.len();
        self.echoed = 0;
        self.last_sent = None;
        self.pending = None;
    }

    pub(super) fn last_sent(&self) -> Option<u64> {
        self.last_sent
    }

    fn writing(&self) -> bool {
        self.written < self.wbuf.len()
    }

    pub(super) fn size(&self) -> usize {
        self.wbuf.len()
    }
}

impl Engine {
    /// Sends what connection `i`'s load allows now: while fewer than the depth are in
    /// flight and the newest is written whole, the next request (or, when its time has not
    /// come, schedules it). Finishes the connection's slice when the load is done and
    /// nothing is in flight.
    pub(super) fn advance(&mut self, i: usize, now: Instant) {
        let depth = self.depth;
        loop {
            let c = &mut self.conns[i];
            if !matches!(c.phase, Phase::Running) || c.flow.writing() || c.flow.out.len() >= depth {
                return;
            }
            let Some(load) = c.load.as_ref() else { return };
            let fresh = c.flow.pending.is_none();
            let next = match c.flow.pending.take() {
                Some(p) => p,
                None => match load.next_after(c.flow.last_sent) {
                    Next::Send { k, at } => (k, at),
                    Next::Done if c.flow.out.is_empty() => return self.finish(i, None),
                    Next::Done => return,
                },
            };
            if let Some(at) = next.1.filter(|at| *at > now) {
                c.flow.pending = Some(next);
                if fresh {
                    self.due.push(std::cmp::Reverse((at, i)));
                }
                return;
            }
            self.send(i, next.0, now);
        }
    }

    /// Sends request `k` on connection `i` (as much as the socket takes now).
    fn send(&mut self, i: usize, k: u64, now: Instant) {
        let c = &mut self.conns[i];
        fill_payload(&mut c.flow.wbuf, c.thread, k);
        c.flow.written = 0;
        c.flow.last_sent = Some(k);
        c.flow.out.push_back((k, now));
        if c.flow.out.len() == 1 {
            c.flow.rbuf.copy_from_slice(&c.flow.wbuf);
            c.flow.echoed = 0;
        }
        if let Some(load) = c.load.as_mut() {
            load.sent(k, now);
        }
        c.last_progress = now;
        self.pump_out(i);
    }

    /// Writes what is left of the newest request.
    pub(super) fn pump_out(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(fd) = &c.fd else { return };
        while c.flow.writing() {
            match self.sc.write(fd.as_fd(), &c.flow.wbuf[c.flow.written..]) {
                Ok(n) => c.flow.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = format!("request: write: {e}");
                    return self.finish(i, Some(why));
                }
            }
        }
    }

    /// Reads and verifies what the socket has, completing requests in order; with crr a
    /// completed request ends its connection.
    pub(super) fn pump_in(&mut self, i: usize, now: Instant) {
        loop {
            let c = &mut self.conns[i];
            let Some(fd) = &c.fd else { return };
            let n = match self.sc.read(fd.as_fd(), &mut self.scratch) {
                Ok(0) => {
                    let why = closed_early(&c.flow);
                    return self.finish(i, Some(why));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.finish(i, Some(format!("read: {e}"))),
            };
            c.last_progress = now;
            if let Err(why) = self.verify(i, n) {
                return self.finish(i, Some(why));
            }
            if self.workload == Workload::Crr && self.conns[i].flow.out.is_empty() {
                // Its one request is back: this connection is done; the next opens anew.
                return self.reconnect(i);
            }
        }
    }

    /// Checks the `n` bytes just read into the scratch buffer against the requests in
    /// flight, oldest first, and completes each one whose echo is now whole.
    fn verify(&mut self, i: usize, n: usize) -> Result<(), String> {
        let mut off = 0;
        while off < n {
            let c = &mut self.conns[i];
            let size = c.flow.size();
            let Some(&(k, sent_at)) = c.flow.out.front() else {
                return Err(format!("{} bytes arrived with no request out", n - off));
            };
            // Nothing can come back that was not written: the oldest request is the
            // newest one too when only one is out.
            let sent = if c.flow.out.len() == 1 { c.flow.written } else { size };
            let take = (size - c.flow.echoed).min(n - off);
            if c.flow.echoed + take > sent {
                return Err(format!("request {k}: {} bytes more than were sent", c.flow.echoed + take - sent));
            }
            let (from, to) = (c.flow.echoed, c.flow.echoed + take);
            if let Some(at) = first_difference(&c.flow.rbuf[from..to], &self.scratch[off..off + take]) {
                let mut got = c.flow.rbuf.clone();
                got[from..to].copy_from_slice(&self.scratch[off..off + take]);
                return Err(mismatch(k, &c.flow.rbuf, &got, from + at));
            }
            c.flow.echoed = to;
            off += take;
            if c.flow.echoed == size {
                c.flow.out.pop_front();
                c.flow.echoed = 0;
                if let Some(&(next, _)) = c.flow.out.front() {
                    fill_payload(&mut c.flow.rbuf, c.thread, next);
                }
                if let Some(load) = c.load.as_mut() {
                    load.verified(&mut self.run, k, sent_at, Instant::now());
                }
            }
        }
        Ok(())
    }
}

/// Why a connection that the server closed failed.
fn closed_early(flow: &Flow) -> String {
    match flow.out.front() {
        Some((k, _)) => {
            format!("request {k}: server closed the connection after {} of {} reply bytes", flow.echoed, flow.size())
        }
        None => "server closed the connection".into(),
    }
}
