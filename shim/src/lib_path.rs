//! Entering the library OS from an export: a per-thread depth counter (calls the library OS
//! makes on its own behalf go straight to the kernel), `catch_unwind` so no panic crosses
//! `extern "C"`, and the mapping of errors to `errno`.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use arrakis_core::{Errno, SysResult};

use crate::{errno, Fail};

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// True while this thread runs library-OS code: its own calls then go to the kernel.
#[inline]
pub(crate) fn inside() -> bool {
    DEPTH.try_with(|d| d.get() != 0).unwrap_or(true)
}

struct Depth;

impl Depth {
    fn enter() -> Depth {
        let _ = DEPTH.try_with(|d| d.set(d.get() + 1));
        Depth
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        let _ = DEPTH.try_with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Runs library-OS code for the export `call`. A panic becomes `ENOTRECOVERABLE` and one log
/// line naming the call; an error becomes its `errno`.
pub(crate) fn guarded<T: Fail>(call: &'static str, f: impl FnOnce() -> SysResult<T>) -> T {
    let _depth = Depth::enter();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => errno::fail(e),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(call, panic = %what, "library OS panicked; the call fails with ENOTRECOVERABLE");
            errno::fail(Errno::ENOTRECOVERABLE)
        }
    }
}
