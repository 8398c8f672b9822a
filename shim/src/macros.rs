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

/// Defines exports that take an fd and, for a kernel fd, only pass through:
/// `fd_passthrough! { fn listen(fd: c_int, backlog: c_int) -> c_int; }`; arguments before the
/// fd go in brackets: `fn __fxstat([ver: c_int] fd: c_int, buf: *mut Stat) -> c_int;`. A library-OS fd
/// goes to `crate::libos::$name` (or, with `@files`, a file or directory to
/// `crate::vfs::$name`); the library OS's own calls (on its placeholders) go to the kernel. `=> created`
/// records the fd the call returns.
macro_rules! fd_passthrough {
    // `@files`: a library file or directory (`FdKind::File`) goes to `crate::vfs::$name`,
    // other library-OS fds to `crate::libos::$name`.
    (@files $( fn $name:ident ( $([$($p:ident : $pt:ty),*])? $fd:ident : $fdty:ty $(, $a:ident : $t:ty)* ) -> $ret:ty
        $(= sys($no:expr))? $(=> $post:ident)? ; )*) => {
        $(
            /// Interposed: a kernel fd passes straight through to libc.
            ///
            /// # Safety
            /// The C contract of the libc function of the same name.
            #[no_mangle]
            pub unsafe extern "C" fn $name($($($p: $pt,)*)? $fd: $fdty $(, $a: $t)*) -> $ret {
                fast_path!(arrakis_core::fd::table().is_kernel($fd) $(&& fd_passthrough!(@nopost $post))?,
                    $name($($($p,)*)? $fd $(, $a)*));
                #[cold]
                #[inline(never)]
                extern "C" fn slow($($($p: $pt,)*)? $fd: $fdty $(, $a: $t)*) -> $ret {
                    if arrakis_core::fd::table().is_kernel($fd) || $crate::lib::inside() {
                        let r = fd_passthrough!(@call $name ($($($p,)*)? $fd $(, $a)*) $($no)?);
                        $( let r = $crate::io::$post(r); )?
                        return r;
                    }
                    if $crate::vfs::is_file($fd) {
                        // SAFETY: the caller's arguments, unchanged; same contract.
                        return unsafe { $crate::vfs::$name($($($p,)*)? $fd $(, $a)*) };
                    }
                    // SAFETY: the caller's arguments, unchanged; same contract.
                    unsafe { $crate::libos::$name($($($p,)*)? $fd $(, $a)*) }
                }
                slow($($($p,)*)? $fd $(, $a)*)
            }
        )*
    };
    ($( fn $name:ident ( $([$($p:ident : $pt:ty),*])? $fd:ident : $fdty:ty $(, $a:ident : $t:ty)* ) -> $ret:ty
        $(= sys($no:expr))? $(=> $post:ident)? ; )*) => {
        $(
            /// Interposed: a kernel fd passes straight through to libc.
            ///
            /// # Safety
            /// The C contract of the libc function of the same name.
            #[no_mangle]
            pub unsafe extern "C" fn $name($($($p: $pt,)*)? $fd: $fdty $(, $a: $t)*) -> $ret {
                fast_path!(arrakis_core::fd::table().is_kernel($fd) $(&& fd_passthrough!(@nopost $post))?,
                    $name($($($p,)*)? $fd $(, $a)*));
                #[cold]
                #[inline(never)]
                extern "C" fn slow($($($p: $pt,)*)? $fd: $fdty $(, $a: $t)*) -> $ret {
                    if arrakis_core::fd::table().is_kernel($fd) || $crate::lib::inside() {
                        let r = fd_passthrough!(@call $name ($($($p,)*)? $fd $(, $a)*) $($no)?);
                        $( let r = $crate::io::$post(r); )?
                        return r;
                    }
                    // SAFETY: the caller's arguments, unchanged; same contract.
                    unsafe { $crate::libos::$name($($($p,)*)? $fd $(, $a)*) }
                }
                slow($($($p,)*)? $fd $(, $a)*)
            }
        )*
    };
    (@call $name:ident ( $($a:ident),* ) $no:expr) => { real!($name($($a),*) else sys($no, $($a),*)) };
    (@call $name:ident ( $($a:ident),* )) => { real!($name($($a),*)) };
    // Calls whose result must be recorded take the slow path (it is not a tail call anyway).
    (@nopost $post:ident) => { false };
}

/// The fast path of an export: when `cond` holds and the real function is resolved, a tail
/// jump to it — no call, no register saved. Everything else (resolution, library-OS fds,
/// bookkeeping) belongs in a `#[cold]` function the export tail-calls after this.
macro_rules! fast_path {
    ($cond:expr, $name:ident ( $($a:expr),* )) => {
        if $cond {
            if let Some(f) = $crate::real::fast::$name() {
                // SAFETY: the caller's arguments, passed unchanged to the real function.
                return unsafe { f($($a),*) };
            }
        }
    };
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
                fast_path!(true $(&& fd_passthrough!(@nopost $post))?, $name($($a),*));
                #[cold]
                #[inline(never)]
                extern "C" fn slow($($a: $t),*) -> $ret {
                    let r = passthrough!(@call $name ($($a),*) $($no $(, $pre)*)?);
                    $( let r = $crate::io::$post(r); )?
                    r
                }
                slow($($a),*)
            }
        )*
    };
    (@call $name:ident ( $($a:ident),* ) $no:expr $(, $pre:expr)*) => {
        real!($name($($a),*) else sys($no $(, $pre)*, $($a),*))
    };
    (@call $name:ident ( $($a:ident),* )) => { real!($name($($a),*)) };
}

/// A hand-written export with a fast path: `fast if COND;` then the full body, which goes
/// into a `#[cold]` function so that the fast path stays a frameless tail jump.
macro_rules! export {
    ($(#[$m:meta])* fn $name:ident ( $($a:ident : $t:ty),* $(,)? ) -> $ret:ty {
        fast if $cond:expr;
        $($body:tt)*
    }) => {
        $(#[$m])*
        #[no_mangle]
        pub unsafe extern "C" fn $name($($a: $t),*) -> $ret {
            fast_path!($cond, $name($($a),*));
            #[cold]
            #[inline(never)]
            unsafe extern "C" fn slow($($a: $t),*) -> $ret {
                $($body)*
            }
            // SAFETY: the caller's contract, unchanged.
            unsafe { slow($($a),*) }
        }
    };
}
