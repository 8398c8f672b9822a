//! The descriptor table: kernel fd number → what serves it.
//!
//! Fd numbers always come from the kernel. A library-OS object (a socket on smoltcp, an epoll
//! instance, a file on a VSA — later issues) holds a kernel *placeholder* fd, and its number is
//! the number the program sees, so lowest-free-fd allocation, `dup2` over an open fd,
//! `O_CLOEXEC` and `/proc/self/fd` behave exactly as on Linux. This table only says, for each
//! number, whether the library OS serves it and with which object.
//!
//! The kernel path — every fd the library OS does not own — costs one lock-free lookup:
//! an atomic load of the chunk pointer and an atomic load of the slot's kind. It takes no lock,
//! allocates nothing and is async-signal-safe. Chunks of slots are allocated only when a
//! library-OS object is installed in their range. Only library-OS paths take the slot's mutex,
//! briefly, never across a blocking wait.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::error::{Errno, SysResult};

/// What serves an fd number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FdKind {
    /// The kernel: calls pass straight through to libc.
    Kernel = 0,
    /// A socket of the library OS (networking issue).
    Socket = 1,
    /// An epoll instance of the library OS (networking issue).
    Epoll = 2,
    /// A file on a virtual storage area (storage issue).
    File = 3,
}

impl FdKind {
    fn from_u8(v: u8) -> FdKind {
        match v {
            1 => FdKind::Socket,
            2 => FdKind::Epoll,
            3 => FdKind::File,
            _ => FdKind::Kernel,
        }
    }
}

/// An object of the library OS that an fd number refers to. Several fd numbers may share one
/// object (after `dup`); the object lives while any of them does.
pub trait FdObject: Send + Sync + Debug {
    /// Which kind of object this is; never [`FdKind::Kernel`].
    fn kind(&self) -> FdKind;
    /// For the shim's dispatch to the concrete type.
    fn as_any(&self) -> &dyn std::any::Any;
    /// The shared object as `Any`, to recover an `Arc` of the concrete type.
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
}

/// Slots per chunk and chunks in the table: fds `0..CHUNK*CHUNKS` (1,048,576, the usual hard
/// `RLIMIT_NOFILE`) can hold library-OS objects; higher numbers are always kernel fds.
const CHUNK: usize = 1024;
const CHUNKS: usize = 1024;
/// The largest fd number + 1 that can hold a library-OS object.
pub const MAX_FDS: usize = CHUNK * CHUNKS;

#[derive(Default)]
struct Slot {
    /// `FdKind as u8`; written only while `obj` is locked, read lock-free.
    kind: AtomicU8,
    obj: Mutex<Option<Arc<dyn FdObject>>>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<Arc<dyn FdObject>>> {
        // A panic while holding a slot lock cannot leave the Option half-written.
        self.obj.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The per-process descriptor table. One instance, [`table()`], serves the whole process.
pub struct FdTable {
    chunks: [OnceLock<Box<[Slot]>>; CHUNKS],
    /// Number of fd numbers that currently refer to library-OS objects. Multi-fd calls
    /// (`poll`, `select`, `epoll_*`) skip their scan entirely while it is zero.
    live: AtomicUsize,
}

impl Default for FdTable {
    fn default() -> Self {
        Self::new()
    }
}

impl FdTable {
    /// An empty table: every fd is a kernel fd.
    pub const fn new() -> FdTable {
        FdTable { chunks: [const { OnceLock::new() }; CHUNKS], live: AtomicUsize::new(0) }
    }

    #[inline]
    fn split(fd: i32) -> Option<(usize, usize)> {
        let fd = usize::try_from(fd).ok()?;
        (fd < MAX_FDS).then_some((fd / CHUNK, fd % CHUNK))
    }

    #[inline]
    fn slot(&self, fd: i32) -> Option<&Slot> {
        let (c, i) = Self::split(fd)?;
        self.chunks[c].get().and_then(|chunk| chunk.get(i))
    }

    fn slot_or_alloc(&self, fd: i32) -> SysResult<&Slot> {
        let (c, i) = Self::split(fd).ok_or(Errno::EMFILE)?;
        // Built on the heap: a chunk (32 KiB) need not fit the calling thread's stack.
        let chunk = self.chunks[c].get_or_init(|| (0..CHUNK).map(|_| Slot::default()).collect());
        chunk.get(i).ok_or(Errno::EMFILE)
    }

    /// What serves `fd`. Lock-free, allocation-free, async-signal-safe. Negative and
    /// out-of-range numbers are kernel fds (the kernel then reports `EBADF`).
    #[inline]
    pub fn kind(&self, fd: i32) -> FdKind {
        match self.slot(fd) {
            Some(s) => FdKind::from_u8(s.kind.load(Ordering::Acquire)),
            None => FdKind::Kernel,
        }
    }

    /// True when `fd` goes straight to the kernel.
    #[inline]
    pub fn is_kernel(&self, fd: i32) -> bool {
        self.kind(fd) == FdKind::Kernel
    }

    /// True while any fd refers to a library-OS object.
    #[inline]
    pub fn any_library_fds(&self) -> bool {
        self.live.load(Ordering::Acquire) != 0
    }

    /// The object behind `fd`, if the library OS serves it.
    pub fn get(&self, fd: i32) -> Option<Arc<dyn FdObject>> {
        let slot = self.slot(fd)?;
        if slot.kind.load(Ordering::Acquire) == FdKind::Kernel as u8 {
            return None;
        }
        slot.lock().clone()
    }

    /// Makes `fd` refer to `obj`. Returns the object it referred to before, if any (the caller
    /// releases it). `EMFILE` if `fd` is beyond [`MAX_FDS`]: the caller keeps the fd on the
    /// kernel path instead.
    pub fn install(&self, fd: i32, obj: Arc<dyn FdObject>) -> SysResult<Option<Arc<dyn FdObject>>> {
        let kind = obj.kind();
        if kind == FdKind::Kernel {
            return Err(Errno::EINVAL);
        }
        let slot = self.slot_or_alloc(fd)?;
        let mut guard = slot.lock();
        let old = guard.replace(obj);
        slot.kind.store(kind as u8, Ordering::Release);
        if old.is_none() {
            self.live.fetch_add(1, Ordering::AcqRel);
        }
        Ok(old)
    }

    /// Makes `fd` a kernel fd again; returns the object it referred to, if any.
    pub fn remove(&self, fd: i32) -> Option<Arc<dyn FdObject>> {
        let slot = self.slot(fd)?;
        if slot.kind.load(Ordering::Acquire) == FdKind::Kernel as u8 {
            return None;
        }
        let mut guard = slot.lock();
        slot.kind.store(FdKind::Kernel as u8, Ordering::Release);
        let old = guard.take();
        if old.is_some() {
            self.live.fetch_sub(1, Ordering::AcqRel);
        }
        old
    }

    /// The kernel just handed out `fd` for a kernel object (socket, pipe, open, accept...).
    /// If the table still maps it to a library-OS object, that mapping is stale — the number
    /// was closed behind the shim's back (`close_range`, a raw syscall, glibc closing
    /// internally) — and is dropped. Returns the stale object. Lock-free when nothing is stale.
    pub fn kernel_fd_created(&self, fd: i32) -> Option<Arc<dyn FdObject>> {
        if self.is_kernel(fd) {
            return None;
        }
        let stale = self.remove(fd);
        if let Some(obj) = &stale {
            tracing::warn!(fd, ?obj, "fd was closed outside the shim; forgetting its library-OS object");
        }
        stale
    }

    /// The kernel closed every fd in `first..=last` (`close_range`): forget the library-OS
    /// objects there. Visits only chunks that exist. Returns the released objects.
    pub fn remove_range(&self, first: u32, last: u32) -> Vec<Arc<dyn FdObject>> {
        let mut out = Vec::new();
        let end = (last as usize).min(MAX_FDS - 1);
        let mut fd = first as usize;
        while fd <= end {
            let (c, _) = (fd / CHUNK, fd % CHUNK);
            if self.chunks[c].get().is_none() {
                fd = (c + 1) * CHUNK;
                continue;
            }
            if let Some(obj) = self.remove(fd as i32) {
                out.push(obj);
            }
            fd += 1;
        }
        out
    }

    /// After the kernel made `new` a duplicate of `old` (`dup`, `dup2`, `dup3`,
    /// `F_DUPFD`), make the table agree: `new` refers to whatever `old` refers to. Returns
    /// the object `new` referred to before, if any.
    pub fn duplicated(&self, old: i32, new: i32) -> SysResult<Option<Arc<dyn FdObject>>> {
        match self.get(old) {
            Some(obj) => self.install(new, obj),
            None => Ok(self.remove(new)),
        }
    }
}

/// The process's descriptor table.
#[inline]
pub fn table() -> &'static FdTable {
    static TABLE: FdTable = FdTable::new();
    &TABLE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Dummy(FdKind);
    impl FdObject for Dummy {
        fn kind(&self) -> FdKind {
            self.0
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
            self
        }
    }

    #[test]
    fn everything_starts_on_the_kernel() {
        let t = FdTable::new();
        for fd in [-1, 0, 1, 2, 1023, 1024, 65535, MAX_FDS as i32, i32::MAX] {
            assert_eq!(t.kind(fd), FdKind::Kernel);
            assert!(t.get(fd).is_none());
            assert!(t.remove(fd).is_none());
        }
        assert!(!t.any_library_fds());
    }

    #[test]
    fn install_get_remove() {
        let t = FdTable::new();
        let obj: Arc<dyn FdObject> = Arc::new(Dummy(FdKind::Socket));
        assert!(t.install(5, obj.clone()).unwrap().is_none());
        assert_eq!(t.kind(5), FdKind::Socket);
        assert_eq!(t.kind(4), FdKind::Kernel);
        assert!(t.any_library_fds());
        assert!(Arc::ptr_eq(&t.get(5).unwrap(), &obj));
        assert!(Arc::ptr_eq(&t.remove(5).unwrap(), &obj));
        assert_eq!(t.kind(5), FdKind::Kernel);
        assert!(!t.any_library_fds());
    }

    #[test]
    fn out_of_range_and_kernel_kind_are_refused() {
        let t = FdTable::new();
        let obj: Arc<dyn FdObject> = Arc::new(Dummy(FdKind::File));
        assert_eq!(t.install(-1, obj.clone()).unwrap_err(), Errno::EMFILE);
        assert_eq!(t.install(MAX_FDS as i32, obj).unwrap_err(), Errno::EMFILE);
        let kernel: Arc<dyn FdObject> = Arc::new(Dummy(FdKind::Kernel));
        assert_eq!(t.install(3, kernel).unwrap_err(), Errno::EINVAL);
        assert!(!t.any_library_fds());
    }

    #[test]
    fn dup_shares_the_object_and_dup_of_kernel_clears() {
        let t = FdTable::new();
        let obj: Arc<dyn FdObject> = Arc::new(Dummy(FdKind::Epoll));
        t.install(3, obj.clone()).unwrap();
        assert!(t.duplicated(3, 2000).unwrap().is_none());
        assert!(Arc::ptr_eq(&t.get(2000).unwrap(), &obj));
        assert_eq!(Arc::strong_count(&obj), 3);
        // dup2(kernel_fd, 2000) makes 2000 a kernel fd and releases its reference.
        let old = t.duplicated(7, 2000).unwrap().unwrap();
        assert!(Arc::ptr_eq(&old, &obj));
        drop(old);
        assert_eq!(t.kind(2000), FdKind::Kernel);
        assert_eq!(Arc::strong_count(&obj), 2);
    }

    #[test]
    fn stale_entries_are_forgotten_when_the_kernel_reuses_the_number() {
        let t = FdTable::new();
        t.install(9, Arc::new(Dummy(FdKind::Socket))).unwrap();
        assert!(t.kernel_fd_created(9).is_some());
        assert!(t.is_kernel(9));
        assert!(t.kernel_fd_created(9).is_none());
        assert!(!t.any_library_fds());
    }

    #[test]
    fn close_range_forgets_only_its_range() {
        let t = FdTable::new();
        for fd in [3, 10, 1500, 5000] {
            t.install(fd, Arc::new(Dummy(FdKind::Socket))).unwrap();
        }
        assert_eq!(t.remove_range(4, 2000).len(), 2);
        assert_eq!(t.kind(3), FdKind::Socket);
        assert_eq!(t.kind(10), FdKind::Kernel);
        assert_eq!(t.kind(5000), FdKind::Socket);
        assert_eq!(t.remove_range(0, u32::MAX).len(), 2);
        assert!(!t.any_library_fds());
    }

    #[test]
    fn concurrent_installs_count_correctly() {
        let t = Arc::new(FdTable::new());
        let threads: Vec<_> = (0..4)
            .map(|k| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for fd in (k * 500)..(k * 500 + 500) {
                        t.install(fd, Arc::new(Dummy(FdKind::File))).unwrap();
                    }
                    for fd in (k * 500)..(k * 500 + 500) {
                        assert_eq!(t.kind(fd), FdKind::File);
                        t.remove(fd).unwrap();
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert!(!t.any_library_fds());
    }
}
