//! The one place where library-OS errors become the C `errno`.

use arrakis_core::Errno;

use crate::Fail;

#[inline]
pub(crate) fn get() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's life.
    unsafe { *libc::__errno_location() }
}

#[inline]
pub(crate) fn set(e: i32) {
    // SAFETY: as in `get`.
    unsafe { *libc::__errno_location() = e }
}

/// Stores `e` into `errno` and returns the call's failure value.
#[inline]
pub(crate) fn fail<T: Fail>(e: Errno) -> T {
    set(e.0);
    T::fail()
}

/// A real function that cannot be resolved (only while resolution itself is running).
#[cold]
pub(crate) fn nosys<T: Fail>() -> T {
    fail(Errno::ENOSYS)
}

/// Saves `errno` and restores it on drop: for work the shim does behind a call's back
/// (logging, bookkeeping) that must not change what the program sees.
pub(crate) struct Saved(i32);

impl Saved {
    pub(crate) fn new() -> Saved {
        Saved(get())
    }
}

impl Drop for Saved {
    fn drop(&mut self) {
        set(self.0)
    }
}
