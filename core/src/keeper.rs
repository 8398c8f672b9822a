//! The CPU keeper: while a program thread waits in the kernel for a device flush (the
//! `fdatasync` of a VSA's backing file, [`crate::fs::dev::FileDev`]), a thread of the lowest
//! priority (`SCHED_IDLE`) polls on that thread's CPU, so the virtual CPU does not halt.
//!
//! Why: on the VMs this is built on, a vCPU that halts for the ≈100 µs of a flush is handed
//! back to the host; the thread that the flush's completion wakes then finds cold caches, and
//! a request-answer loop (redis with `appendfsync always`: flush, answer, take the next
//! request, journal it, flush) ran its ≈15 µs of work between two flushes in ≈30 µs. With an
//! idle-priority poller on the flushing thread's CPU the same loop ran below the bare cost of
//! a `pwrite` + `fdatasync` (docs/BENCHMARKS.md). `SCHED_IDLE` makes the poller invisible to
//! everything else: any thread that wakes on that CPU takes it at once, and the scheduler
//! counts a CPU that runs only idle-priority threads as idle when it places woken threads.
//!
//! Bounds: the keeper polls only while a flush is in flight and at most the keeper time per
//! flush (`ARRAKIS_KEEPER_US`, [`set_keeper_us`]; 0: no keeper), then sleeps on a futex until
//! the next flush begins. A process that never flushes a VSA never starts it. The thread is
//! started at the first flush (again in a forked child) and only when the shim could give it
//! the idle priority ([`set_idle_priority`]): without that it would compete with the program.
//!
//! Cost to the flushing thread: a vDSO `getcpu`, two atomic updates and, only when the keeper
//! slept or sits on another CPU, one `futex` wake or `sched_setaffinity`.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::thread::futex;

/// Default longest poll per flush, in microseconds: above these VMs' flushes (≈90–250 µs)
/// and their usual tail, so one flush of a slow moment still keeps its CPU.
pub const DEFAULT_KEEPER_US: u32 = 1000;

/// The process's keeper.
static KEEPER: Keeper = Keeper::new();

/// Sets the keeper's longest poll per flush, in microseconds (0: no keeper).
pub fn set_keeper_us(us: u32) {
    KEEPER.us.store(us, Relaxed);
}

/// Installs the function that gives the calling thread the idle priority (`SCHED_IDLE`),
/// `true` when it did; the keeper calls it first and stops if it fails. Unset (unit tests, a
/// program not under the shim): no keeper.
pub fn set_idle_priority(f: fn() -> bool) {
    let _ = KEEPER.idle.set(f);
}

/// The calling thread is about to wait in the kernel for a device flush: the keeper polls on
/// this CPU until the returned guard is dropped (or the keeper time has passed). `None` when
/// there is no keeper (disabled, not under the shim, or it could not get the idle priority).
pub fn flushing() -> Option<Flushing> {
    KEEPER.flushing()
}

/// A keeper and its state (one per process, [`KEEPER`]; tests make their own).
struct Keeper {
    /// The longest poll per flush in microseconds (`ARRAKIS_KEEPER_US`); 0 disables it.
    us: AtomicU32,
    /// Gives the calling thread the idle scheduling class ([`set_idle_priority`]).
    idle: OnceLock<fn() -> bool>,
    /// Flushes in flight in this process.
    in_flight: AtomicU32,
    /// Bumped at every flush's start; the keeper sleeps on it.
    seq: AtomicU32,
    /// The keeper sleeps (or is about to) on `seq`: a flush that starts wakes it.
    asleep: AtomicBool,
    /// The process whose keeper is running (0: none; a forked child starts its own).
    pid: AtomicU32,
    /// The keeper's thread id, for its CPU affinity (0 until it has started).
    tid: AtomicI32,
    /// The CPU the keeper is bound to (-1: none yet).
    cpu: AtomicI32,
    /// The keeper could not start or get the idle priority: none in this process.
    broken: AtomicBool,
    /// Flushes the keeper began to poll for (tests).
    polled: AtomicU64,
}

/// A flush in flight; the keeper stops polling for it when this is dropped.
#[must_use]
pub struct Flushing(&'static Keeper);

impl Drop for Flushing {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, SeqCst);
    }
}

impl Keeper {
    const fn new() -> Keeper {
        Keeper {
            us: AtomicU32::new(DEFAULT_KEEPER_US),
            idle: OnceLock::new(),
            in_flight: AtomicU32::new(0),
            seq: AtomicU32::new(0),
            asleep: AtomicBool::new(false),
            pid: AtomicU32::new(0),
            tid: AtomicI32::new(0),
            cpu: AtomicI32::new(-1),
            broken: AtomicBool::new(false),
            polled: AtomicU64::new(0),
        }
    }

    fn flushing(&'static self) -> Option<Flushing> {
        if self.us.load(Relaxed) == 0 || self.broken.load(Relaxed) {
            return None;
        }
        let idle = *self.idle.get()?;
        self.ensure(idle);
        let cpu = i32::try_from(rustix::thread::sched_getcpu()).unwrap_or(0);
        let tid = self.tid.load(SeqCst);
        if tid > 0 && self.cpu.swap(cpu, SeqCst) != cpu {
            pin(tid, cpu);
        }
        self.in_flight.fetch_add(1, SeqCst);
        self.seq.fetch_add(1, SeqCst);
        if self.asleep.load(SeqCst) {
            let _ = futex::wake(&self.seq, futex::Flags::PRIVATE, 1);
        }
        Some(Flushing(self))
    }

    /// Starts the keeper of this process unless it runs.
    fn ensure(&'static self, idle: fn() -> bool) {
        let pid = std::process::id();
        if self.pid.load(Relaxed) == pid || self.pid.swap(pid, SeqCst) == pid {
            return;
        }
        // First flush, or a forked child: the parent's keeper thread is not here, nor are
        // the flushes of its other threads.
        self.tid.store(0, SeqCst);
        self.cpu.store(-1, SeqCst);
        self.asleep.store(false, SeqCst);
        self.in_flight.store(0, SeqCst);
        let spawned = std::thread::Builder::new()
            .name("arrakis-keeper".into())
            .stack_size(64 * 1024)
            .spawn(move || self.run(idle));
        if let Err(e) = spawned {
            self.broken.store(true, SeqCst);
            tracing::warn!(error = %e, "cannot start the CPU keeper; flushes let their CPU idle");
        }
    }

    /// The keeper thread.
    fn run(&self, idle: fn() -> bool) {
        // Signals are for the program's threads, never this one.
        let _ = nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::all()),
            None,
        );
        if !idle() {
            self.broken.store(true, SeqCst);
            tracing::warn!("the CPU keeper cannot have the idle priority (SCHED_IDLE); not started");
            return;
        }
        self.tid.store(rustix::thread::gettid().as_raw_nonzero().get(), SeqCst);
        loop {
            let seq = self.seq.load(SeqCst);
            if self.in_flight.load(SeqCst) > 0 {
                self.poll(seq);
            }
            self.asleep.store(true, SeqCst);
            // After `asleep`: a flush that starts from now on sees it and wakes this thread;
            // one that started before moved `seq`, so the wait returns at once.
            if self.seq.load(SeqCst) == seq {
                let _ = futex::wait(&self.seq, futex::Flags::PRIVATE, seq, None);
            }
            self.asleep.store(false, SeqCst);
        }
    }

    /// Polls while a flush is in flight, for at most the keeper time since flush `seq` began
    /// (a flush that begins meanwhile gets its own time).
    fn poll(&self, mut seq: u32) {
        self.polled.fetch_add(1, SeqCst);
        let mut start = Instant::now();
        loop {
            for _ in 0..64 {
                if self.in_flight.load(Relaxed) == 0 {
                    return;
                }
                std::hint::spin_loop();
            }
            let now_seq = self.seq.load(Relaxed);
            if now_seq != seq {
                seq = now_seq;
                start = Instant::now();
            }
            if start.elapsed() >= Duration::from_micros(u64::from(self.us.load(Relaxed))) {
                return;
            }
        }
    }
}

/// Binds the keeper (thread `tid`) to `cpu`. A failure (a CPU outside the program's set)
/// leaves it where it was: it then polls elsewhere, which costs nothing but its effect.
fn pin(tid: i32, cpu: i32) {
    let Some(pid) = rustix::process::Pid::from_raw(tid) else { return };
    let mut set = rustix::thread::CpuSet::new();
    set.set(usize::try_from(cpu).unwrap_or(0));
    let _ = rustix::thread::sched_setaffinity(Some(pid), &set);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn keeper() -> &'static Keeper {
        Box::leak(Box::new(Keeper::new()))
    }

    /// A keeper that gets its (pretend) idle priority and polls at most `us` per flush.
    fn keeper_polling(us: u32) -> &'static Keeper {
        let k = keeper();
        let _ = k.idle.set(|| true);
        k.us.store(us, SeqCst);
        k
    }

    #[test]
    fn without_the_idle_priority_or_with_no_time_there_is_no_keeper() {
        let k = keeper();
        assert!(k.flushing().is_none(), "no idle-priority function: no keeper");
        let _ = k.idle.set(|| true);
        k.us.store(0, SeqCst);
        assert!(k.flushing().is_none(), "ARRAKIS_KEEPER_US=0 disables it");
        assert_eq!(k.pid.load(SeqCst), 0, "and starts no thread");
        let k = keeper();
        let _ = k.idle.set(|| false);
        drop(k.flushing());
        wait_for("the keeper to give up", || k.broken.load(SeqCst));
        assert!(k.flushing().is_none(), "a keeper that cannot have the idle priority never runs");
    }

    #[test]
    fn the_keeper_polls_on_the_flushing_cpu_while_a_flush_is_in_flight_then_sleeps() {
        // A keeper time long enough that only the end of the flush stops the poll.
        let k = keeper_polling(10_000_000);
        let g = k.flushing().expect("a keeper");
        wait_for("the keeper to start", || k.tid.load(SeqCst) > 0);
        wait_for("the keeper to poll", || k.polled.load(SeqCst) == 1);
        assert!(!k.asleep.load(SeqCst), "it polls, it does not sleep");
        drop(g);
        wait_for("the keeper to stop polling and sleep", || k.asleep.load(SeqCst));
        assert_eq!(k.polled.load(SeqCst), 1);
        assert_eq!(k.in_flight.load(SeqCst), 0);
        assert_eq!(k.pid.load(SeqCst), std::process::id());
        // The next flush binds it to the flushing thread's CPU (the one it ran on then).
        let g = k.flushing().expect("a keeper");
        let cpu = k.cpu.load(SeqCst);
        assert!(cpu >= 0, "bound to a CPU");
        let tid = rustix::process::Pid::from_raw(k.tid.load(SeqCst)).expect("a thread id");
        let set = rustix::thread::sched_getaffinity(Some(tid)).expect("its affinity");
        assert!(set.is_set(usize::try_from(cpu).unwrap_or(0)));
        assert_eq!(set.count(), 1, "and to that CPU only");
        drop(g);
    }

    #[test]
    fn a_flush_longer_than_the_keeper_time_is_polled_that_long_only() {
        let k = keeper_polling(1000);
        let g = k.flushing().expect("a keeper");
        // The flush goes on, the keeper stops after its time and sleeps.
        wait_for("the keeper to give up", || k.polled.load(SeqCst) > 0 && k.asleep.load(SeqCst));
        assert_eq!(k.in_flight.load(SeqCst), 1);
        drop(g);
        // A next flush wakes it for a time of its own.
        let before = k.polled.load(SeqCst);
        let g = k.flushing().expect("a keeper");
        wait_for("the keeper to poll again", || k.polled.load(SeqCst) > before);
        drop(g);
    }
}
