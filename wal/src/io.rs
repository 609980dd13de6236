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

/// io_uring through tokio-uring: the writer thread owns a tokio-uring runtime and drives
/// each group (writes, then fdatasyncs) inside one `block_on`.
#[cfg(target_os = "linux")]
pub(crate) struct Uring {
    rt: tokio_uring::Runtime,
}

#[cfg(target_os = "linux")]
impl Uring {
    /// Builds the runtime and runs a no-op through the ring, so that a kernel that refuses
    /// io_uring (io_uring_disabled, seccomp, EPERM, too old) is detected here.
    pub(crate) fn probe() -> io::Result<Uring> {
        let rt = tokio_uring::Runtime::new(tokio_uring::builder().entries(64))?;
        rt.block_on(tokio_uring::no_op())?;
        Ok(Uring { rt })
    }
}

#[cfg(target_os = "linux")]
impl IoBackend for Uring {
    type File = tokio_uring::fs::File;

    fn kind(&self) -> BackendKind {
        BackendKind::IoUring
    }

    fn adopt(&self, file: File) -> tokio_uring::fs::File {
        tokio_uring::fs::File::from_std(file)
    }

    fn write_group(&mut self, writes: &mut [WriteOp<Self::File>], sync: bool) -> Result<(), IoFailure> {
        self.rt.block_on(async {
            for (index, w) in writes.iter_mut().enumerate() {
                if w.buf.is_empty() {
                    continue;
                }
                let buf = std::mem::take(&mut w.buf);
                let (res, buf) = w.file.write_all_at(buf, w.offset).await;
                w.buf = buf;
                res.map_err(|err| IoFailure { op: "write", index, err })?;
            }
            if sync {
                for (index, w) in writes.iter().enumerate() {
                    w.file.sync_data().await.map_err(|err| IoFailure { op: "fdatasync", index, err })?;
                }
            }
            Ok(())
        })
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
