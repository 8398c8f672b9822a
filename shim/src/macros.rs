//! The two macros every export uses to reach the kernel.

/// `real!(read(fd, buf, n))` calls the real libc `read`; if it cannot be resolved yet (a call
/// during resolution itself) the call fails with `ENOSYS`.
/// `real!(read(fd, buf, n) else sys(SYS_read, fd, buf, n))` falls back to the raw system call
/// instead, which is what the kernel path of these functions is anyway.
macro_rules! real {
    ($name:ident ( $($a:expr),* $(,)? )) => {
        match $crate::real::$name() {
            // SAFETY: the caller's arguments are passed through unchanged to the function of
            // the same name and C type; its contract is the caller's contract.
            Some(f) => unsafe { f($($a),*) },
            None => $crate::errno::nosys(),
        }
    };
    ($name:ident ( $($a:expr),* $(,)? ) else sys($no:expr $(, $s:expr)* $(,)?)) => {
        match $crate::real::$name() {
            // SAFETY: as above.
            Some(f) => unsafe { f($($a),*) },
            // SAFETY: the raw system call takes the same arguments as the libc wrapper.
            None => $crate::FromSys::from_sys(unsafe { libc::syscall($no $(, $s)*) }),
        }
    };
}

/// Defines exports that take an fd first and, for a kernel fd, only pass through:
/// `fd_passthrough! { fn listen(fd: c_int, backlog: c_int) -> c_int; }`. A library-OS fd
/// goes to [`crate::lib::unsupported`] until its kind implements the call; the library OS's
/// own calls (on its placeholders) go to the kernel. `=> created`
/// records the fd the call returns.
macro_rules! fd_passthrough {
    ($( fn $name:ident ( $fd:ident : $fdty:ty $(, $a:ident : $t:ty)* ) -> $ret:ty
        $(= sys($no:expr))? $(=> $post:ident)? ; )*) => {
        $(
            /// Interposed: a kernel fd passes straight through to libc.
            ///
            /// # Safety
            /// The C contract of the libc function of the same name.
            #[no_mangle]
            pub unsafe extern "C" fn $name($fd: $fdty $(, $a: $t)*) -> $ret {
                if arrakis_core::fd::table().is_kernel($fd) || $crate::lib::inside() {
                    let r = fd_passthrough!(@call $name ($fd $(, $a)*) $($no)?);
                    $( let r = $crate::io::$post(r); )?
                    return r;
                }
                $crate::lib::unsupported($fd, stringify!($name))
            }
        )*
    };
    (@call $name:ident ( $($a:ident),* ) $no:expr) => { real!($name($($a),*) else sys($no, $($a),*)) };
    (@call $name:ident ( $($a:ident),* )) => { real!($name($($a),*)) };
}

/// Defines exports that always pass through (path-based calls: in this build no path belongs
/// to the library OS). `= sys(NO)` gives the raw-syscall fallback used before resolution;
/// `=> created` records the fd the call returns.
macro_rules! passthrough {
    ($( fn $name:ident ( $($a:ident : $t:ty),* ) -> $ret:ty $(= sys($no:expr $(, $pre:expr)*))? $(=> $post:ident)? ; )*) => {
        $(
            /// Interposed: passes through to libc.
            ///
            /// # Safety
            /// The C contract of the libc function of the same name.
            #[no_mangle]
            pub unsafe extern "C" fn $name($($a: $t),*) -> $ret {
                let r = passthrough!(@call $name ($($a),*) $($no $(, $pre)*)?);
                $( let r = $crate::io::$post(r); )?
                r
            }
        )*
    };
    (@call $name:ident ( $($a:ident),* ) $no:expr $(, $pre:expr)*) => {
        real!($name($($a),*) else sys($no $(, $pre)*, $($a),*))
    };
    (@call $name:ident ( $($a:ident),* )) => { real!($name($($a),*)) };
}
