//! Typed errors of the library OS. Every error that reaches a program is an [`Errno`]; the
//! shim stores it into the C `errno` in one place. Operations may keep richer error enums
//! internally, as long as they convert into `Errno` with a deliberate mapping (never a blanket
//! `EIO`).

use std::fmt;

/// A Linux `errno` value. The numbers are the x86_64/aarch64 Linux ones.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident = $val:expr, $text:expr;)*) => {
        impl Errno {
            $(#[doc = $text] pub const $name: Errno = Errno($val);)*

            /// The symbolic name (`"EBADF"`), or `None` for a number this table lacks.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($val => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            fn text(self) -> &'static str {
                match self.0 {
                    $($val => $text,)*
                    _ => "unknown error",
                }
            }
        }
    };
}

errnos! {
    EPERM = 1, "operation not permitted";
    ENOENT = 2, "no such file or directory";
    EINTR = 4, "interrupted system call";
    EIO = 5, "input/output error";
    ENXIO = 6, "no such device or address";
    EBADF = 9, "bad file descriptor";
    EAGAIN = 11, "resource temporarily unavailable";
    ENOMEM = 12, "cannot allocate memory";
    EACCES = 13, "permission denied";
    ENOTTY = 25, "inappropriate ioctl for device";
    EFAULT = 14, "bad address";
    EBUSY = 16, "device or resource busy";
    EEXIST = 17, "file exists";
    ENODEV = 19, "no such device";
    EXDEV = 18, "invalid cross-device link";
    ENOTDIR = 20, "not a directory";
    EISDIR = 21, "is a directory";
    EINVAL = 22, "invalid argument";
    ENFILE = 23, "too many open files in system";
    EMFILE = 24, "too many open files";
    EFBIG = 27, "file too large";
    ENOSPC = 28, "no space left on device";
    ESPIPE = 29, "illegal seek";
    EROFS = 30, "read-only file system";
    EMLINK = 31, "too many links";
    EPIPE = 32, "broken pipe";
    EDOM = 33, "numerical argument out of domain";
    ENAMETOOLONG = 36, "file name too long";
    ENOSYS = 38, "function not implemented";
    ENOTEMPTY = 39, "directory not empty";
    ENODATA = 61, "no data available";
    EOVERFLOW = 75, "value too large for defined data type";
    ESTALE = 116, "stale file handle";
    ENOTSOCK = 88, "socket operation on non-socket";
    ELOOP = 40, "too many levels of symbolic links";
    EDESTADDRREQ = 89, "destination address required";
    EMSGSIZE = 90, "message too long";
    ENOPROTOOPT = 92, "protocol not available";
    EPROTONOSUPPORT = 93, "protocol not supported";
    EAFNOSUPPORT = 97, "address family not supported by protocol";
    EADDRNOTAVAIL = 99, "cannot assign requested address";
    ECONNABORTED = 103, "software caused connection abort";
    ECONNRESET = 104, "connection reset by peer";
    EISCONN = 106, "transport endpoint is already connected";
    ETIMEDOUT = 110, "connection timed out";
    EHOSTUNREACH = 113, "no route to host";
    EALREADY = 114, "operation already in progress";
    EINPROGRESS = 115, "operation now in progress";
    EOPNOTSUPP = 95, "operation not supported";
    EADDRINUSE = 98, "address already in use";
    ENOBUFS = 105, "no buffer space available";
    ENETDOWN = 100, "network is down";
    ENETUNREACH = 101, "network is unreachable";
    ENOTCONN = 107, "transport endpoint is not connected";
    ECONNREFUSED = 111, "connection refused";
    ENOTRECOVERABLE = 131, "state not recoverable";
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.text(), self)
    }
}

impl std::error::Error for Errno {}

/// Result of a library-OS operation.
pub type SysResult<T> = Result<T, Errno>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_display() {
        assert_eq!(Errno::EBADF.name(), Some("EBADF"));
        assert_eq!(format!("{:?}", Errno(9999)), "Errno(9999)");
        assert_eq!(Errno::EPIPE.to_string(), "broken pipe (EPIPE)");
    }
}
