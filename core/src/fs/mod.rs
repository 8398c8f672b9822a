//! Files on virtual storage areas (VSAs): the library OS's own file system.
//!
//! A VSA is a region of storage the daemon grants as an fd (emulator backend: a preallocated
//! file under the daemon's data directory; loopback backend: memory). The library OS keeps a
//! file system of its own inside it ([`volume::Volume`], over a [`dev::BlockDev`]); programs
//! reach it through the ordinary file calls, which the shim routes here for paths under a
//! mount ([`mount`]). Other processes reach a volume through its owner by RPC ([`rpc`]).
//!
//! Every way of reaching a volume — in-process, by RPC from another process, from the FUSE
//! export — goes through one interface, [`FileSystem`]: inode numbers and names, like the
//! kernel's VFS below the path walk. Path walking, descriptors, offsets, `O_APPEND`, cwd and
//! stdio live above it (in [`mount`], [`file`] and the shim), so they are the same whichever
//! way the volume is reached.
//!
//! Module owners (see `docs/ARCHITECTURE.md`): `dev`, `layout`, `volume`, `journal`, `fsck`
//! are the on-disk file system; `rpc` the remote-volume protocol; `mount` and `file` the
//! descriptor-level layer the shim calls.

use std::fmt;

use crate::error::Errno;

pub mod dev;
pub mod file;
pub mod fsck;
pub mod journal;
pub mod layout;
pub mod mount;
pub mod rpc;
pub mod volume;

/// An inode number. Stable for the life of the file (across remounts), never reused while
/// the volume is mounted.
pub type Ino = u64;

/// The root directory's inode number.
pub const ROOT: Ino = 1;

/// Longest name of one directory entry, in bytes (Linux's `NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// What an inode is. Symbolic links, devices, FIFOs and sockets cannot be created on a volume
/// (`EPERM`, as on file systems that lack them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// A point in time: seconds and nanoseconds since the epoch (like `struct timespec`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub sec: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nsec: u32,
}

impl Time {
    /// The current wall-clock time.
    pub fn now() -> Time {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Time { sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nsec: d.subsec_nanos() }
    }
}

/// The attributes of an inode, what `stat` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// File or directory.
    pub kind: FileType,
    /// Permission bits (`0o7777` at most); the type bits are added by `stat`.
    pub perm: u32,
    /// Hard links: 1 for a file (volumes have no `link`), 2 + subdirectories for a directory.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Bytes. A directory reports its block size, like ext4.
    pub size: u64,
    /// 512-byte units allocated to the file (what `st_blocks` means).
    pub blocks: u64,
    /// Last access (only set explicitly: volumes behave as `noatime`).
    pub atime: Time,
    /// Last modification of the contents.
    pub mtime: Time,
    /// Last change of the inode.
    pub ctime: Time,
}

/// A change of attributes (`chmod`, `chown`, `truncate`, `utimensat`); `None` leaves a field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits.
    pub perm: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size: truncates or extends with zeros.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<Time>,
    /// New modification time.
    pub mtime: Option<Time>,
}

/// One directory entry. `.` and `..` are not stored; the descriptor layer adds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The name, 1 to [`NAME_MAX`] bytes, no `/` and no NUL, never `.` or `..`.
    pub name: Vec<u8>,
    /// The inode it names.
    pub ino: Ino,
    /// What that inode is.
    pub kind: FileType,
}

/// What `statfs` reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    /// Block size in bytes.
    pub block_size: u32,
    /// Blocks in the volume.
    pub blocks: u64,
    /// Free blocks.
    pub free: u64,
    /// Inodes in use.
    pub files: u64,
}

/// Where a write goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteAt {
    /// At this byte offset (`pwrite`, or `write` at the descriptor's offset).
    Offset(u64),
    /// At the end of the file, atomically with respect to other writers (`O_APPEND`).
    Append,
}

/// A `rename` flag set (`renameat2`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// `RENAME_NOREPLACE`: fail with `EEXIST` if the target exists.
    pub noreplace: bool,
    /// `RENAME_EXCHANGE`: swap the two names; both must exist.
    pub exchange: bool,
}

/// Why a file-system operation failed. Converts into [`Errno`] in one place
/// (`From<FsError> for Errno`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsError {
    /// A POSIX error the program sees as is (`ENOENT`, `EEXIST`, `ENOTEMPTY`, ...).
    Posix(Errno),
    /// The image is damaged: what was found, and where. The program sees `EIO`; the person
    /// reading the log sees the fix (`arrakis fsck`).
    Corrupt {
        /// What is wrong, naming the structure and block.
        what: String,
    },
    /// The device failed (the backing file's read/write/flush): the program sees `EIO`.
    Device {
        /// The failing operation and the OS error.
        what: String,
    },
    /// The owner of a remote volume did not answer in time, or the connection broke.
    Remote {
        /// What happened, naming the volume and the peer.
        what: String,
    },
}

impl FsError {
    /// `ENOENT`, `EEXIST`, ... as an `FsError`.
    pub const fn posix(e: Errno) -> FsError {
        FsError::Posix(e)
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsError::Posix(e) => write!(f, "{e}"),
            FsError::Corrupt { what } => {
                write!(f, "volume image is corrupt: {what}; check and repair it with `arrakis fsck`")
            }
            FsError::Device { what } => write!(f, "storage device error: {what}"),
            FsError::Remote { what } => write!(f, "remote volume: {what}"),
        }
    }
}

impl std::error::Error for FsError {}

impl From<Errno> for FsError {
    fn from(e: Errno) -> FsError {
        FsError::Posix(e)
    }
}

impl From<FsError> for Errno {
    fn from(e: FsError) -> Errno {
        match e {
            FsError::Posix(e) => e,
            FsError::Corrupt { .. } | FsError::Device { .. } => Errno::EIO,
            // What a program sees when an NFS-like peer is gone.
            FsError::Remote { .. } => Errno::EIO,
        }
    }
}

/// Result of a file-system operation.
pub type FsResult<T> = Result<T, FsError>;

/// A mounted volume, however it is reached: locally ([`volume::Volume`]), from another
/// process by RPC ([`rpc::Client`]). All methods take `&self` and are safe to call from many
/// threads at once; each is atomic with respect to the others (a reader never sees half a
/// write or half a rename).
///
/// Names are single path components ([`DirEntry::name`] rules); violating them is `EINVAL`
/// (`ENAMETOOLONG` past [`NAME_MAX`]). Operations on a directory inode that need a file
/// (`read`, `write`) fail with `EISDIR`, and the reverse with `ENOTDIR`, as Linux does.
pub trait FileSystem: Send + Sync {
    /// The inode `name` names in directory `dir` (`ENOENT`, `ENOTDIR`).
    fn lookup(&self, dir: Ino, name: &[u8]) -> FsResult<Ino>;
    /// The attributes of `ino` (`ENOENT` if it no longer exists).
    fn getattr(&self, ino: Ino) -> FsResult<Attr>;
    /// Changes attributes; returns the new ones. A size change on a directory is `EISDIR`.
    fn setattr(&self, ino: Ino, set: SetAttr) -> FsResult<Attr>;
    /// Creates a regular file `name` in `dir` owned by `uid`/`gid`, or with `exclusive` unset
    /// returns the existing file (`EISDIR` if it is a directory). `(ino, created)`.
    fn create(
        &self,
        dir: Ino,
        name: &[u8],
        perm: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
    ) -> FsResult<(Ino, bool)>;
    /// Creates directory `name` in `dir` (`EEXIST`).
    fn mkdir(&self, dir: Ino, name: &[u8], perm: u32, uid: u32, gid: u32) -> FsResult<Ino>;
    /// Removes the file `name` from `dir` (`EISDIR` for a directory). The inode lives on
    /// while it is open ([`FileSystem::open`]) and is freed at the last [`FileSystem::release`]
    /// (or at the next mount, if the process dies first).
    fn unlink(&self, dir: Ino, name: &[u8]) -> FsResult<()>;
    /// Removes the empty directory `name` from `dir` (`ENOTEMPTY`, `ENOTDIR`).
    fn rmdir(&self, dir: Ino, name: &[u8]) -> FsResult<()>;
    /// Renames atomically, replacing a target of the same type as Linux does (`EISDIR`,
    /// `ENOTDIR`, `ENOTEMPTY`, `EINVAL` for a directory into its own subtree).
    fn rename(&self, dir: Ino, name: &[u8], newdir: Ino, newname: &[u8], flags: RenameFlags) -> FsResult<()>;
    /// Up to `max` entries of `dir` from position `cookie` (0 = start), each with the cookie
    /// of the entry after it. An empty result means the end.
    fn readdir(&self, dir: Ino, cookie: u64, max: usize) -> FsResult<Vec<(DirEntry, u64)>>;
    /// Reads at `off` into `buf`; fewer bytes only at the end of the file.
    fn read(&self, ino: Ino, off: u64, buf: &mut [u8]) -> FsResult<usize>;
    /// Writes `data`; returns the offset it was written at (the old size for
    /// [`WriteAt::Append`]). All of `data` is written or an error is returned (`ENOSPC`,
    /// `EFBIG`). Once this returns, the write survives the process being killed; it
    /// survives a power cut once [`FileSystem::fsync`] returns.
    fn write(&self, ino: Ino, at: WriteAt, data: &[u8]) -> FsResult<u64>;
    /// Returns when every completed write to `ino` (and with `datasync` unset its
    /// attributes), and every completed operation on names, is durable.
    fn fsync(&self, ino: Ino, datasync: bool) -> FsResult<()>;
    /// Notes an open descriptor on `ino`, which keeps it alive after `unlink`.
    fn open(&self, ino: Ino) -> FsResult<()>;
    /// The matching close of [`FileSystem::open`].
    fn release(&self, ino: Ino) -> FsResult<()>;
    /// Sizes and counts, for `statfs`/`df`.
    fn statfs(&self) -> FsResult<StatFs>;
}
