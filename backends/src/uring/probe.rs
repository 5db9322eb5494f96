//! What the kernel's io_uring offers, found at start: every feature probed with a
//! fallback, so the backend runs on any kernel from 5.19 and says what it used.

use std::io;

use std::os::fd::{AsFd, AsRawFd};

use io_uring::{cqueue, opcode, types, IoUring, Probe};

use super::buf_ring::BufRing;
use super::sqe::with_recv_cap;
use crate::config::{UringOptions, INC_BUFFER_SCALE};
use crate::sys;

/// The buffer group the incremental-consumption probe registers (group 0 is the plain
/// probe's, on the same ring).
const PROBE_GROUP: u16 = 1;

/// How completions are run in the submitting task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taskrun {
    /// SINGLE_ISSUER | DEFER_TASKRUN: only when we wait, in our thread, batched.
    Defer,
    /// COOP_TASKRUN: no interrupting IPIs, run at the next transition to the kernel.
    Coop,
    /// Neither (older kernels).
    Plain,
}

/// What the kernel offers and what we use.
#[derive(Clone, Debug)]
pub struct Features {
    pub cq_entries: u32,
    pub buffers: u16,
    pub buffer_size: usize,
    taskrun: Taskrun,
    submit_all: bool,
    pub multishot_accept: bool,
    pub multishot_recv: bool,
    pub bufring: bool,
    pub min_wait: bool,
    sqpoll: bool,
    pub registered_ring_fd: bool,
    /// Vectored sends of several queued buffers (only a buffer ring queues several).
    pub sendvec: bool,
    /// Receive bundles: a multishot completion may carry several buffers.
    pub bundle: bool,
    /// Zero-copy sends for sends of at least this many bytes.
    pub zc_min_bytes: Option<u32>,
    /// Zero-copy sends name the buffer ring's memory as registered buffer 0.
    pub regbuf: bool,
    /// Connections move to direct descriptors in their worker ring's file table.
    pub direct: bool,
    /// Incremental buffer consumption: `buffers` and `buffer_size` are already the
    /// fewer, larger buffers it uses.
    pub incremental: bool,
    /// Multishot receives are capped at the connection's flow-control headroom.
    pub recv_cap: bool,
}

fn unavailable(e: io::Error) -> io::Error {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| format!("kernel.io_uring_disabled={}", s.trim()))
        .unwrap_or_else(|_| "kernel.io_uring_disabled unknown".into());
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "io_uring is unavailable here (io_uring_setup: {e}; {disabled}; a seccomp filter such as a \
             container's default profile also blocks it); use --backend epoll"
        ),
    )
}

impl Features {
    /// Probes the kernel: fails with one clear line if io_uring cannot be used at all or
    /// lacks an operation we need; otherwise records which optional features to use.
    pub fn probe(opts: &UringOptions) -> io::Result<Features> {
        // Probe rings are made and torn down on a throwaway thread: tearing a ring down
        // queues exit work that interrupts its creating thread later (TIF_NOTIFY_SIGNAL),
        // and a caller blocked in a socket read with a timeout would see EINTR.
        std::thread::scope(|s| {
            s.spawn(|| Self::probe_here(opts))
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("io_uring probe panicked")))
        })
    }

    fn probe_here(opts: &UringOptions) -> io::Result<Features> {
        let ring = IoUring::new(8).map_err(unavailable)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe).map_err(unavailable)?;
        for (code, name) in [
            (opcode::MsgRingData::CODE, "IORING_OP_MSG_RING (Linux 5.18)"),
            (opcode::Accept::CODE, "IORING_OP_ACCEPT"),
            (opcode::Recv::CODE, "IORING_OP_RECV"),
            (opcode::Send::CODE, "IORING_OP_SEND"),
            (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
            (opcode::Close::CODE, "IORING_OP_CLOSE"),
            (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD"),
            (opcode::Timeout::CODE, "IORING_OP_TIMEOUT"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring on this kernel lacks {name}; use --backend epoll"),
                ));
            }
        }
        let works = |f: &dyn Fn(&mut io_uring::Builder)| {
            let mut b = IoUring::builder();
            f(&mut b);
            b.build(8).is_ok()
        };
        let sqpoll = opts.sqpoll
            && works(&|b| {
                b.setup_sqpoll(1000);
            });
        // With SQPOLL the kernel thread runs completions, so the task-run flags are
        // refused (EINVAL) alongside it.
        let taskrun = if sqpoll {
            Taskrun::Plain
        } else if opts.defer_taskrun
            && works(&|b| {
                b.setup_single_issuer().setup_defer_taskrun();
            })
        {
            Taskrun::Defer
        } else if works(&|b| {
            b.setup_coop_taskrun();
        }) {
            Taskrun::Coop
        } else {
            Taskrun::Plain
        };
        let submit_all = works(&|b| {
            b.setup_submit_all();
        });
        let kernel = sys::kernel_version();
        // Probed with real registrations, kept until the ring is gone (the kernel may
        // read a registered ring's entries until then).
        let plain_bufs = (opts.bufring && kernel >= (5, 19)).then(|| BufRing::new(&ring.submitter(), 8, 64, false));
        let bufring = plain_bufs.as_ref().is_some_and(|b| b.is_ok());
        // A second group, since group 0 is taken above.
        let inc_bufs = (opts.incremental && bufring && kernel >= (6, 12))
            .then(|| BufRing::with_group(&ring.submitter(), 8, 64, true, PROBE_GROUP));
        let incremental = inc_bufs.as_ref().is_some_and(|b| b.is_ok());
        // The same memory in fewer, larger buffers (never fewer than one).
        let (buffers, buffer_size) = if incremental {
            let count = (opts.buffers / INC_BUFFER_SCALE).max(1);
            (count, opts.buffer_size * usize::from(opts.buffers / count))
        } else {
            (opts.buffers, opts.buffer_size)
        };
        let feat = Features {
            cq_entries: opts.cq_entries,
            buffers,
            buffer_size,
            taskrun,
            submit_all,
            multishot_accept: opts.multishot && kernel >= (5, 19),
            // Multishot receive needs buffer selection, hence a buffer ring.
            multishot_recv: opts.multishot && bufring && kernel >= (6, 0),
            bufring,
            min_wait: ring.params().is_feature_min_timeout(),
            sqpoll,
            registered_ring_fd: kernel >= (5, 18),
            sendvec: opts.sendvec && bufring && probe.is_supported(opcode::SendMsg::CODE),
            // A bundle names only its first buffer, and with incremental consumption the
            // kernel may have used part of it before: the two do not mix here.
            bundle: opts.bundle
                && !incremental
                && bufring
                && opts.multishot
                && kernel >= (6, 0)
                && ring.params().is_feature_recvsend_bundle(),
            zc_min_bytes: opts
                .zc_min_bytes
                .filter(|_| probe.is_supported(opcode::SendZc::CODE) && probe.is_supported(opcode::SendMsgZc::CODE)),
            // A vectored zero-copy send from a registered buffer needs Linux 6.15.
            regbuf: opts.regbuf && opts.zc_min_bytes.is_some() && bufring && kernel >= (6, 15) && {
                let mem = [0u8; 64];
                let iov = [libc::iovec { iov_base: mem.as_ptr().cast_mut().cast(), iov_len: mem.len() }];
                // SAFETY: `mem` outlives the registration, which is undone before it goes;
                // no request ever names the buffer.
                let ok = unsafe { ring.submitter().register_buffers(&iov) }.is_ok();
                ok && ring.submitter().unregister_buffers().is_ok()
            },
            // Installing into any free slot with FILES_UPDATE needs Linux 5.19.
            direct: opts.direct
                && kernel >= (5, 19)
                && probe.is_supported(opcode::FilesUpdate::CODE)
                && ring.submitter().register_files_sparse(4).is_ok(),
            incremental,
            recv_cap: opts.recv_cap && opts.multishot && bufring && kernel >= (6, 0) && recv_cap_works(),
        };
        drop(ring);
        drop((plain_bufs, inc_bufs));
        // The flags were probed one by one; make sure the combination is accepted too.
        feat.build_ring(8, 16)?;
        Ok(feat)
    }

    /// A ring with these features, `entries` submission and `cq_entries` completion slots.
    pub fn build_ring(&self, entries: u32, cq_entries: u32) -> io::Result<IoUring> {
        let f = self;
        let mut b = IoUring::builder();
        b.setup_cqsize(cq_entries);
        match f.taskrun {
            Taskrun::Defer => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
            Taskrun::Coop => {
                b.setup_coop_taskrun();
            }
            Taskrun::Plain => {}
        }
        if f.submit_all {
            b.setup_submit_all();
        }
        if f.sqpoll {
            b.setup_sqpoll(1000);
        }
        b.build(entries).map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM | libc::ENOSYS | libc::EACCES) => unavailable(e),
            _ => {
                io::Error::new(e.kind(), format!("cannot set up an io_uring with the probed features ({self:?}): {e}"))
            }
        })
    }

    /// The features in use, for the summary and env.json.
    pub fn describe(&self) -> Vec<(String, String)> {
        let on = |b: bool| if b { "on" } else { "off" }.to_string();
        vec![
            ("handoff".into(), "msg_ring".into()),
            ("multishot_accept".into(), on(self.multishot_accept)),
            ("multishot_recv".into(), on(self.multishot_recv)),
            (
                "bufring".into(),
                if self.bufring { format!("{}x{}B", self.buffers, self.buffer_size) } else { "off".into() },
            ),
            ("incremental_buffers".into(), on(self.incremental)),
            (
                "taskrun".into(),
                match self.taskrun {
                    Taskrun::Defer => "single_issuer+defer_taskrun",
                    Taskrun::Coop => "coop_taskrun",
                    Taskrun::Plain => "plain",
                }
                .into(),
            ),
            ("submit_all".into(), on(self.submit_all)),
            ("registered_ring_fd".into(), on(self.registered_ring_fd)),
            ("registered_listener".into(), "on".into()),
            ("min_wait".into(), on(self.min_wait)),
            ("sqpoll".into(), on(self.sqpoll)),
            ("sendvec".into(), on(self.sendvec)),
            ("bundle".into(), on(self.bundle)),
            ("zc".into(), self.zc_min_bytes.map_or_else(|| "off".into(), |b| format!(">={b}B"))),
            ("regbuf".into(), on(self.regbuf)),
            ("direct_descriptors".into(), on(self.direct)),
            ("recv_cap".into(), on(self.recv_cap)),
        ]
    }
}

/// Whether a multishot receive honours a byte cap (Linux 6.17): armed with a cap of one
/// byte on a socket pair already holding 32, it must complete once with all 32 and end
/// (no `IORING_CQE_F_MORE`). An older kernel ignores the field and keeps it armed.
fn recv_cap_works() -> bool {
    const SENT: usize = 32;
    let Ok(mut ring) = IoUring::new(4) else { return false };
    let Ok(bufs) = BufRing::with_group(&ring.submitter(), 2, 64, false, PROBE_GROUP) else { return false };
    let Ok((rx, tx)) = sys::socketpair() else { return false };
    if sys::write(tx.as_fd(), &[7u8; SENT]).ok() != Some(SENT) {
        return false;
    }
    let e = with_recv_cap(opcode::RecvMulti::new(types::Fd(rx.as_raw_fd()), PROBE_GROUP).build(), 1);
    // SAFETY: the receive writes only into the registered buffers, which live until after
    // the ring (dropped first below, which ends any request still armed).
    let pushed = unsafe { ring.submission().push(&e) }.is_ok();
    let ended_at_cap = pushed
        && ring.submit_and_wait(1).is_ok()
        && ring.completion().next().is_some_and(|c| c.result() == SENT as i32 && !cqueue::more(c.flags()));
    drop(ring);
    drop(bufs);
    ended_at_cap
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(opts: &UringOptions, name: &str) -> String {
        let feat = Features::probe(opts).expect("io_uring on the test machine");
        feat.describe().into_iter().find(|(k, _)| k == name).map(|(_, v)| v).unwrap_or_default()
    }

    fn sendvec(opts: &UringOptions) -> String {
        feature(opts, "sendvec")
    }

    /// Bundles, zero-copy sends, registered buffers and direct descriptors are off by
    /// default, and each follows its switch on this kernel (6.18) and needs what it is
    /// built on.
    #[test]
    fn optional_features_follow_their_switches() {
        let full = UringOptions::default();
        assert_eq!(feature(&full, "bundle"), "off");
        assert_eq!(feature(&full, "direct_descriptors"), "off");
        let bundle = UringOptions { bundle: true, ..full.clone() };
        assert_eq!(feature(&bundle, "bundle"), "on");
        assert_eq!(feature(&UringOptions { multishot: false, ..bundle }, "bundle"), "off", "multishot only");
        assert_eq!(feature(&UringOptions { direct: true, ..full.clone() }, "direct_descriptors"), "on");
        assert_eq!(feature(&full, "regbuf"), "off");
        assert_eq!(feature(&full, "zc"), "off");
        let all = UringOptions { bundle: true, zc_min_bytes: Some(4096), regbuf: true, ..full.clone() };
        assert_eq!(feature(&all, "bundle"), "on");
        assert_eq!(feature(&all, "zc"), ">=4096B");
        assert_eq!(feature(&all, "regbuf"), "on");
        assert_eq!(feature(&full, "incremental_buffers"), "off");
        let inc = UringOptions { incremental: true, buffers: 2048, buffer_size: 4096, ..full.clone() };
        assert_eq!(feature(&inc, "incremental_buffers"), "on");
        assert_eq!(feature(&inc, "bufring"), "128x65536B", "the same memory in 16x larger buffers");
        assert_eq!(feature(&UringOptions { buffers: 2, ..inc.clone() }, "bufring"), "1x8192B", "never none");
        assert_eq!(feature(&UringOptions { bundle: true, ..inc.clone() }, "bundle"), "off", "not with bundles");
        assert_eq!(feature(&UringOptions { bufring: false, ..inc }, "incremental_buffers"), "off");
        let no_ring = UringOptions { bufring: false, ..all.clone() };
        assert_eq!(feature(&no_ring, "bundle"), "off", "bundles select from the buffer ring");
        assert_eq!(feature(&no_ring, "regbuf"), "off", "the registered buffer is the buffer ring");
        assert_eq!(feature(&UringOptions { zc_min_bytes: None, ..all }, "regbuf"), "off", "only zc sends use it");
    }

    /// Vectored sends are on by default wherever the buffer ring is, and each switch that
    /// rules them out turns them off: a variant named `-no-sendvec` must measure what it says.
    #[test]
    fn vectored_sends_follow_their_switch_and_the_buffer_ring() {
        let full = UringOptions::default();
        assert_eq!(sendvec(&full), "on");
        assert_eq!(sendvec(&UringOptions { sendvec: false, ..full.clone() }), "off");
        assert_eq!(sendvec(&UringOptions { bufring: false, ..full }), "off", "one own buffer queues one chunk");
    }

    /// The receive cap is on by default from Linux 6.17 (the probe's functional test
    /// passes there and fails before), follows its switch, and needs a multishot receive.
    #[test]
    fn the_receive_cap_is_probed_and_follows_its_switch() {
        let full = UringOptions::default();
        let here = sys::kernel_version() >= (6, 17);
        assert_eq!(recv_cap_works(), here, "a 6.17+ kernel ends a capped multishot receive at its cap");
        assert_eq!(feature(&full, "recv_cap"), if here { "on" } else { "off" });
        assert_eq!(feature(&UringOptions { recv_cap: false, ..full.clone() }, "recv_cap"), "off");
        assert_eq!(feature(&UringOptions { multishot: false, ..full.clone() }, "recv_cap"), "off");
        assert_eq!(feature(&UringOptions { bufring: false, ..full }, "recv_cap"), "off");
    }
}
