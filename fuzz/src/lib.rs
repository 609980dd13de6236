//! Support shared by the fuzz targets: a global allocator that aborts on any single
//! allocation above [`ALLOCATION_BYTES_MAX`], so that a decoder reserving memory from an
//! unchecked count or length is a crash libFuzzer reports (with the input), not a slow
//! run or an out-of-memory kill. Every target links this crate, which installs it.
//!
//! Why 64 MiB: the largest legitimate allocations are a whole frame or record (16 MiB) and
//! the vector of a full batch or snapshot list decoded from one (a few times the bytes it
//! came from); an unchecked `u32` or `u64` count asks for gigabytes.
//!
//! Also [`scratch_dir`], the directory the recovery targets write their segment files to.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::OnceLock;

use tempfile::TempDir;

pub const ALLOCATION_BYTES_MAX: usize = 64 << 20;

pub struct CappedAllocator;

// SAFETY: delegates every call to `System` unchanged; only refuses (by aborting) first.
unsafe impl GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller upholds `alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn check(bytes: usize) {
    if bytes > ALLOCATION_BYTES_MAX {
        // No allocation (and so no formatting) from inside the allocator: write and abort.
        let message = b"twophase-fuzz: one allocation above ALLOCATION_BYTES_MAX (64 MiB)\n";
        // SAFETY: writes a static buffer to stderr.
        unsafe { libc_write(2, message.as_ptr(), message.len()) };
        std::process::abort();
    }
}

unsafe extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, count: usize) -> isize;
}

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator;

static SCRATCH: OnceLock<TempDir> = OnceLock::new();

/// One temporary directory for the whole run, on tmpfs (`/dev/shm`) where there is one:
/// recovery syncs what it cuts, which a disk makes slow. Removed when libFuzzer exits.
pub fn scratch_dir() -> &'static Path {
    SCRATCH
        .get_or_init(|| {
            let shm = Path::new("/dev/shm");
            let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
            // libFuzzer leaves through exit(), which drops no static: remove the directory then.
            // SAFETY: registers a plain function with the C runtime.
            unsafe { atexit(remove_scratch_dir) };
            dir.expect("a temporary directory")
        })
        .path()
}

extern "C" fn remove_scratch_dir() {
    if let Some(dir) = SCRATCH.get() {
        let _ = std::fs::remove_dir_all(dir.path());
    }
}

unsafe extern "C" {
    fn atexit(callback: extern "C" fn()) -> i32;
}
