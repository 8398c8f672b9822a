//! The process's one network world: the stack, the sockets' state, the event registry, all
//! behind one mutex; the clock; waiting on futexes; the progress thread.
//!
//! Locking: every library-OS socket and epoll operation takes [`Net::lock`] for the few
//! microseconds it needs and never sleeps while holding it. A thread that must wait (a
//! blocking `recv`, `accept`, `connect`) polls its socket's [`Wait`] word for a bounded time
//! ([`Wait::spin`], `ARRAKIS_SPIN_US`), then sleeps on it with `FUTEX_WAIT`; whoever changes the
//! socket's state under the lock bumps the word, and sleepers are woken once the lock is
//! released ([`Guard`]).
//!
//! Signals: a futex wait without a timeout is restarted by the kernel after a handler with
//! `SA_RESTART` and fails with `EINTR` after one without — exactly what Linux does for a
//! blocking socket call — and with a timeout (`SO_RCVTIMEO`) it fails with `EINTR` after any
//! handler, also as Linux. So the library OS needs no signal bookkeeping of its own (the one
//! exception, a signal during the poll before the sleep, is described at [`Wait::spin`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant as StdInstant};

use arrakis_backends::any::AnyDevice;
use arrakis_backends::emulator::nic::DeviceProbe;
use arrakis_backends::emulator::ring::Doorbell;
use arrakis_backends::emulator::EmulatorNic;
use arrakis_backends::loopback::Loopback;
use arrakis_backends::NetDevice;
use crossbeam_utils::CachePadded;
use rustix::event::epoll;
use rustix::thread::futex;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpCidr};

use super::hash::FastMap;
use super::socket::SockState;
use super::stack::{Buffers, Ephemeral, ShardId, Stack};
use crate::error::{Errno, SysResult};
use crate::event::Registry;

/// A futex word threads sleep on until something they wait for may have happened.
#[derive(Debug, Default)]
pub struct Wait {
    gen: AtomicU32,
    waiters: AtomicU32,
    /// Spins in a row that ended without the word moving (see [`Wait::spin`]).
    misses: AtomicU32,
    /// What a receive on the socket would find, as of the last pass that looked at it:
    /// [`RX_UNKNOWN`], [`RX_IDLE`] or [`RX_READY`] (see [`Wait::recv_would_block`] and
    /// [`Wait::recv_ready`]).
    rx: AtomicU8,
}

/// [`Wait`]'s receive states. Unknown: a pass changed the socket and no look followed, or the
/// answer needs the lock (an error, end of input, a listener, no connection).
pub(crate) const RX_UNKNOWN: u8 = 0;
/// A receive would wait: nothing queued, no end of input, no error.
pub(crate) const RX_IDLE: u8 = 1;
/// A receive would return data (a connected stream with bytes queued, a datagram queued),
/// and nothing else is to report (no error, no end of input).
pub(crate) const RX_READY: u8 = 2;

impl Wait {
    /// The current generation; pass it to [`Wait::sleep`] after checking the condition.
    pub fn seen(&self) -> u32 {
        self.gen.load(SeqCst)
    }

    /// Something changed: wake every sleeper (one system call, only if there are sleepers).
    pub fn notify(&self) {
        if self.bump() {
            self.wake();
        }
    }

    /// Something changed: the generation moves on. `true` if a thread sleeps (or is about
    /// to) on the word and needs [`Wait::wake`]. A sleeper that registers after this reads
    /// the new generation in `FUTEX_WAIT` and does not sleep, so the wake may come later,
    /// after the world lock is released (see [`Guard`]).
    pub(crate) fn bump(&self) -> bool {
        self.gen.fetch_add(1, SeqCst);
        self.waiters.load(SeqCst) != 0
    }

    /// Whether a nonblocking receive may answer `EAGAIN` without the world lock: the last
    /// pass that looked at the socket found its receive queue empty and nothing to report
    /// (no end of input, no error), and no pass has changed the socket since
    /// ([`Inner::sock_mut`] resets the state, [`Inner::refresh`] sets it anew). The caller also
    /// checks that no frame waits on the device ([`device_idle`]); a frame a pass on another
    /// thread is processing at this moment is, as on Linux, input that arrives just after the
    /// call.
    pub(crate) fn recv_would_block(&self) -> bool {
        self.rx.load(SeqCst) == RX_IDLE
    }

    /// Whether a receive would return data now, without the world lock: the last pass that
    /// looked at the socket found bytes (or a datagram) queued and nothing else to report,
    /// and no pass has changed the socket since. A `poll` for input alone answers from it
    /// (see [`Socket::readable_now`](super::socket::Socket::readable_now)); another thread
    /// that takes the data at this moment is, as on Linux, a read that came just after.
    pub(crate) fn recv_ready(&self) -> bool {
        // Not in a child that `fork` detached from its parent's NIC: its inherited sockets'
        // states are the parent's, and only the lock knows they are gone.
        self.rx.load(SeqCst) == RX_READY && !PROBE_OFF.load(Relaxed)
    }

    fn set_rx(&self, state: u8) {
        // A store only on a change: the line is read by every nonblocking receive.
        if self.rx.load(Relaxed) != state {
            self.rx.store(state, SeqCst);
        }
    }

    /// Wakes every sleeper.
    fn wake(&self) {
        let _ = futex::wake(&self.gen, futex::Flags::PRIVATE, i32::MAX as u32);
    }

    /// Busy-polls the word before a sleep, for at most the spin time (`ARRAKIS_SPIN_US`,
    /// [`set_spin_us`]) and never past `deadline`: `true` as soon as the generation has moved
    /// past `seen`, `false` when the time is up (then sleep with [`Wait::sleep`]).
    ///
    /// Polling pays off when the thread that will bump the word runs on another CPU: the
    /// change is seen within a fraction of a microsecond, with no `FUTEX_WAKE` for the waker
    /// and no wake-up of an idle CPU for the waiter (tens of microseconds on a VM's vCPUs).
    /// When the waker shares this thread's CPU, polling only delays it; such spins end
    /// without the word moving, so after [`SPIN_MISSES`] misses in a row on this word only
    /// every [`SPIN_PROBE`]th wait polls (to notice when the threads move apart), until a
    /// spin succeeds again.
    ///
    /// Signals: a handler for a signal that arrives while the thread polls runs at once (the
    /// thread is in user space), and the library OS cannot see that it ran without
    /// interposing `sigaction`. So the call does not end with `EINTR` for it: it goes on
    /// waiting, as if the signal had come just before the call. Linux's own `busy_poll`
    /// stops polling on a pending signal and then fails the call with `EINTR` (or restarts
    /// it). The difference is confined to signals landing in the first `ARRAKIS_SPIN_US` of a
    /// wait on a word whose recent spins succeeded; signals during the `FUTEX_WAIT` that
    /// follows behave as before, and `ARRAKIS_SPIN_US=0` restores the exact behaviour.
    pub fn spin(&self, seen: u32, deadline: Option<StdInstant>) -> bool {
        let Some(end) = spin_end(&self.misses, deadline) else { return false };
        let probe = probe();
        if let Some(p) = probe {
            RING_POLLERS.fetch_add(1, SeqCst);
            p.suppress();
        }
        let moved = loop {
            for _ in 0..8 {
                std::hint::spin_loop();
            }
            // A frame for the device: run the stack here (it bumps the word if the frame
            // concerns this waiter) rather than ring the progress thread.
            if probe.is_some_and(DeviceProbe::pending) {
                drop(net().lock());
            }
            if self.gen.load(SeqCst) != seen {
                self.misses.store(0, Relaxed);
                break true;
            }
            if StdInstant::now() >= end {
                break false;
            }
        };
        if probe.is_some() {
            // Before the rearm (see `RING_POLLERS`).
            RING_POLLERS.fetch_sub(1, SeqCst);
        }
        if probe.is_some_and(DeviceProbe::rearm) {
            drop(net().lock());
            if self.gen.load(SeqCst) != seen {
                self.misses.store(0, Relaxed);
                return true;
            }
        }
        moved
    }

    /// Sleeps until [`Wait::notify`] after generation `seen`, a signal, or `deadline`.
    /// `Err(EINTR)` after a signal handler ran (see the module comment for `SA_RESTART`),
    /// `Err(ETIMEDOUT)` at the deadline.
    pub fn sleep(&self, seen: u32, deadline: Option<StdInstant>) -> SysResult<()> {
        let ts = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(StdInstant::now());
                if left.is_zero() {
                    return Err(Errno::ETIMEDOUT);
                }
                Some(rustix::time::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                })
            }
        };
        // Frames this sleep waits for reach the progress thread by the doorbell: ask for it.
        let Some(asleep) = device_sleep_begin(true) else { return Ok(()) };
        self.waiters.fetch_add(1, SeqCst);
        let r = futex::wait(&self.gen, futex::Flags::PRIVATE, seen, ts.as_ref());
        self.waiters.fetch_sub(1, SeqCst);
        drop(asleep);
        match r {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::AGAIN => Ok(()),
            Err(e) if e == rustix::io::Errno::INTR => Err(Errno::EINTR),
            Err(e) if e == rustix::io::Errno::TIMEDOUT => Err(Errno::ETIMEDOUT),
            Err(e) => Err(Errno(e.raw_os_error())),
        }
    }
}

/// Default busy-poll time before a blocking call sleeps, in microseconds (see
/// [`Wait::spin`]): about two cross-CPU wake-ups on the VMs this is measured on.
pub const DEFAULT_SPIN_US: u32 = 50;

/// The busy-poll time; [`set_spin_us`] changes it (`ARRAKIS_SPIN_US`), 0 disables polling.
static SPIN_US: AtomicU32 = AtomicU32::new(DEFAULT_SPIN_US);

/// Default ceiling of the device spin's learnt length ([`device_waited`]), in microseconds:
/// above a flush of these VMs' disks (≈120–190 µs), so a client whose server answers after an
/// `fsync` still catches the answer in its spin.
pub const DEFAULT_SPIN_MAX_US: u32 = 500;

/// The ceiling of the learnt device spin; [`set_spin_max_us`] changes it
/// (`ARRAKIS_SPIN_MAX_US`).
static SPIN_MAX_US: AtomicU32 = AtomicU32::new(DEFAULT_SPIN_MAX_US);

/// The device spin's learnt length in nanoseconds ([`device_waited`]); 0: the spin time.
static DEVICE_BUDGET_NS: AtomicU64 = AtomicU64::new(0);

/// The busy-poll time of [`Wait::spin`]: `ARRAKIS_SPIN_US`.
fn spin_time() -> Duration {
    Duration::from_micros(u64::from(SPIN_US.load(Relaxed)))
}

/// The busy-poll time of [`device_spin`]: what the last waits took ([`device_waited`]),
/// never below `ARRAKIS_SPIN_US` nor above `ARRAKIS_SPIN_MAX_US`.
fn device_spin_time() -> Duration {
    let base = u64::from(SPIN_US.load(Relaxed)) * 1000;
    let max = (u64::from(SPIN_MAX_US.load(Relaxed)) * 1000).max(base);
    let learnt = DEVICE_BUDGET_NS.load(Relaxed);
    Duration::from_nanos(if learnt == 0 { base } else { learnt.clamp(base, max) })
}

/// A library-OS `epoll_wait`, `poll` or `select` that found nothing ready at once ended after
/// `took`, with library-OS events (`lib`) or without (kernel fds, a timeout): the next
/// [`device_spin`] of the process lasts about as long as this wait did — a quarter more and
/// 2 µs — between `ARRAKIS_SPIN_US` and `ARRAKIS_SPIN_MAX_US`. A wait longer than the ceiling,
/// or one that ended for a kernel fd (which the spin does not watch: spinning longer would
/// only delay it), sets it back to `ARRAKIS_SPIN_US`.
///
/// This is what lets a client whose server takes longer than the spin time to answer (redis
/// with `appendfsync always` flushes a disk before every reply) keep catching the answer in
/// its spin, instead of sleeping in the kernel and paying a cross-CPU wake-up per request.
/// Only waits the spin could have caught teach it; spins that keep missing still back off
/// ([`SPIN_MISSES`]).
pub fn device_waited(took: Duration, lib: bool) {
    let t = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
    let max = u64::from(SPIN_MAX_US.load(Relaxed)) * 1000;
    let b = if !lib || t > max { 0 } else { t + t / 4 + 2_000 };
    if DEVICE_BUDGET_NS.load(Relaxed) != b {
        DEVICE_BUDGET_NS.store(b, Relaxed);
    }
}

/// Sets the ceiling of the device spin's learnt length, in microseconds (at or below
/// `ARRAKIS_SPIN_US`: no learning).
pub fn set_spin_max_us(us: u32) {
    SPIN_MAX_US.store(us, Relaxed);
}

/// Spins in a row on one word that ended without a change before polling backs off.
const SPIN_MISSES: u32 = 2;
/// While backed off, one wait in this many polls.
const SPIN_PROBE: u32 = 256;

/// The rx ring of a device whose frames come from another process (the emulator's NIC), and
/// the pid of the process that owns it (a forked child must not touch it): waiting threads
/// poll it while they spin, so that a frame that arrives is taken by the thread that waits
/// for it, with no doorbell and no wake-up of the progress thread.
static PROBE: OnceLock<(u32, DeviceProbe)> = OnceLock::new();

// The counters and flags below that threads write on every wait (spinners, sleepers) each
// have a cache line of their own (`CachePadded`): side by side, as the linker had put them,
// every sleeper's count went through the line that every probe, spin and sleep read.

/// A thread is in [`device_spin`]: one poller is enough (fifty threads of one program
/// spinning on one ring only take the CPUs from the threads that would answer them).
static DEVICE_SPINNER: CachePadded<AtomicBool> = CachePadded::new(AtomicBool::new(false));

/// Threads polling the device's rx rings ([`device_spin`], [`Wait::spin`]): while there are
/// any, the producers need not ring and the progress thread does not arm the rings when it
/// goes to sleep (it would undo their suppression, and every frame would then ring it awake
/// for nothing — once per request of a client and server both polling). A poller counts
/// itself before it suppresses the doorbells and uncounts itself before it re-arms them, so
/// the progress thread that finds none is sure to arm them itself, and one that finds one
/// can leave the arming to it.
static RING_POLLERS: CachePadded<AtomicU32> = CachePadded::new(AtomicU32::new(0));

/// Program threads asleep in the kernel until frames come (epoll, poll, a blocking call's
/// futex) that asked the rings for a doorbell first ([`device_sleep_begin`]): while there are
/// any, the progress thread keeps the rings armed when it sleeps, even in its quiet mode.
static DEVICE_SLEEPERS: CachePadded<AtomicU32> = CachePadded::new(AtomicU32::new(0));

/// A program thread counted in [`DEVICE_SLEEPERS`]; uncounts it when dropped.
#[must_use]
pub struct DeviceSleep(bool, bool);

impl Drop for DeviceSleep {
    fn drop(&mut self) {
        if self.1 {
            NEEDS_PROGRESS.fetch_sub(1, SeqCst);
        }
        if self.0 {
            DEVICE_SLEEPERS.fetch_sub(1, SeqCst);
        }
    }
}

/// Of [`DEVICE_SLEEPERS`], those that hold no doorbell of their own (a blocking call's futex
/// sleep, a `poll` without the doorbell): a frame reaches them only through the progress
/// thread, which must listen to the doorbell while there are any.
static NEEDS_PROGRESS: CachePadded<AtomicU32> = CachePadded::new(AtomicU32::new(0));

/// The progress thread sleeps deaf: without the doorbell in its set, because the program ran
/// the stack less than [`PROGRESS_QUIET`] ago and no sleeper needs it ([`NEEDS_PROGRESS`]).
/// A frame that rings then wakes no one but a program thread asleep in its own epoll or
/// `poll` with the doorbell; one the program is too busy to sleep for waits (its doorbell
/// write stays in the eventfd) for the program's next call, and without one, for the end of
/// the deaf sleep. Before this, every ring that found the program's threads awake woke the
/// progress thread, which on a shared CPU then ran in the program's place (or fought it for
/// the lock). A sleeper that needs the thread and sees the flag writes the kick.
static PROGRESS_DEAF: CachePadded<AtomicBool> = CachePadded::new(AtomicBool::new(false));

/// A program thread is about to sleep in the kernel until something the device brings: it
/// counts itself and asks the rings for a doorbell (unless a poller polls them: it asks when
/// it stops), so a frame wakes it — or the progress thread, which then runs the stack and
/// wakes it — whatever the progress thread's mode ([`PROGRESS_QUIET`]). `None` if a frame
/// is waiting already: the stack ran on it, look again instead of sleeping. Over a device
/// without a doorbell, nothing to do.
pub fn device_sleep_begin(needs_progress: bool) -> Option<DeviceSleep> {
    let Some(p) = probe() else { return Some(DeviceSleep(false, false)) };
    DEVICE_SLEEPERS.fetch_add(1, SeqCst);
    if needs_progress {
        NEEDS_PROGRESS.fetch_add(1, SeqCst);
        // Counted first, then the flag: a progress thread that went deaf before the count
        // is kicked awake to listen.
        if PROGRESS_DEAF.load(SeqCst) {
            if let Some(k) = NET.get().and_then(|n| n.kick.get()) {
                let _ = rustix::io::write(k, &1u64.to_ne_bytes());
            }
        }
    }
    let asleep = DeviceSleep(true, needs_progress);
    if RING_POLLERS.load(SeqCst) == 0 && p.rearm() {
        drop(asleep);
        drop(net().lock());
        return None;
    }
    Some(asleep)
}

/// How long after a program thread last ran the stack the progress thread stays in its quiet
/// mode: it leaves the rings unarmed (frames wait in them for the program's next call, with
/// no doorbell per frame and no wake-up of this thread to take them while the program is busy
/// elsewhere, e.g. in a server's `fsync`) and wakes only for the stack's deadlines, a kick, a
/// doorbell that a sleeping thread asked for, or the end of the quiet time. So a program
/// that stops calling has its frames taken at most this late; one that sleeps waiting for
/// them asks for the doorbell itself ([`device_sleep_begin`]).
pub const PROGRESS_QUIET: Duration = Duration::from_micros(200);

/// The shortest sleep of the progress thread in its quiet mode.
const QUIET_SLEEP_MIN: Duration = Duration::from_micros(20);

thread_local! {
    /// This thread is the progress thread (its runs of the stack are not the program's).
    static IS_PROGRESS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Spins of [`device_spin`] in a row that ended with nothing before it backs off.
static DEVICE_MISSES: CachePadded<AtomicU32> = CachePadded::new(AtomicU32::new(0));

/// Set in a forked child: the probe is the parent's.
static PROBE_OFF: AtomicBool = AtomicBool::new(false);

/// Whether no frame waits for this process on the device (its rx ring and the bindings'
/// summary pages are empty), read without the world lock; `false` when the device has no
/// probe (the loopback, a forked child), whose frames only a pass can see.
pub(crate) fn device_idle() -> bool {
    probe().is_some_and(|p| !p.pending())
}

/// The device's rx probe, if this process owns one.
fn probe() -> Option<&'static DeviceProbe> {
    if PROBE_OFF.load(Relaxed) {
        return None;
    }
    PROBE.get().map(|(_, p)| p)
}

/// Busy-polls the device's rx ring for at most the spin time (`ARRAKIS_SPIN_US`, or longer
/// when recent waits took longer: [`device_waited`]) and never past `deadline`, before a
/// caller that found nothing ready sleeps in the kernel (an epoll or poll wait): returns
/// `true` after a frame came in and the stack ran on it (the caller looks again), `false`
/// when the time is up (the caller sleeps; the rx ring rings the progress thread again, as
/// before the spin). While it polls, the producers do not ring the doorbell. Backs off when
/// spins find nothing ([`device_spin_end`]). Over a device without a probe (the loopback),
/// returns `false` at once.
pub fn device_spin(deadline: Option<StdInstant>) -> bool {
    let Some(p) = probe() else { return false };
    // A load first: the fifty threads of a client that find a spinner at work only read
    // the line instead of taking it from the spinner's CPU.
    if DEVICE_SPINNER.load(Relaxed) || DEVICE_SPINNER.swap(true, SeqCst) {
        return false;
    }
    let Some(end) = device_spin_end(deadline) else {
        DEVICE_SPINNER.store(false, SeqCst);
        return false;
    };
    RING_POLLERS.fetch_add(1, SeqCst);
    p.suppress();
    // Threads this one woke (its last stack run took their frames) may be queued on this CPU
    // behind the spin: let them run first. Only then — a yield in every spin let the
    // scheduler hand the CPU back to the spinner while a peer process on the same CPU was not
    // eligible (redis at one connection, both ends on one CPU: p50 23 → 39 µs).
    if WOKE_THREADS.try_with(|c| c.replace(false)).unwrap_or(false) {
        rustix::thread::sched_yield();
    }
    let mut hit = false;
    'spin: loop {
        for _ in 0..16 {
            std::hint::spin_loop();
            if p.pending() {
                hit = true;
                break 'spin;
            }
        }
        if StdInstant::now() >= end {
            break;
        }
    }
    RING_POLLERS.fetch_sub(1, SeqCst);
    hit |= p.rearm();
    DEVICE_SPINNER.store(false, SeqCst);
    if hit {
        DEVICE_MISSES.store(0, Relaxed);
        DEVICE_BACKOFF_UNTIL.store(0, Relaxed);
        // Runs the stack on the frames and wakes whoever they concern.
        drop(net().lock());
    }
    hit
}

/// The device's doorbell fd (the emulator NIC's), for a kernel wait that should wake on
/// frames too ([`crate::event::DEVICE_DATUM`]); `None` over the loopback or in a forked child.
pub fn device_doorbell() -> Option<std::os::fd::RawFd> {
    probe()?;
    let fd = DOORBELL.load(Relaxed);
    (fd >= 0).then_some(fd)
}

/// Takes the device's doorbell for one `poll` wait: at most one thread at a time sleeps with
/// it in its kernel set (a doorbell would wake every one of them, and all would fight for the
/// lock over one frame). `None` if another thread has it or there is none; give it back with
/// [`give_doorbell`].
pub fn take_doorbell() -> Option<std::os::fd::RawFd> {
    let fd = device_doorbell()?;
    (!BELL_TAKEN.swap(true, SeqCst)).then_some(fd)
}

/// Whether the device's doorbell is there for [`take_doorbell`] now (a device with one, and
/// no thread holds it).
pub fn doorbell_free() -> bool {
    device_doorbell().is_some() && !BELL_TAKEN.load(SeqCst)
}

/// Gives back the doorbell taken with [`take_doorbell`].
pub fn give_doorbell() {
    BELL_TAKEN.store(false, SeqCst);
}

static BELL_TAKEN: CachePadded<AtomicBool> = CachePadded::new(AtomicBool::new(false));

/// The device's doorbell fd (it lives as long as the world; -1 without one).
static DOORBELL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// When a busy-poll that may start now must end: the spin time from now, never past `deadline`.
/// `None` when it must not start: polling is off (`ARRAKIS_SPIN_US=0`), `deadline` has
/// passed (the caller's sleep reports it), or the last [`SPIN_MISSES`] polls counted in
/// `misses` found nothing (then only every [`SPIN_PROBE`]th wait polls, until one succeeds and
/// the caller resets `misses`). Counts this poll in `misses`.
fn spin_end(misses: &AtomicU32, deadline: Option<StdInstant>) -> Option<StdInstant> {
    if SPIN_US.load(Relaxed) == 0 {
        return None;
    }
    let m = misses.fetch_add(1, Relaxed);
    if m >= SPIN_MISSES && !(m - SPIN_MISSES).is_multiple_of(SPIN_PROBE) {
        return None;
    }
    spin_until(StdInstant::now(), spin_time(), deadline)
}

/// The end of a spin of length `time` starting `now`, never past `deadline`; `None` if the
/// deadline has passed.
fn spin_until(now: StdInstant, time: Duration, deadline: Option<StdInstant>) -> Option<StdInstant> {
    let end = now + time;
    match deadline {
        Some(d) if now >= d => None,
        Some(d) => Some(end.min(d)),
        None => Some(end),
    }
}

/// A device spin that finds no frame makes the next ones wait this many times its length
/// once [`SPIN_MISSES`] spins in a row have missed: at most one spin in this many is wasted
/// while the threads that would answer share this thread's CPU.
const DEVICE_BACKOFF: u32 = 20;

/// Until when device spins back off, in nanoseconds after [`backoff_base`].
static DEVICE_BACKOFF_UNTIL: CachePadded<AtomicU64> = CachePadded::new(AtomicU64::new(0));

fn backoff_base() -> StdInstant {
    static BASE: OnceLock<StdInstant> = OnceLock::new();
    *BASE.get_or_init(StdInstant::now)
}

/// When a [`device_spin`] that may start now must end (as [`spin_end`], with the learnt
/// length). Its back-off is measured in time rather than in waits: after [`SPIN_MISSES`]
/// misses in a row no spin starts for [`DEVICE_BACKOFF`] times the spin's length, and the
/// first spin after that backs off again at once if it misses too. A server whose answers
/// are sometimes slower than the spin (a disk flush's jitter) thus loses its polling for a
/// few milliseconds, not for hundreds of requests, while threads sharing one CPU waste at
/// most one spin in [`DEVICE_BACKOFF`].
fn device_spin_end(deadline: Option<StdInstant>) -> Option<StdInstant> {
    if SPIN_US.load(Relaxed) == 0 {
        return None;
    }
    let now = StdInstant::now();
    let since = u64::try_from(now.saturating_duration_since(backoff_base()).as_nanos()).unwrap_or(u64::MAX);
    if since < DEVICE_BACKOFF_UNTIL.load(Relaxed) {
        return None;
    }
    let time = device_spin_time();
    if DEVICE_MISSES.fetch_add(1, Relaxed) + 1 >= SPIN_MISSES {
        // This spin is the last chance: if it misses too, the next back off (the misses are
        // reset by a hit).
        let off = u64::try_from((time * DEVICE_BACKOFF).as_nanos()).unwrap_or(u64::MAX);
        DEVICE_BACKOFF_UNTIL.store(since.saturating_add(off), Relaxed);
        DEVICE_MISSES.store(SPIN_MISSES, Relaxed);
        // The spin itself still runs; a hit lifts the back-off.
    }
    spin_until(now, time, deadline)
}

/// Sets the busy-poll time of blocking calls, in microseconds (0: sleep at once).
pub fn set_spin_us(us: u32) {
    SPIN_US.store(us, Relaxed);
}

/// Everything the lock protects.
pub(crate) struct Inner {
    /// The stack over the backend's device (the loopback today; the emulator's NIC once the
    /// process is attached to a switch).
    pub(crate) stack: Stack<AnyDevice>,
    /// Sockets by id (`Socket::id`); `None` marks a free slot.
    pub(crate) socks: Vec<Option<SockState>>,
    free: Vec<usize>,
    /// Connection and UDP shards → their socket; listener shards → every socket listening
    /// there (several with `SO_REUSEPORT`).
    pub(crate) by_shard: FastMap<ShardId, Vec<usize>>,
    touched: Vec<ShardId>,
    /// Scratch list for `pump` (kept to avoid an allocation per pump).
    ids_spare: Vec<usize>,
    pub(crate) ev: Registry,
    now: Instant,
    /// Words with sleepers bumped under the lock; woken after it is released.
    wakes: Vec<Arc<Wait>>,
    /// The progress thread's word needs a wake after the lock is released.
    wake_timer: bool,
    /// Doorbells of other processes (the switch, binding peers) the stack's passes owe:
    /// rung after the lock is released (see [`EmulatorNic::take_rings`]).
    bells: Vec<Arc<Doorbell>>,
    /// A forked child's copy of a world over the emulator's NIC: the rings belong to the
    /// parent (two producers on one ring would corrupt it), so the device was swapped for an
    /// idle loopback, the stack never runs again and every inherited socket answers
    /// [`DETACHED`].
    detached: bool,
}

/// What a forked child's calls on library-OS sockets it inherited over the emulator's NIC
/// fail with: the network (its parent's NIC) is down for this process.
pub const DETACHED: Errno = Errno::ENETDOWN;

impl Inner {
    pub(crate) fn sock(&self, id: usize) -> SysResult<&SockState> {
        if self.detached {
            return Err(DETACHED);
        }
        self.socks.get(id).and_then(Option::as_ref).ok_or(Errno::EBADF)
    }

    /// The socket's state, to change: its lock-free `EAGAIN` answer is withdrawn until the
    /// next [`Inner::refresh`] (a change that is not followed by one leaves receives on the
    /// locked path, never answers stale).
    pub(crate) fn sock_mut(&mut self, id: usize) -> SysResult<&mut SockState> {
        let s = self.slot_mut(id)?;
        s.wait.set_rx(RX_UNKNOWN);
        Ok(s)
    }

    /// A socket's watchers, to change: registering or removing a watcher changes nothing a
    /// receive would find, so the lock-free hints stay (unlike [`Inner::sock_mut`]).
    pub(crate) fn watchers_mut(&mut self, id: usize) -> SysResult<&mut Vec<crate::event::Watcher>> {
        Ok(&mut self.slot_mut(id)?.watchers)
    }

    /// A socket's state, with no hint touched (for [`Inner::sock_mut`] and
    /// [`Inner::watchers_mut`]).
    fn slot_mut(&mut self, id: usize) -> SysResult<&mut SockState> {
        if self.detached {
            return Err(DETACHED);
        }
        self.socks.get_mut(id).and_then(Option::as_mut).ok_or(Errno::EBADF)
    }

    pub(crate) fn add_sock(&mut self, s: SockState) -> usize {
        match self.free.pop() {
            Some(id) => {
                self.socks[id] = Some(s);
                id
            }
            None => {
                self.socks.push(Some(s));
                self.socks.len() - 1
            }
        }
    }

    pub(crate) fn drop_sock(&mut self, id: usize) -> Option<SockState> {
        let s = self.socks.get_mut(id)?.take();
        if s.is_some() {
            self.free.push(id);
        }
        s
    }

    pub(crate) fn attach(&mut self, shard: ShardId, id: usize) {
        let v = self.by_shard.entry(shard).or_default();
        if !v.contains(&id) {
            v.push(id);
        }
    }

    pub(crate) fn detach(&mut self, shard: ShardId, id: usize) {
        if let Some(v) = self.by_shard.get_mut(&shard) {
            v.retain(|&x| x != id);
            if v.is_empty() {
                self.by_shard.remove(&shard);
            }
        }
    }

    /// The stack's clock.
    pub(crate) fn now(&self) -> Instant {
        self.now
    }

    /// The pass as the lock is released: it sends what the call queued. The bindings' rings
    /// were read as the lock was taken and are read again by the next taker, a poller or a
    /// sleeper's last look, so this pass reads the NIC's own rx ring only
    /// (`EmulatorNic::set_binding_rx`).
    fn pump_release(&mut self) {
        if let AnyDevice::Emulator(n) = self.stack.device_mut() {
            n.set_binding_rx(false);
        }
        self.pump();
        if let AnyDevice::Emulator(n) = self.stack.device_mut() {
            n.set_binding_rx(true);
        }
    }

    /// Runs the stack and tells everyone whose sockets may have changed.
    pub(crate) fn pump(&mut self) {
        if self.detached {
            return;
        }
        let now = self.now;
        self.stack.poll(now);
        if let AnyDevice::Emulator(n) = self.stack.device_mut() {
            n.take_rings(&mut self.bells);
            if n.wants_bindings() {
                for f in super::control::queue_bindings(n.take_wanted()) {
                    n.binding_refused(f);
                }
            }
        }
        let mut touched = std::mem::take(&mut self.touched);
        self.stack.take_touched(&mut touched);
        touched.sort_unstable();
        touched.dedup();
        let mut ids = std::mem::take(&mut self.ids_spare);
        for shard in &touched {
            let Some(v) = self.by_shard.get(shard) else { continue };
            ids.clear();
            ids.extend_from_slice(v);
            for &id in &ids {
                // Wake sleepers only when something they could wait for moved: a shard is
                // touched by every call on it, and a wake-up for nothing would turn a
                // blocked call into a busy loop.
                if self.refresh(id) {
                    self.wake_later(id);
                }
            }
        }
        self.ids_spare = ids;
        self.touched = touched;
        // ICMP port unreachable: a connected UDP socket to that peer gets ECONNREFUSED.
        for (port, remote) in std::mem::take(&mut self.stack.icmp_errors) {
            if let Some(id) = super::socket::udp_refused(self, port, remote) {
                self.changed(id);
            }
        }
    }

    /// Bumps a socket's word; its sleepers are woken once the lock is released.
    fn wake_later(&mut self, id: usize) {
        let Ok(s) = self.sock(id) else { return };
        if s.wait.bump() && !self.wakes.iter().any(|w| Arc::ptr_eq(w, &s.wait)) {
            let w = s.wait.clone();
            self.wakes.push(w);
        }
    }

    /// A socket's state may have changed: bring its flags up to date and wake whoever waits.
    pub(crate) fn changed(&mut self, id: usize) {
        self.wake_later(id);
        self.refresh(id);
    }

    /// Brings a socket's flags and its epolls' ready lists up to date after a call on it,
    /// without waking its sleepers (the caller is the one that would sleep next). Returns
    /// whether its readiness or its queues changed since the last look.
    pub(crate) fn refresh(&mut self, id: usize) -> bool {
        let moved = self.refresh_flags(id);
        // Last, after every change of the pass to the socket (`sock_mut` withdraws it).
        let state = super::socket::rx_state(self, id);
        if let Ok(s) = self.sock(id) {
            s.wait.set_rx(state);
        }
        moved
    }

    fn refresh_flags(&mut self, id: usize) -> bool {
        super::socket::sync(self, id);
        let ev = super::socket::events(self, id);
        let rx = super::socket::rx_level(self, id);
        let tx = super::socket::tx_level(self, id);
        let Ok(s) = self.sock_mut(id) else { return false };
        let moved = ev != s.last_ev || rx != s.last_rx || tx != s.last_tx;
        s.last_tx = tx;
        // An edge, as Linux's wake-ups: a readiness bit that was not there, or more input.
        let edge = ev & !s.last_ev != 0 || rx > s.last_rx;
        // A bit that went away (data read, connection accepted, error reported): epolls drop
        // the entry from their ready lists, so a nested or polled epoll stops looking ready,
        // as Linux re-checks readiness when it reports an epoll fd.
        let falling = s.last_ev & !ev != 0;
        s.last_ev = ev;
        s.last_rx = rx;
        if !(edge || falling) || s.watchers.is_empty() {
            return moved;
        }
        s.watchers.retain(|w| !w.abandoned());
        // Taken out while the registry is told (it is not reentrant), then put back.
        let watchers = std::mem::take(&mut s.watchers);
        for w in &watchers {
            if falling {
                self.ev.lowered(w, id, ev);
            }
            if edge {
                self.ev.signal(w.clone(), id, ev);
            }
        }
        if let Some(Some(s)) = self.socks.get_mut(id) {
            s.watchers = watchers;
        }
        moved
    }
}

/// The network world of this process.
pub struct Net {
    inner: Mutex<Inner>,
    epoch: StdInstant,
    /// The progress thread's futex word, and the deadline (µs since `epoch`) it sleeps to.
    timer: Wait,
    armed: CachePadded<AtomicU64>,
    /// Pid of the process whose progress thread runs (a forked child starts its own).
    progress_pid: AtomicU32,
    /// With a device that has a doorbell (the emulator's NIC), the progress thread sleeps in
    /// `ppoll` on it and on this eventfd, which a call arming an earlier deadline writes.
    kick: OnceLock<rustix::fd::OwnedFd>,
    /// When a program thread (not the progress thread) last took the lock, µs since `epoch`
    /// ([`PROGRESS_QUIET`]).
    app_pump: CachePadded<AtomicU64>,
}

/// A device for the world other than the loopback, and its ephemeral port ranges, given
/// before the first socket ([`attach_device`], [`attach_device_with`]).
static DEVICE: Mutex<Option<(AnyDevice, Ephemeral)>> = Mutex::new(None);

/// Makes the process's network world run over `dev` (an emulator NIC attached to a switch)
/// instead of the in-process loopback. Must come before the world exists (the first socket);
/// afterwards the device is handed back.
// The device comes back whole on the (start-up only) error path.
#[allow(clippy::result_large_err)]
pub fn attach_device(dev: AnyDevice) -> Result<(), AnyDevice> {
    attach_device_with(dev, Ephemeral::default())
}

/// [`attach_device`] with the local port ranges the stack picks ephemeral ports from (the
/// blocks the daemon gave the container: the switch drops frames from other ports unless a
/// grant covers them).
// The device comes back whole on the (start-up only) error path.
#[allow(clippy::result_large_err)]
pub fn attach_device_with(dev: AnyDevice, ephemeral: Ephemeral) -> Result<(), AnyDevice> {
    if NET.get().is_some() {
        return Err(dev);
    }
    let mut slot = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    *slot = Some((dev, ephemeral));
    Ok(())
}

static NET: OnceLock<Net> = OnceLock::new();

/// The process's address on the switch's uplink network, if the daemon gave one
/// ([`set_uplink`]).
static UPLINK: OnceLock<arrakis_backends::proto::IfAddr> = OnceLock::new();

/// Gives the world an address on the switch's uplink network besides loopback (the daemon's
/// `NicInfo::addrs`): hosts on that network are reached through the switch's uplink, and the
/// address can be bound. Must come before the world exists, as [`attach_device`].
pub fn set_uplink(addr: arrakis_backends::proto::IfAddr) -> bool {
    NET.get().is_none() && UPLINK.set(addr).is_ok()
}

/// The uplink address, if there is one.
pub fn uplink() -> Option<arrakis_backends::proto::IfAddr> {
    UPLINK.get().copied()
}

/// Loopback addresses the library OS serves.
pub const LOOPBACK_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

/// Runs `f` on the emulator's NIC under the world lock (nothing over another device, or in
/// a forked child, whose world is detached).
pub(crate) fn with_emulator<R>(f: impl FnOnce(&mut EmulatorNic) -> R) -> Option<R> {
    let mut g = net().lock();
    if g.detached {
        return None;
    }
    match g.stack.device_mut() {
        AnyDevice::Emulator(n) => Some(f(n)),
        _ => None,
    }
}

/// How long TCP over the emulator's NIC may hold back the ACK of received data, hoping to
/// send it with data of its own (smoltcp's default; Linux waits 40 ms or more once a
/// connection looks interactive). It still acknowledges every full segment's worth of data
/// at once, and `TCP_QUICKACK` turns the delay off for a socket. Over the in-process loopback
/// a separate ACK costs nothing and every ACK goes out at once.
pub const EMULATOR_ACK_DELAY: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(10);

/// The process's network world, created on first use.
pub fn net() -> &'static Net {
    NET.get_or_init(|| {
        let epoch = StdInstant::now();
        let mut bufs = Buffers { tcp_rx: 256 * 1024, tcp_tx: 256 * 1024, nagle: true, ack_delay: None };
        let mut addrs = vec![
            IpCidr::new(IpAddress::Ipv4(LOOPBACK_V4), 8),
            IpCidr::new(IpAddress::Ipv6(std::net::Ipv6Addr::LOCALHOST), 128),
        ];
        addrs.extend(uplink().map(|u| IpCidr::new(IpAddress::from(u.addr()), u.prefix())));
        let dev = DEVICE.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (dev, ephemeral) =
            dev.unwrap_or_else(|| (AnyDevice::from(Loopback::default()), Ephemeral::default()));
        if let Some(p) = dev.rx_probe() {
            // Another process's stack at the other end: delay ACKs (as Linux does), so a
            // request's ACK rides on its answer instead of ringing the peer on its own.
            bufs.ack_delay = Some(EMULATOR_ACK_DELAY);
            let _ = PROBE.set((std::process::id(), p));
            if let Some(fd) = dev.doorbell() {
                DOORBELL.store(std::os::fd::AsRawFd::as_raw_fd(&fd), Relaxed);
            }
        }
        let mut stack = Stack::new(dev, &addrs, Instant::from_micros(0), bufs);
        let seed = u64::from(std::process::id()) ^ epoch.elapsed().as_nanos() as u64 ^ 0x9e37_79b9_7f4a_7c15;
        stack.set_ephemeral_seeded(ephemeral, seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 17);
        Net {
            inner: Mutex::new(Inner {
                stack,
                socks: Vec::new(),
                free: Vec::new(),
                by_shard: FastMap::default(),
                touched: Vec::new(),
                ids_spare: Vec::new(),
                ev: Registry::default(),
                now: Instant::from_micros(0),
                wakes: Vec::new(),
                wake_timer: false,
                bells: Vec::new(),
                detached: false,
            }),
            epoch,
            timer: Wait::default(),
            armed: CachePadded::new(AtomicU64::new(u64::MAX)),
            progress_pid: AtomicU32::new(0),
            kick: OnceLock::new(),
            app_pump: CachePadded::new(AtomicU64::new(0)),
        }
    })
}

/// The lock, with the clock read and the stack run when it is released.
///
/// The sleepers that the call's changes concern are woken only after the mutex is released
/// (`after`, dropped after `g`): a thread woken while the waker still held the lock would, on
/// a shared CPU, preempt it only to block on the mutex at once.
pub(crate) struct Guard<'a> {
    g: MutexGuard<'a, Inner>,
    net: &'a Net,
    after: Wakes<'a>,
}

/// Futex wakes deferred until the world lock is released.
struct Wakes<'a> {
    net: &'a Net,
    words: Vec<Arc<Wait>>,
    timer: bool,
    bells: Vec<Arc<Doorbell>>,
}

impl Drop for Wakes<'_> {
    fn drop(&mut self) {
        // Other processes first; a peer woken on this CPU may run before the lines below, but
        // no longer while this thread holds the lock.
        for (i, b) in self.bells.iter().enumerate() {
            if !self.bells[..i].iter().any(|o| Arc::ptr_eq(o, b)) {
                b.ring();
            }
        }
        self.bells.clear();
        if !self.words.is_empty() {
            let _ = WOKE_THREADS.try_with(|c| c.set(true));
        }
        for w in self.words.drain(..) {
            w.wake();
        }
        if self.timer {
            self.net.timer.wake();
            if let Some(k) = self.net.kick.get() {
                let _ = rustix::io::write(k, &1u64.to_ne_bytes());
            }
        }
        // Keep the buffer for this thread's next call.
        let words = std::mem::take(&mut self.words);
        let _ = WAKES_SPARE.try_with(|c| c.set(words));
    }
}

thread_local! {
    /// This thread woke sleepers of this process (futex words) since its last
    /// [`device_spin`]: the next spin first yields its CPU to them (see there).
    static WOKE_THREADS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// An empty buffer with capacity for [`Wakes`], so a call that wakes someone does not
    /// allocate.
    static WAKES_SPARE: std::cell::Cell<Vec<Arc<Wait>>> = const { std::cell::Cell::new(Vec::new()) };
}

impl std::ops::Deref for Guard<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.g
    }
}

impl std::ops::DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.g
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // A call that queued nothing (a look, a read that found nothing, a `poll`) needs no
        // pass: the one on entry took what had come, and what comes now is the next taker's,
        // as if it had come a moment later.
        if !self.g.stack.quiet() {
            self.g.now = self.net.now();
            self.g.pump_release();
        }
        self.net.arm(&mut self.g);
        // Futex pollers the registry signalled (each once; never a socket's word) join the
        // socket sleepers.
        let g = &mut *self.g;
        g.wakes.append(&mut g.ev.wake_later);
        // The fields drop next, in order: the mutex first, then the wakes.
        if !self.g.wakes.is_empty() {
            let spare = WAKES_SPARE.try_with(std::cell::Cell::take).unwrap_or_default();
            self.after.words = std::mem::replace(&mut self.g.wakes, spare);
        }
        self.after.timer = std::mem::take(&mut self.g.wake_timer);
        if !self.g.bells.is_empty() {
            std::mem::swap(&mut self.after.bells, &mut self.g.bells);
        }
    }
}

impl Net {
    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Takes the lock (the stack runs once on entry and once on release).
    pub(crate) fn lock(&self) -> Guard<'_> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.now = self.now();
        if !IS_PROGRESS.try_with(std::cell::Cell::get).unwrap_or(false) {
            self.app_pump.store(g.now.total_micros().max(0) as u64, Relaxed);
        }
        g.pump();
        Guard { g, net: self, after: Wakes { net: self, words: Vec::new(), timer: false, bells: Vec::new() } }
    }

    /// Makes sure the progress thread will wake for the stack's next deadline.
    fn arm(&self, inner: &mut Inner) {
        let Some(at) = inner.stack.poll_at() else { return };
        let at = at.total_micros().max(0) as u64;
        if at < self.armed.load(SeqCst) {
            self.armed.store(at, SeqCst);
            inner.wake_timer |= self.timer.bump();
        }
    }

    /// Starts this process's progress thread if it is not running (first socket; after fork).
    pub(crate) fn ensure_progress(&'static self) {
        let pid = std::process::id();
        if self.progress_pid.swap(pid, SeqCst) == pid {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("arrakis-progress".into())
            .stack_size(256 * 1024)
            .spawn(move || self.progress());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the progress thread; timers run only inside calls");
        }
    }

    /// The progress thread: sleeps until the stack's earliest deadline (or until a call moves
    /// it earlier), then runs the stack, so retransmissions, delayed ACKs, keep-alives and
    /// window updates go out while the program computes or sleeps elsewhere.
    fn progress(&self) {
        let _ = IS_PROGRESS.try_with(|p| p.set(true));
        // Signals are for the program's threads, never this one.
        let _ = nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::all()),
            None,
        );
        let bell = {
            let g = self.lock();
            g.stack.device().doorbell().and_then(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 0).ok())
        };
        if let Some(bell) = bell {
            return self.progress_doorbell(crate::event::hide(bell));
        }
        loop {
            self.armed.store(u64::MAX, SeqCst);
            // Runs the stack; releasing the lock arms `armed` with the next deadline.
            drop(self.lock());
            let seen = self.timer.seen();
            // Read after `seen`: a call that arms an earlier deadline from now on also bumps
            // the word, so the sleep below ends at once.
            let at = self.armed.load(SeqCst);
            // Never sleep longer than a second: a cheap guard against a lost deadline.
            let cap = StdInstant::now() + Duration::from_secs(1);
            let soonest = StdInstant::now() + Duration::from_micros(100);
            let deadline = if at == u64::MAX {
                cap
            } else {
                (self.epoch + Duration::from_micros(at)).clamp(soonest, cap)
            };
            let _ = self.timer.sleep(seen, Some(deadline));
        }
    }

    /// The progress thread over a device with a doorbell: frames from the other side (the
    /// switch) arrive while no call runs, so the thread sleeps in `ppoll` on the doorbell and
    /// on the kick eventfd, up to the stack's next deadline, and runs the stack on either.
    /// Before sleeping it asks the device for a doorbell and looks once more
    /// (`prepare_sleep`), so a frame that lands in between is not left unannounced.
    fn progress_doorbell(&self, bell: rustix::fd::OwnedFd) {
        let kick = match rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
        ) {
            Ok(k) => crate::event::hide(k),
            Err(e) => {
                tracing::error!(error = %e, "no kick eventfd: the progress thread wakes only for the device");
                return;
            }
        };
        let kick = match self.kick.get() {
            Some(k) => k,
            None => self.kick.get_or_init(|| kick),
        };
        // Sleeps in an epoll of its own, the kick in it for good and the doorbell added
        // before each sleep (see below); a plain `poll` if that cannot be set up.
        let pep = epoll::create(epoll::CreateFlags::CLOEXEC)
            .ok()
            .map(crate::event::hide)
            .filter(|ep| epoll::add(ep, kick, epoll::EventData::new_u64(1), epoll::EventFlags::IN).is_ok());
        // Whether to run the stack on waking (not after a deaf sleep that only timed out while
        // the program still runs it itself), and whether the rings were armed when it last ran.
        let (mut run, mut armed) = (true, false);
        loop {
            if run {
                self.armed.store(u64::MAX, SeqCst);
                let idle = {
                    let mut g = self.lock();
                    g.stack.device_mut().ack_doorbell();
                    g.pump();
                    // A thread polls the rings and re-arms them when it stops; in the quiet
                    // mode, the rings stay unarmed unless a thread sleeps on them.
                    let quiet = self.quiet_left().is_some();
                    armed = !quiet;
                    RING_POLLERS.load(SeqCst) != 0 || quiet || g.stack.device_mut().prepare_sleep()
                };
                if !idle {
                    continue;
                }
            }
            // Counted as a sleeper, so a call arming an earlier deadline writes the kick;
            // `armed` is read after, so a deadline armed before that is seen here.
            self.timer.waiters.fetch_add(1, SeqCst);
            let at = self.armed.load(SeqCst);
            let due = if at == u64::MAX {
                Duration::from_secs(1)
            } else {
                (self.epoch + Duration::from_micros(at))
                    .saturating_duration_since(StdInstant::now())
                    .clamp(Duration::from_micros(100), Duration::from_secs(1))
            };
            // Deaf (see `PROGRESS_DEAF`): announced before the check, so a sleeper that needs
            // this thread and counts itself meanwhile sees the flag and kicks.
            PROGRESS_DEAF.store(true, SeqCst);
            let deaf = self.active_left().filter(|_| NEEDS_PROGRESS.load(SeqCst) == 0);
            if deaf.is_none() {
                PROGRESS_DEAF.store(false, SeqCst);
                if !(armed || RING_POLLERS.load(SeqCst) != 0) {
                    // About to listen with the rings unarmed: run the stack and arm them first.
                    self.timer.waiters.fetch_sub(1, SeqCst);
                    run = true;
                    continue;
                }
            }
            let left = deaf.map_or(due, |d| due.min(d.max(QUIET_SLEEP_MIN)));
            let ts = rustix::time::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            match &pep {
                Some(ep) => {
                    // The doorbell joins last in its wait queue, exclusively: a frame wakes one
                    // sleeper, a program thread asleep in its epoll (which registered earlier)
                    // before this one. A deaf sleep leaves it out.
                    let flags = epoll::EventFlags::IN | epoll::EventFlags::ET | epoll::EventFlags::EXCLUSIVE;
                    if deaf.is_none() {
                        let _ = epoll::add(ep, &bell, epoll::EventData::new_u64(0), flags);
                    }
                    let mut evs = Vec::with_capacity(2);
                    let woke = epoll::wait(ep, rustix::buffer::spare_capacity(&mut evs), Some(&ts));
                    if deaf.is_none() {
                        let _ = epoll::delete(ep, &bell);
                    }
                    // Run the stack unless only a deaf sleep's own time ran out while the
                    // program still runs it (a deadline, a kick or a doorbell: run it).
                    run = !matches!(woke, Ok(0))
                        || deaf.is_none_or(|d| d >= due)
                        || self.active_left().is_none()
                        || NEEDS_PROGRESS.load(SeqCst) != 0;
                }
                None => {
                    let mut fds = [
                        rustix::event::PollFd::new(&bell, rustix::event::PollFlags::IN),
                        rustix::event::PollFd::new(kick, rustix::event::PollFlags::IN),
                    ];
                    let _ = rustix::event::poll(&mut fds, Some(&ts));
                    run = true;
                }
            }
            PROGRESS_DEAF.store(false, SeqCst);
            self.timer.waiters.fetch_sub(1, SeqCst);
            let mut b = [0u8; 8];
            let _ = rustix::io::read(kick, &mut b);
        }
    }

    /// A program thread ran the stack less than [`PROGRESS_QUIET`] ago: how much of that
    /// time is left.
    fn active_left(&self) -> Option<Duration> {
        let last = self.app_pump.load(Relaxed);
        let now = self.epoch.elapsed().as_micros() as u64;
        let since = Duration::from_micros(now.saturating_sub(last));
        (last != 0 && since < PROGRESS_QUIET).then(|| PROGRESS_QUIET - since)
    }

    /// In the quiet mode ([`PROGRESS_QUIET`]): a program thread ran the stack less than the
    /// quiet time ago and none sleeps waiting for the device; how much of the time is left.
    fn quiet_left(&self) -> Option<Duration> {
        if DEVICE_SLEEPERS.load(SeqCst) != 0 {
            return None;
        }
        self.active_left()
    }

    /// Before `fork`: hold the lock so the child's copy is consistent.
    pub fn fork_prepare(&'static self) -> ForkGuard {
        ForkGuard(Some(self.inner.lock().unwrap_or_else(|e| e.into_inner())))
    }
}

/// Held across `fork`; dropped in parent and child after it.
pub struct ForkGuard(Option<MutexGuard<'static, Inner>>);

impl ForkGuard {
    /// In the child: its progress thread does not exist; start one on next use. A world over
    /// the emulator's NIC is detached instead ([`DETACHED`]): the child never touches the
    /// parent's rings, and its new sockets are the kernel's (the shim stops serving).
    pub fn child(mut self) {
        if let Some(g) = self.0.as_mut() {
            if matches!(g.stack.device(), AnyDevice::Emulator(_)) {
                // Unmaps the child's view of the rings and closes its doorbell copies; the
                // parent's are untouched (nothing is written to the shared region).
                *g.stack.device_mut() = AnyDevice::from(Loopback::default());
                g.detached = true;
                // Owed by the parent's passes, to the parent's peers: not the child's to ring.
                g.bells.clear();
                PROBE_OFF.store(true, SeqCst);
            }
        }
        drop(self.0.take());
        if let Some(n) = NET.get() {
            n.progress_pid.store(0, SeqCst);
            n.armed.store(u64::MAX, SeqCst);
        }
    }
}

/// The process exits (`exit`, return from `main`): its connections end as the kernel would
/// end them on its behalf — FIN, or RST where data was left unread — and the stack runs for
/// at most `budget` so the FIN exchanges finish; what is still open then is reset. Without
/// this, a peer in another process (the emulator backend) would hold the connection open
/// forever, and a later process given the same port block would find its 4-tuples taken.
/// `_exit` and fatal signals skip it. Nothing to do in a detached child or without a world.
pub fn exit_close(budget: Duration) {
    let Some(n) = NET.get() else { return };
    {
        let mut g = n.lock();
        if g.detached || g.stack.exit_close() == 0 {
            return;
        }
    }
    let end = StdInstant::now() + budget;
    // Bounded: at most budget / 1 ms rounds (the progress thread and these locks run the stack).
    for _ in 0..budget.as_millis().max(1) {
        if n.lock().stack.exit_pending() == 0 || StdInstant::now() >= end {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut g = n.lock();
    g.stack.exit_abort();
    // Sends the resets before the process goes.
    g.pump();
}

/// Whether this process's world was detached from its parent's NIC by `fork`.
pub fn detached() -> bool {
    NET.get().is_some_and(|n| n.inner.lock().unwrap_or_else(|e| e.into_inner()).detached)
}

/// Whether the network world exists (any socket was ever created).
pub fn started() -> bool {
    NET.get().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_spin_learns_how_long_waits_take_within_its_bounds() {
        // The spin time is the default here (no test of this binary changes it).
        let base = Duration::from_micros(u64::from(DEFAULT_SPIN_US));
        let max = Duration::from_micros(u64::from(DEFAULT_SPIN_MAX_US));
        assert_eq!(device_spin_time(), base, "nothing learnt yet");
        // A server that answers after a disk flush: the spin covers the wait, and a little.
        device_waited(Duration::from_micros(140), true);
        assert_eq!(device_spin_time(), Duration::from_micros(140 + 35 + 2));
        // Quick answers never take the spin below the spin time.
        device_waited(Duration::from_micros(3), true);
        assert_eq!(device_spin_time(), base);
        // Near the ceiling: clamped to it.
        device_waited(max - Duration::from_micros(1), true);
        assert_eq!(device_spin_time(), max);
        // A wait past the ceiling, or one a kernel fd ended, starts over.
        device_waited(max + Duration::from_micros(1), true);
        assert_eq!(device_spin_time(), base);
        device_waited(Duration::from_micros(140), true);
        device_waited(Duration::from_micros(140), false);
        assert_eq!(device_spin_time(), base);
    }
}
