//! The two I/O backends behind one trait. Both run on the wal's single writer thread.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::BackendKind;

/// One write of a group: a contiguous run of frames for one segment.
pub(crate) struct WriteOp<F> {
    pub file: std::rc::Rc<F>,
    pub offset: u64,
    pub buf: Vec<u8>,
}

/// Which operation of a group failed.
#[derive(Debug)]
pub(crate) struct IoFailure {
    pub op: &'static str,
    pub index: usize,
    pub err: io::Error,
}

/// The writer thread's view of the disk: write a group (one write per segment touched) and
/// then sync every segment touched. Failures are reported once and never retried.
pub(crate) trait IoBackend {
    type File;
    fn kind(&self) -> BackendKind;
    /// Takes over an open segment file.
    fn adopt(&self, file: File) -> Self::File;
    /// Performs every write in order, then (if `sync`) an fdatasync of every file written.
    /// Each `buf` is handed back in place (io_uring needs to own it during the call).
    fn write_group(&mut self, writes: &mut [WriteOp<Self::File>], sync: bool) -> Result<(), IoFailure>;
}

/// pwrite + fdatasync through std.
pub(crate) struct Portable;

impl IoBackend for Portable {
    type File = File;

    fn kind(&self) -> BackendKind {
        BackendKind::Portable
    }

    fn adopt(&self, file: File) -> File {
        file
    }

    fn write_group(&mut self, writes: &mut [WriteOp<File>], sync: bool) -> Result<(), IoFailure> {
        for (index, w) in writes.iter().enumerate() {
            w.file.write_all_at(&w.buf, w.offset).map_err(|err| IoFailure { op: "write", index, err })?;
        }
        if sync {
            for (index, w) in writes.iter().enumerate() {
                w.file.sync_data().map_err(|err| IoFailure { op: "fdatasync", index, err })?;
            }
        }
        Ok(())
    }
}

/// io_uring through the `io-uring` crate (the layer tokio-uring is built on). A group's
/// writes and its fdatasyncs go to the kernel as one chain of linked entries
/// (`IOSQE_IO_LINK`) in one `io_uring_enter`, so the kernel's worker runs write then sync
/// back to back: one round trip per group. (tokio-uring cannot link entries; awaiting the
/// write and then the sync cost a second round trip to the io-wq worker, about a fifth
/// more latency per group on the 2-core VM.)
#[cfg(target_os = "linux")]
pub(crate) struct Uring {
    ring: io_uring::IoUring,
}

/// Entries submitted at once at most (the ring has room for twice as many).
#[cfg(target_os = "linux")]
const URING_CHAIN_MAX: usize = 32;

#[cfg(target_os = "linux")]
#[derive(Clone, Copy, Debug)]
enum UringOp {
    /// Write `writes[index].buf[done..]`.
    Write { index: usize, done: usize },
    /// fdatasync the file of `writes[index]`.
    Sync { index: usize },
}

#[cfg(target_os = "linux")]
impl Uring {
    /// Builds the ring and runs a no-op through it, so that a kernel that refuses io_uring
    /// (io_uring_disabled, seccomp, EPERM, too old) is detected here.
    pub(crate) fn probe() -> io::Result<Uring> {
        let mut uring = Uring { ring: io_uring::IoUring::new(2 * URING_CHAIN_MAX as u32)? };
        let nop = io_uring::opcode::Nop::new().build();
        let result = uring.run_chain(&[nop])?;
        if result[0] < 0 {
            return Err(io::Error::from_raw_os_error(-result[0]));
        }
        Ok(uring)
    }

    /// Submits `entries` and waits for all their completions; returns each one's result in
    /// entry order. Never returns while an entry is still in flight (they point into
    /// buffers the caller owns), except when the ring itself fails.
    fn run_chain(&mut self, entries: &[io_uring::squeue::Entry]) -> io::Result<Vec<i32>> {
        assert!(entries.len() <= URING_CHAIN_MAX, "chain of {} entries", entries.len());
        for (position, entry) in entries.iter().enumerate() {
            let entry = entry.clone().user_data(position as u64);
            // SAFETY: every buffer an entry points to is owned by the caller and outlives
            // this call, which waits for every completion below.
            unsafe { self.ring.submission().push(&entry) }.map_err(|_| io::Error::other("io_uring queue full"))?;
        }
        let mut results = vec![None; entries.len()];
        let mut reaped = 0;
        while reaped < entries.len() {
            match self.ring.submit_and_wait(entries.len() - reaped) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
            for cqe in self.ring.completion() {
                let slot = &mut results[cqe.user_data() as usize];
                assert!(slot.is_none(), "two completions for one entry");
                *slot = Some(cqe.result());
                reaped += 1;
            }
        }
        Ok(results.into_iter().map(|result| result.expect("every entry completed")).collect())
    }

    fn entry(op: UringOp, writes: &[WriteOp<File>]) -> io_uring::squeue::Entry {
        use io_uring::{opcode, types};
        match op {
            UringOp::Write { index, done } => {
                let write = &writes[index];
                let rest = &write.buf[done..];
                let fd = types::Fd(std::os::fd::AsRawFd::as_raw_fd(&*write.file));
                opcode::Write::new(fd, rest.as_ptr(), rest.len() as u32).offset(write.offset + done as u64).build()
            }
            UringOp::Sync { index } => {
                let fd = types::Fd(std::os::fd::AsRawFd::as_raw_fd(&*writes[index].file));
                opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build()
            }
        }
    }
}

#[cfg(target_os = "linux")]
impl IoBackend for Uring {
    type File = File;

    fn kind(&self) -> BackendKind {
        BackendKind::IoUring
    }

    fn adopt(&self, file: File) -> File {
        file
    }

    fn write_group(&mut self, writes: &mut [WriteOp<File>], sync: bool) -> Result<(), IoFailure> {
        use std::collections::VecDeque;
        let mut ops: VecDeque<UringOp> = (0..writes.len())
            .filter(|&index| !writes[index].buf.is_empty())
            .map(|index| UringOp::Write { index, done: 0 })
            .collect();
        if sync {
            ops.extend((0..writes.len()).map(|index| UringOp::Sync { index }));
        }
        while !ops.is_empty() {
            let chain: Vec<UringOp> = ops.drain(..ops.len().min(URING_CHAIN_MAX)).collect();
            let last = chain.len() - 1;
            let entries: Vec<_> = chain
                .iter()
                .enumerate()
                .map(|(position, op)| {
                    let entry = Self::entry(*op, writes);
                    if position < last { entry.flags(io_uring::squeue::Flags::IO_LINK) } else { entry }
                })
                .collect();
            let results = self.run_chain(&entries).map_err(|err| IoFailure { op: "io_uring_enter", index: 0, err })?;
            // A short write breaks the link: it and everything after it go round again.
            let mut redo = Vec::new();
            for (op, result) in chain.into_iter().zip(results) {
                if !redo.is_empty() {
                    redo.push(op);
                    continue;
                }
                match op {
                    UringOp::Write { index, done } => {
                        let rest = writes[index].buf.len() - done;
                        let failure = |err| IoFailure { op: "write", index, err };
                        match result {
                            r if r < 0 => return Err(failure(io::Error::from_raw_os_error(-r))),
                            0 => return Err(failure(io::ErrorKind::WriteZero.into())),
                            r if (r as usize) < rest => redo.push(UringOp::Write { index, done: done + r as usize }),
                            _ => {}
                        }
                    }
                    UringOp::Sync { index } if result < 0 => {
                        return Err(IoFailure { op: "fdatasync", index, err: io::Error::from_raw_os_error(-result) });
                    }
                    UringOp::Sync { .. } => {}
                }
            }
            for op in redo.into_iter().rev() {
                ops.push_front(op);
            }
        }
        Ok(())
    }
}

/// Fault injection for unit tests: wraps a backend and fails the n-th write or sync.
#[cfg(test)]
pub(crate) mod faulty {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Which operation fails, with which errno. Counters are shared with the test.
    #[derive(Clone, Default)]
    pub(crate) struct Plan {
        pub fail_write_at: Option<usize>,
        pub fail_sync_at: Option<usize>,
        pub errno: i32,
        pub writes: Arc<AtomicUsize>,
        pub syncs: Arc<AtomicUsize>,
        /// Sleep this long before failing (lets waiters pile up).
        pub delay: std::time::Duration,
    }

    impl Plan {
        pub(crate) fn into_backend<B>(self, inner: B) -> Faulty<B> {
            Faulty { inner, plan: self }
        }
    }

    pub(crate) struct Faulty<B> {
        inner: B,
        plan: Plan,
    }

    impl<B: IoBackend> IoBackend for Faulty<B> {
        type File = B::File;
        fn kind(&self) -> BackendKind {
            self.inner.kind()
        }
        fn adopt(&self, file: File) -> B::File {
            self.inner.adopt(file)
        }
        fn write_group(&mut self, writes: &mut [WriteOp<B::File>], sync: bool) -> Result<(), IoFailure> {
            let w = self.plan.writes.fetch_add(1, Ordering::SeqCst);
            if Some(w) == self.plan.fail_write_at {
                std::thread::sleep(self.plan.delay);
                return Err(IoFailure { op: "write", index: 0, err: io::Error::from_raw_os_error(self.plan.errno) });
            }
            if sync {
                let s = self.plan.syncs.fetch_add(1, Ordering::SeqCst);
                if Some(s) == self.plan.fail_sync_at {
                    // The writes land, the sync fails.
                    std::thread::sleep(self.plan.delay);
                    self.inner.write_group(writes, false)?;
                    return Err(IoFailure {
                        op: "fdatasync",
                        index: 0,
                        err: io::Error::from_raw_os_error(self.plan.errno),
                    });
                }
            }
            self.inner.write_group(writes, sync)?;
            Ok(())
        }
    }
}
