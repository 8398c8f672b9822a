//! `arrakis daemon`: the control plane.
//!
//! * [`host`] — what the daemon reads from the host (`/proc`), behind a trait;
//! * [`rules`] — containers, grants and the rules that decide a request.
pub mod host;
pub mod rules;
