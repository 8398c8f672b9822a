//! The real libc functions behind every intercepted symbol: one table, resolved with
//! `dlsym(RTLD_NEXT)` (so another preload library below us still chains) eagerly in the
//! constructor, and lazily if a call arrives before it (another library's constructor, a
//! malloc implementation initialising itself). A call that arrives *while* this thread is
//! resolving (dlsym allocates, the allocator may open a file) gets `None` and the caller falls
//! back to the raw system call, so resolution can never recurse.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_char, c_int, c_uint, c_ulong, c_void, off64_t, off_t, pid_t, size_t, ssize_t};
use libc::{epoll_event, mode_t, DIR, FILE};
use libc::{
    fd_set, iovec, mmsghdr, msghdr, nfds_t, pollfd, sigset_t, sockaddr, socklen_t, timespec, timeval,
};

/// Marks a slot whose symbol libc does not have (an older glibc): do not look again.
const MISSING: usize = 1;

thread_local! {
    static RESOLVING: Cell<bool> = const { Cell::new(false) };
}

macro_rules! real_fns {
    ($( $name:ident $(@ $ver:literal)? : $ty:ty; )*) => {
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Clone, Copy)]
        enum Idx { $($name,)* }

        const COUNT: usize = [$(stringify!($name)),*].len();
        const NAMES: [&str; COUNT] = [$(concat!(stringify!($name), "\0")),*];
        const VERSIONS: [Option<&str>; COUNT] = [$(real_fns!(@ver $($ver)?)),*];
        static SLOTS: [AtomicUsize; COUNT] = [const { AtomicUsize::new(0) }; COUNT];

        $(
            /// The real function, resolving it first if needed.
            #[inline(always)]
            #[allow(non_snake_case)]
            pub fn $name() -> Option<$ty> {
                let p = slot(Idx::$name as usize);
                // SAFETY: `p` came from dlsym for this symbol name, whose C type is `$ty`
                // (checked against glibc's headers when the table was written).
                (p > MISSING).then(|| unsafe { std::mem::transmute::<usize, $ty>(p) })
            }
        )*

        /// The real functions if already resolved, with no call on any path: what the
        /// exports' fast paths use, so that they compile to a tail jump.
        #[allow(dead_code)]
        pub mod fast {
            use super::*;
            $(
                #[inline(always)]
                #[allow(non_snake_case)]
                pub fn $name() -> Option<$ty> {
                    let p = SLOTS[Idx::$name as usize].load(Ordering::Acquire);
                    // SAFETY: as above.
                    (p > MISSING).then(|| unsafe { std::mem::transmute::<usize, $ty>(p) })
                }
            )*
        }
    };
    (@ver $v:literal) => { Some(concat!($v, "\0")) };
    (@ver) => { None };
}

#[inline(always)]
fn slot(i: usize) -> usize {
    let p = SLOTS[i].load(Ordering::Acquire);
    if p != 0 {
        p
    } else {
        resolve_slow(i)
    }
}

#[cold]
fn resolve_slow(i: usize) -> usize {
    // try_with: during thread teardown the TLS slot may be gone; then just do not resolve.
    let reentered = RESOLVING.try_with(|r| r.replace(true)).unwrap_or(true);
    if reentered {
        return 0;
    }
    resolve_all();
    let _ = RESOLVING.try_with(|r| r.set(false));
    SLOTS[i].load(Ordering::Acquire)
}

/// Resolves every real function. Called from the constructor; idempotent and thread-safe
/// (threads that race store the same values).
pub fn resolve_all() {
    for i in 0..COUNT {
        if SLOTS[i].load(Ordering::Acquire) != 0 {
            continue;
        }
        let p = lookup(NAMES[i], VERSIONS[i]);
        SLOTS[i].store(if p == 0 { MISSING } else { p }, Ordering::Release);
    }
}

/// Looks a symbol up in the objects loaded after this one.
pub fn lookup(name: &str, version: Option<&str>) -> usize {
    let cname = name.as_ptr().cast::<c_char>();
    // SAFETY: `name` and `version` are NUL-terminated literals (built by the macro above with
    // concat!(.., "\0")); RTLD_NEXT is valid from code inside a shared object.
    unsafe {
        match version {
            Some(v) => libc::dlvsym(libc::RTLD_NEXT, cname, v.as_ptr().cast()) as usize,
            None => libc::dlsym(libc::RTLD_NEXT, cname) as usize,
        }
    }
}

type Stat = c_void;

real_fns! {
    // sockets
    socket: unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
    socketpair: unsafe extern "C" fn(c_int, c_int, c_int, *mut c_int) -> c_int;
    bind: unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
    listen: unsafe extern "C" fn(c_int, c_int) -> c_int;
    accept: unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
    accept4: unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int;
    connect: unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
    shutdown: unsafe extern "C" fn(c_int, c_int) -> c_int;
    getsockname: unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
    getpeername: unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
    getsockopt: unsafe extern "C" fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int;
    setsockopt: unsafe extern "C" fn(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int;
    send: unsafe extern "C" fn(c_int, *const c_void, size_t, c_int) -> ssize_t;
    sendto: unsafe extern "C" fn(c_int, *const c_void, size_t, c_int, *const sockaddr, socklen_t) -> ssize_t;
    sendmsg: unsafe extern "C" fn(c_int, *const msghdr, c_int) -> ssize_t;
    sendmmsg: unsafe extern "C" fn(c_int, *mut mmsghdr, c_uint, c_int) -> c_int;
    recv: unsafe extern "C" fn(c_int, *mut c_void, size_t, c_int) -> ssize_t;
    recvfrom: unsafe extern "C" fn(c_int, *mut c_void, size_t, c_int, *mut sockaddr, *mut socklen_t) -> ssize_t;
    recvmsg: unsafe extern "C" fn(c_int, *mut msghdr, c_int) -> ssize_t;
    recvmmsg: unsafe extern "C" fn(c_int, *mut mmsghdr, c_uint, c_int, *mut timespec) -> c_int;
    // plain I/O
    read: unsafe extern "C" fn(c_int, *mut c_void, size_t) -> ssize_t;
    write: unsafe extern "C" fn(c_int, *const c_void, size_t) -> ssize_t;
    readv: unsafe extern "C" fn(c_int, *const iovec, c_int) -> ssize_t;
    writev: unsafe extern "C" fn(c_int, *const iovec, c_int) -> ssize_t;
    pread: unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t) -> ssize_t;
    pread64: unsafe extern "C" fn(c_int, *mut c_void, size_t, off64_t) -> ssize_t;
    pwrite: unsafe extern "C" fn(c_int, *const c_void, size_t, off_t) -> ssize_t;
    pwrite64: unsafe extern "C" fn(c_int, *const c_void, size_t, off64_t) -> ssize_t;
    preadv: unsafe extern "C" fn(c_int, *const iovec, c_int, off_t) -> ssize_t;
    preadv64: unsafe extern "C" fn(c_int, *const iovec, c_int, off64_t) -> ssize_t;
    pwritev: unsafe extern "C" fn(c_int, *const iovec, c_int, off_t) -> ssize_t;
    pwritev64: unsafe extern "C" fn(c_int, *const iovec, c_int, off64_t) -> ssize_t;
    preadv2: unsafe extern "C" fn(c_int, *const iovec, c_int, off_t, c_int) -> ssize_t;
    preadv64v2: unsafe extern "C" fn(c_int, *const iovec, c_int, off64_t, c_int) -> ssize_t;
    pwritev2: unsafe extern "C" fn(c_int, *const iovec, c_int, off_t, c_int) -> ssize_t;
    pwritev64v2: unsafe extern "C" fn(c_int, *const iovec, c_int, off64_t, c_int) -> ssize_t;
    sendfile: unsafe extern "C" fn(c_int, c_int, *mut off_t, size_t) -> ssize_t;
    sendfile64: unsafe extern "C" fn(c_int, c_int, *mut off64_t, size_t) -> ssize_t;
    lseek: unsafe extern "C" fn(c_int, off_t, c_int) -> off_t;
    lseek64: unsafe extern "C" fn(c_int, off64_t, c_int) -> off64_t;
    fsync: unsafe extern "C" fn(c_int) -> c_int;
    fdatasync: unsafe extern "C" fn(c_int) -> c_int;
    ftruncate: unsafe extern "C" fn(c_int, off_t) -> c_int;
    ftruncate64: unsafe extern "C" fn(c_int, off64_t) -> c_int;
    // descriptors
    close: unsafe extern "C" fn(c_int) -> c_int;
    close_range: unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int;
    dup: unsafe extern "C" fn(c_int) -> c_int;
    dup2: unsafe extern "C" fn(c_int, c_int) -> c_int;
    dup3: unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
    fcntl: unsafe extern "C" fn(c_int, c_int, ...) -> c_int;
    fcntl64: unsafe extern "C" fn(c_int, c_int, ...) -> c_int;
    ioctl: unsafe extern "C" fn(c_int, c_ulong, ...) -> c_int;
    pipe: unsafe extern "C" fn(*mut c_int) -> c_int;
    pipe2: unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    eventfd: unsafe extern "C" fn(c_uint, c_int) -> c_int;
    // events
    epoll_create: unsafe extern "C" fn(c_int) -> c_int;
    epoll_create1: unsafe extern "C" fn(c_int) -> c_int;
    epoll_ctl: unsafe extern "C" fn(c_int, c_int, c_int, *mut epoll_event) -> c_int;
    epoll_wait: unsafe extern "C" fn(c_int, *mut epoll_event, c_int, c_int) -> c_int;
    epoll_pwait: unsafe extern "C" fn(c_int, *mut epoll_event, c_int, c_int, *const sigset_t) -> c_int;
    epoll_pwait2: unsafe extern "C" fn(c_int, *mut epoll_event, c_int, *const timespec, *const sigset_t) -> c_int;
    poll: unsafe extern "C" fn(*mut pollfd, nfds_t, c_int) -> c_int;
    ppoll: unsafe extern "C" fn(*mut pollfd, nfds_t, *const timespec, *const sigset_t) -> c_int;
    select: unsafe extern "C" fn(c_int, *mut fd_set, *mut fd_set, *mut fd_set, *mut timeval) -> c_int;
    pselect: unsafe extern "C" fn(c_int, *mut fd_set, *mut fd_set, *mut fd_set, *const timespec, *const sigset_t) -> c_int;
    // files by path
    open: unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
    open64: unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
    openat: unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;
    openat64: unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;
    __open_2: unsafe extern "C" fn(*const c_char, c_int) -> c_int;
    __open64_2: unsafe extern "C" fn(*const c_char, c_int) -> c_int;
    __openat_2: unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
    __openat64_2: unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
    creat: unsafe extern "C" fn(*const c_char, mode_t) -> c_int;
    creat64: unsafe extern "C" fn(*const c_char, mode_t) -> c_int;
    stat: unsafe extern "C" fn(*const c_char, *mut Stat) -> c_int;
    stat64: unsafe extern "C" fn(*const c_char, *mut Stat) -> c_int;
    lstat: unsafe extern "C" fn(*const c_char, *mut Stat) -> c_int;
    lstat64: unsafe extern "C" fn(*const c_char, *mut Stat) -> c_int;
    fstat: unsafe extern "C" fn(c_int, *mut Stat) -> c_int;
    fstat64: unsafe extern "C" fn(c_int, *mut Stat) -> c_int;
    fstatat: unsafe extern "C" fn(c_int, *const c_char, *mut Stat, c_int) -> c_int;
    fstatat64: unsafe extern "C" fn(c_int, *const c_char, *mut Stat, c_int) -> c_int;
    statx: unsafe extern "C" fn(c_int, *const c_char, c_int, c_uint, *mut c_void) -> c_int;
    __xstat @ "GLIBC_2.2.5": unsafe extern "C" fn(c_int, *const c_char, *mut Stat) -> c_int;
    __xstat64 @ "GLIBC_2.2.5": unsafe extern "C" fn(c_int, *const c_char, *mut Stat) -> c_int;
    __lxstat @ "GLIBC_2.2.5": unsafe extern "C" fn(c_int, *const c_char, *mut Stat) -> c_int;
    __lxstat64 @ "GLIBC_2.2.5": unsafe extern "C" fn(c_int, *const c_char, *mut Stat) -> c_int;
    __fxstat @ "GLIBC_2.2.5": unsafe extern "C" fn(c_int, c_int, *mut Stat) -> c_int;
    __fxstat64 @ "GLIBC_2.2.5": unsafe extern "C" fn(c_int, c_int, *mut Stat) -> c_int;
    __fxstatat @ "GLIBC_2.4": unsafe extern "C" fn(c_int, c_int, *const c_char, *mut Stat, c_int) -> c_int;
    __fxstatat64 @ "GLIBC_2.4": unsafe extern "C" fn(c_int, c_int, *const c_char, *mut Stat, c_int) -> c_int;
    truncate: unsafe extern "C" fn(*const c_char, off_t) -> c_int;
    truncate64: unsafe extern "C" fn(*const c_char, off64_t) -> c_int;
    unlink: unsafe extern "C" fn(*const c_char) -> c_int;
    unlinkat: unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
    rename: unsafe extern "C" fn(*const c_char, *const c_char) -> c_int;
    renameat: unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char) -> c_int;
    renameat2: unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char, c_uint) -> c_int;
    mkdir: unsafe extern "C" fn(*const c_char, mode_t) -> c_int;
    mkdirat: unsafe extern "C" fn(c_int, *const c_char, mode_t) -> c_int;
    rmdir: unsafe extern "C" fn(*const c_char) -> c_int;
    access: unsafe extern "C" fn(*const c_char, c_int) -> c_int;
    faccessat: unsafe extern "C" fn(c_int, *const c_char, c_int, c_int) -> c_int;
    opendir: unsafe extern "C" fn(*const c_char) -> *mut DIR;
    fdopendir: unsafe extern "C" fn(c_int) -> *mut DIR;
    readdir: unsafe extern "C" fn(*mut DIR) -> *mut libc::dirent;
    readdir64: unsafe extern "C" fn(*mut DIR) -> *mut libc::dirent64;
    closedir: unsafe extern "C" fn(*mut DIR) -> c_int;
    // files on volumes (paths, attributes, cwd)
    eaccess: unsafe extern "C" fn(*const c_char, c_int) -> c_int;
    euidaccess: unsafe extern "C" fn(*const c_char, c_int) -> c_int;
    chmod: unsafe extern "C" fn(*const c_char, mode_t) -> c_int;
    fchmodat: unsafe extern "C" fn(c_int, *const c_char, mode_t, c_int) -> c_int;
    chown: unsafe extern "C" fn(*const c_char, libc::uid_t, libc::gid_t) -> c_int;
    lchown: unsafe extern "C" fn(*const c_char, libc::uid_t, libc::gid_t) -> c_int;
    fchownat: unsafe extern "C" fn(c_int, *const c_char, libc::uid_t, libc::gid_t, c_int) -> c_int;
    utimes: unsafe extern "C" fn(*const c_char, *const timeval) -> c_int;
    lutimes: unsafe extern "C" fn(*const c_char, *const timeval) -> c_int;
    utime: unsafe extern "C" fn(*const c_char, *const libc::utimbuf) -> c_int;
    utimensat: unsafe extern "C" fn(c_int, *const c_char, *const timespec, c_int) -> c_int;
    readlink: unsafe extern "C" fn(*const c_char, *mut c_char, size_t) -> ssize_t;
    readlinkat: unsafe extern "C" fn(c_int, *const c_char, *mut c_char, size_t) -> ssize_t;
    statfs: unsafe extern "C" fn(*const c_char, *mut libc::statfs) -> c_int;
    statfs64: unsafe extern "C" fn(*const c_char, *mut libc::statfs) -> c_int;
    statvfs: unsafe extern "C" fn(*const c_char, *mut libc::statvfs) -> c_int;
    statvfs64: unsafe extern "C" fn(*const c_char, *mut libc::statvfs) -> c_int;
    getxattr: unsafe extern "C" fn(*const c_char, *const c_char, *mut c_void, size_t) -> ssize_t;
    lgetxattr: unsafe extern "C" fn(*const c_char, *const c_char, *mut c_void, size_t) -> ssize_t;
    listxattr: unsafe extern "C" fn(*const c_char, *mut c_char, size_t) -> ssize_t;
    llistxattr: unsafe extern "C" fn(*const c_char, *mut c_char, size_t) -> ssize_t;
    chdir: unsafe extern "C" fn(*const c_char) -> c_int;
    getcwd: unsafe extern "C" fn(*mut c_char, size_t) -> *mut c_char;
    get_current_dir_name: unsafe extern "C" fn() -> *mut c_char;
    realpath: unsafe extern "C" fn(*const c_char, *mut c_char) -> *mut c_char;
    __realpath_chk: unsafe extern "C" fn(*const c_char, *mut c_char, size_t) -> *mut c_char;
    canonicalize_file_name: unsafe extern "C" fn(*const c_char) -> *mut c_char;
    sync: unsafe extern "C" fn();
    // files on volumes (fds)
    fstatfs: unsafe extern "C" fn(c_int, *mut libc::statfs) -> c_int;
    fstatfs64: unsafe extern "C" fn(c_int, *mut libc::statfs) -> c_int;
    fstatvfs: unsafe extern "C" fn(c_int, *mut libc::statvfs) -> c_int;
    fstatvfs64: unsafe extern "C" fn(c_int, *mut libc::statvfs) -> c_int;
    fchmod: unsafe extern "C" fn(c_int, mode_t) -> c_int;
    fchown: unsafe extern "C" fn(c_int, libc::uid_t, libc::gid_t) -> c_int;
    futimens: unsafe extern "C" fn(c_int, *const timespec) -> c_int;
    futimes: unsafe extern "C" fn(c_int, *const timeval) -> c_int;
    fchdir: unsafe extern "C" fn(c_int) -> c_int;
    flock: unsafe extern "C" fn(c_int, c_int) -> c_int;
    posix_fadvise: unsafe extern "C" fn(c_int, off_t, off_t, c_int) -> c_int;
    posix_fadvise64: unsafe extern "C" fn(c_int, off64_t, off64_t, c_int) -> c_int;
    fallocate: unsafe extern "C" fn(c_int, c_int, off_t, off_t) -> c_int;
    fallocate64: unsafe extern "C" fn(c_int, c_int, off64_t, off64_t) -> c_int;
    posix_fallocate: unsafe extern "C" fn(c_int, off_t, off_t) -> c_int;
    posix_fallocate64: unsafe extern "C" fn(c_int, off64_t, off64_t) -> c_int;
    syncfs: unsafe extern "C" fn(c_int) -> c_int;
    getdents64: unsafe extern "C" fn(c_int, *mut c_void, size_t) -> ssize_t;
    fgetxattr: unsafe extern "C" fn(c_int, *const c_char, *mut c_void, size_t) -> ssize_t;
    flistxattr: unsafe extern "C" fn(c_int, *mut c_char, size_t) -> ssize_t;
    mmap: unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void;
    mmap64: unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off64_t) -> *mut c_void;
    copy_file_range: unsafe extern "C" fn(c_int, *mut off64_t, c_int, *mut off64_t, size_t, c_uint) -> ssize_t;
    // directory streams
    readdir_r: unsafe extern "C" fn(*mut DIR, *mut libc::dirent, *mut *mut libc::dirent) -> c_int;
    readdir64_r: unsafe extern "C" fn(*mut DIR, *mut libc::dirent64, *mut *mut libc::dirent64) -> c_int;
    dirfd: unsafe extern "C" fn(*mut DIR) -> c_int;
    telldir: unsafe extern "C" fn(*mut DIR) -> libc::c_long;
    rewinddir: unsafe extern "C" fn(*mut DIR);
    seekdir: unsafe extern "C" fn(*mut DIR, libc::c_long);
    scandir: unsafe extern "C" fn(*const c_char, *mut *mut *mut libc::dirent64,
        Option<unsafe extern "C" fn(*const libc::dirent64) -> c_int>,
        Option<unsafe extern "C" fn(*mut *const libc::dirent64, *mut *const libc::dirent64) -> c_int>) -> c_int;
    scandir64: unsafe extern "C" fn(*const c_char, *mut *mut *mut libc::dirent64,
        Option<unsafe extern "C" fn(*const libc::dirent64) -> c_int>,
        Option<unsafe extern "C" fn(*mut *const libc::dirent64, *mut *const libc::dirent64) -> c_int>) -> c_int;
    // stdio
    freopen: unsafe extern "C" fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE;
    freopen64: unsafe extern "C" fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE;
    fileno: unsafe extern "C" fn(*mut FILE) -> c_int;
    fileno_unlocked: unsafe extern "C" fn(*mut FILE) -> c_int;
    // the generic system call (variadic in C: read here as its six register arguments)
    syscall: unsafe extern "C" fn(libc::c_long, libc::c_long, libc::c_long, libc::c_long, libc::c_long,
        libc::c_long, libc::c_long) -> libc::c_long;
    // temporary files
    mkstemp: unsafe extern "C" fn(*mut c_char) -> c_int;
    mkstemp64: unsafe extern "C" fn(*mut c_char) -> c_int;
    mkostemp: unsafe extern "C" fn(*mut c_char, c_int) -> c_int;
    mkostemp64: unsafe extern "C" fn(*mut c_char, c_int) -> c_int;
    mkstemps: unsafe extern "C" fn(*mut c_char, c_int) -> c_int;
    mkstemps64: unsafe extern "C" fn(*mut c_char, c_int) -> c_int;
    mkostemps: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    mkostemps64: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    mkdtemp: unsafe extern "C" fn(*mut c_char) -> *mut c_char;
    // stdio
    fopen: unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE;
    fopen64: unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE;
    fdopen: unsafe extern "C" fn(c_int, *const c_char) -> *mut FILE;
    fclose: unsafe extern "C" fn(*mut FILE) -> c_int;
    // processes
    fork: unsafe extern "C" fn() -> pid_t;
    vfork: unsafe extern "C" fn() -> pid_t;
    execve: unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
    execvpe: unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
    fexecve: unsafe extern "C" fn(c_int, *const *const c_char, *const *const c_char) -> c_int;
    posix_spawn: unsafe extern "C" fn(*mut pid_t, *const c_char, *const c_void, *const c_void,
        *const *mut c_char, *const *mut c_char) -> c_int;
    posix_spawnp: unsafe extern "C" fn(*mut pid_t, *const c_char, *const c_void, *const c_void,
        *const *mut c_char, *const *mut c_char) -> c_int;
    // fortified variants (glibc's -D_FORTIFY_SOURCE)
    __read_chk: unsafe extern "C" fn(c_int, *mut c_void, size_t, size_t) -> ssize_t;
    __pread_chk: unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t, size_t) -> ssize_t;
    __pread64_chk: unsafe extern "C" fn(c_int, *mut c_void, size_t, off64_t, size_t) -> ssize_t;
    __recv_chk: unsafe extern "C" fn(c_int, *mut c_void, size_t, size_t, c_int) -> ssize_t;
    __recvfrom_chk: unsafe extern "C" fn(c_int, *mut c_void, size_t, size_t, c_int, *mut sockaddr, *mut socklen_t) -> ssize_t;
    __poll_chk: unsafe extern "C" fn(*mut pollfd, nfds_t, c_int, size_t) -> c_int;
    __ppoll_chk: unsafe extern "C" fn(*mut pollfd, nfds_t, *const timespec, *const sigset_t, size_t) -> c_int;
}
