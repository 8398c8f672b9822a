//! Events over both worlds: epoll instances whose interest list mixes library-OS sockets and
//! kernel fds, and the library-OS half of `poll`/`select`.
//!
//! Every epoll instance of a program under the loopback backend is an [`Epoll`]: its fd
//! number *is* a kernel epoll instance, which holds the program's kernel fds (with the
//! program's own `epoll_data`) and one *wake eventfd* of ours (registered edge-triggered with a
//! sentinel datum the shim strips). Library-OS sockets sit in a user-level interest list here,
//! with Linux's ready-list design: a socket whose state changes is queued on the ready list of
//! every epoll watching it; `epoll_wait` walks the ready list, re-checks each entry's readiness,
//! reports it, and keeps level-triggered entries queued (edge-triggered and one-shot ones
//! leave). A thread that finds nothing sleeps in the kernel `epoll_wait` on the instance
//! itself — the program's kernel fds and the wake eventfd in one wait — and a socket becoming
//! ready writes the wake eventfd only while someone sleeps (or a parent watches).
//!
//! `poll`/`select` register the calling thread's [`Poller`] (an eventfd) as a watcher of each
//! library-OS fd for the duration of the call and sleep in the kernel `ppoll` on their kernel
//! fds plus that eventfd.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU32, AtomicU8};
use std::sync::Arc;

use rustix::fd::{AsFd, OwnedFd};

use crate::error::{Errno, SysResult};
use crate::fd::{FdKind, FdObject};
use crate::net::socket::{self, Socket};
use crate::net::world::{net, Inner, Wait};

/// `poll`/`epoll` event bits (the same values for both on Linux).
pub mod ev {
    /// `POLLIN`.
    pub const IN: u32 = 0x1;
    /// `POLLPRI`.
    pub const PRI: u32 = 0x2;
    /// `POLLOUT`.
    pub const OUT: u32 = 0x4;
    /// `POLLERR`.
    pub const ERR: u32 = 0x8;
    /// `POLLHUP`.
    pub const HUP: u32 = 0x10;
    /// `POLLNVAL`.
    pub const NVAL: u32 = 0x20;
    /// `POLLRDNORM`.
    pub const RDNORM: u32 = 0x40;
    /// `POLLRDBAND`.
    pub const RDBAND: u32 = 0x80;
    /// `POLLWRNORM`.
    pub const WRNORM: u32 = 0x100;
    /// `POLLWRBAND`.
    pub const WRBAND: u32 = 0x200;
    /// `POLLMSG`.
    pub const MSG: u32 = 0x400;
    /// `POLLRDHUP`.
    pub const RDHUP: u32 = 0x2000;
    /// `EPOLLEXCLUSIVE`.
    pub const EXCLUSIVE: u32 = 1 << 28;
    /// `EPOLLWAKEUP`.
    pub const WAKEUP: u32 = 1 << 29;
    /// `EPOLLONESHOT`.
    pub const ONESHOT: u32 = 1 << 30;
    /// `EPOLLET`.
    pub const ET: u32 = 1 << 31;
}

/// The `epoll_data` the shim gives our wake eventfd in the kernel epoll; events carrying it
/// are stripped before the program sees them.
pub const WAKE_DATUM: u64 = 0xA77A_C1D5_0000_0001;
/// The `epoll_data` of the device's doorbell (the emulator NIC's rx eventfd) in our kernel
/// epoll instances: a frame from the switch wakes a thread sleeping in `epoll_wait` directly,
/// which runs the stack itself (the lock runs it), instead of waiting for the progress
/// thread to take the frame and ring the instance's wake eventfd.
pub const DEVICE_DATUM: u64 = 0xA77A_C1D5_0000_0002;

/// A thread's wake-up for `poll`/`select`: an eventfd the thread includes in its kernel wait,
/// or, for a wait with nothing of the kernel's to watch, a futex word (no fd to make and
/// close per sleep, and the wake-up happens after the world lock is released).
#[derive(Debug)]
pub struct Poller {
    how: PollerWake,
}

#[derive(Debug)]
enum PollerWake {
    Eventfd(OwnedFd),
    Futex(Arc<Wait>),
}

impl Poller {
    /// A new poller (an eventfd placed out of the program's way).
    pub fn new() -> SysResult<Arc<Poller>> {
        let fd = internal_eventfd()?;
        Ok(Arc::new(Poller { how: PollerWake::Eventfd(fd) }))
    }

    /// A poller that sleeps on a futex word ([`Poller::seen`], [`Poller::sleep`]): for a wait
    /// on library-OS fds only, without the device's doorbell and without a signal mask.
    pub fn new_futex() -> Arc<Poller> {
        Arc::new(Poller { how: PollerWake::Futex(Arc::new(Wait::default())) })
    }

    /// The eventfd to include in the kernel wait (`None` for a futex poller).
    pub fn fd(&self) -> Option<rustix::fd::BorrowedFd<'_>> {
        match &self.how {
            PollerWake::Eventfd(fd) => Some(fd.as_fd()),
            PollerWake::Futex(_) => None,
        }
    }

    /// A futex poller's generation, to read before looking at readiness and pass to
    /// [`Poller::sleep`] (0 for an eventfd poller).
    pub fn seen(&self) -> u32 {
        match &self.how {
            PollerWake::Eventfd(_) => 0,
            PollerWake::Futex(w) => w.seen(),
        }
    }

    /// Sleeps on a futex poller until a watched fd signals after generation `seen`, a
    /// signal handler runs (`EINTR`) or `deadline` (`ETIMEDOUT`); an eventfd poller returns
    /// at once (it sleeps in the kernel wait).
    pub fn sleep(&self, seen: u32, deadline: Option<std::time::Instant>) -> SysResult<()> {
        match &self.how {
            PollerWake::Eventfd(_) => Ok(()),
            PollerWake::Futex(w) => w.sleep(seen, deadline),
        }
    }

    /// A watched fd signalled (under the world lock): an eventfd is written now; a futex
    /// word moves now and its sleeper is woken once the lock is released (`later`).
    fn wake(&self, later: &mut Vec<Arc<Wait>>) {
        match &self.how {
            PollerWake::Eventfd(fd) => {
                let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
            }
            PollerWake::Futex(w) => {
                if w.bump() && !later.iter().any(|o| Arc::ptr_eq(o, w)) {
                    later.push(w.clone());
                }
            }
        }
    }

    /// Empties the eventfd after a wait (nothing for a futex poller).
    pub fn drain(&self) {
        if let PollerWake::Eventfd(fd) = &self.how {
            let mut b = [0u8; 8];
            let _ = rustix::io::read(fd, &mut b);
        }
    }
}

/// Who to tell when a socket (or an epoll's library half) may have become ready.
#[derive(Clone, Debug)]
pub enum Watcher {
    /// An epoll instance (by registry index).
    Epoll(usize),
    /// A thread in `poll`/`select`.
    Poller(Arc<Poller>),
}

impl Watcher {
    /// A poller whose `poll` call has returned without unregistering it (it answered from
    /// [`Socket::readable_now`](crate::net::socket::Socket::readable_now), with no lock):
    /// only the socket's list still holds it. Under the world lock, so no one can take a new
    /// reference from the list meanwhile; the lists drop such entries when they next change
    /// or signal.
    pub(crate) fn abandoned(&self) -> bool {
        matches!(self, Watcher::Poller(p) if Arc::strong_count(p) == 1)
    }
}

impl PartialEq for Watcher {
    fn eq(&self, o: &Watcher) -> bool {
        match (self, o) {
            (Watcher::Epoll(a), Watcher::Epoll(b)) => a == b,
            (Watcher::Poller(a), Watcher::Poller(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

#[derive(Debug)]
struct Entry {
    fd: i32,
    events: u32,
    data: u64,
    queued: bool,
    /// A one-shot entry that fired stays registered but disarmed until `EPOLL_CTL_MOD`.
    armed: bool,
}

struct EpState {
    /// Socket id → its registrations (usually one; more when several fds of one socket are
    /// registered, as Linux keys by file *and* fd).
    interest: HashMap<usize, Vec<Entry>>,
    ready: VecDeque<(usize, i32)>,
    /// Threads asleep in the kernel half (shared with the [`Epoll`], which leaves the count
    /// without the lock).
    sleepers: Arc<AtomicU32>,
    wake: OwnedFd,
    /// Pollers and parents watching this instance's library half.
    watchers: Vec<Watcher>,
    /// It sits in another epoll or a poll set through the kernel: always ring the wake fd.
    nested: bool,
    /// The wake eventfd was written and not drained since.
    rung: bool,
    /// Kernel fds in the interest list (so a wait with library events ready knows whether to
    /// look at the kernel too).
    kernel_fds: usize,
}

/// All epoll instances of the process (under the network lock).
#[derive(Default)]
pub(crate) struct Registry {
    epolls: Vec<Option<EpState>>,
    free: Vec<usize>,
    /// Futex pollers to wake once the world lock is released (the world's guard takes them).
    pub(crate) wake_later: Vec<Arc<Wait>>,
}

impl Registry {
    /// A socket with readiness `events` changed; `w` watches it.
    pub(crate) fn signal(&mut self, w: Watcher, sock: usize, events: u32) {
        match w {
            Watcher::Poller(p) => p.wake(&mut self.wake_later),
            Watcher::Epoll(ep) => {
                let Some(Some(e)) = self.epolls.get_mut(ep) else { return };
                let Some(entries) = e.interest.get_mut(&sock) else { return };
                let mut queued = false;
                for en in entries.iter_mut() {
                    if en.armed && !en.queued && events & (en.events | ev::ERR | ev::HUP) != 0 {
                        en.queued = true;
                        e.ready.push_back((sock, en.fd));
                        queued = true;
                    }
                }
                if queued {
                    // A sleeper needs one write (it drains nothing before it looks at the
                    // ready list: `sleep_begin` made sure the eventfd was empty, and `quiet`
                    // empties it with the list); a nesting kernel wait sees every one.
                    if (e.sleepers.load(SeqCst) > 0 && !e.rung) || e.nested {
                        let _ = rustix::io::write(&e.wake, &1u64.to_ne_bytes());
                        e.rung = true;
                    }
                    for w in &e.watchers {
                        if let Watcher::Poller(p) = w {
                            p.wake(&mut self.wake_later);
                        }
                    }
                }
            }
        }
    }

    /// A socket's readiness fell to `events`: entries of the epoll `w` that no longer match
    /// leave its ready list (they would not be reported), and an emptied list quiets the wake
    /// eventfd.
    pub(crate) fn lowered(&mut self, w: &Watcher, sock: usize, events: u32) {
        let Watcher::Epoll(ep) = w else { return };
        let Some(Some(e)) = self.epolls.get_mut(*ep) else { return };
        let Some(entries) = e.interest.get_mut(&sock) else { return };
        let mut gone = Vec::new();
        for en in entries.iter_mut() {
            if en.queued && events & (en.events | ev::ERR | ev::HUP) == 0 {
                en.queued = false;
                gone.push(en.fd);
            }
        }
        if gone.is_empty() {
            return;
        }
        e.ready.retain(|&(s, f)| !(s == sock && gone.contains(&f)));
        quiet(e);
    }

    /// A socket went away: drop its registrations in the epoll `w`.
    pub(crate) fn forget_sock(&mut self, w: &Watcher, sock: usize) {
        if let Watcher::Epoll(ep) = w {
            if let Some(Some(e)) = self.epolls.get_mut(*ep) {
                e.interest.remove(&sock);
                e.ready.retain(|(s, _)| *s != sock);
                quiet(e);
            }
        }
    }

    fn get(&mut self, ep: usize) -> SysResult<&mut EpState> {
        self.epolls.get_mut(ep).and_then(Option::as_mut).ok_or(Errno::EBADF)
    }
}

/// Moves an internal fd out of the program's way: to a high number (so the program's own
/// lowest-free-fd numbering is unchanged), close-on-exec.
pub(crate) fn hide(fd: OwnedFd) -> OwnedFd {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(1024);
    let min = (soft.saturating_mul(3) / 4).clamp(3, 1 << 20) as i32;
    match rustix::io::fcntl_dupfd_cloexec(&fd, min) {
        Ok(high) => high,
        Err(_) => fd,
    }
}

fn internal_eventfd() -> SysResult<OwnedFd> {
    let flags = rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC;
    let fd = rustix::event::eventfd(0, flags).map_err(|e| Errno(e.raw_os_error()))?;
    Ok(hide(fd))
}

/// A library-OS epoll instance; its fd number is a kernel epoll instance.
#[derive(Debug)]
pub struct Epoll {
    id: usize,
    /// Device spins of waits on this instance in a row whose frames were for other threads
    /// (see [`Epoll::may_spin`]).
    spins_for_others: AtomicU32,
    /// Waits that skipped the spin because of `spins_for_others`.
    spins_skipped: AtomicU32,
    /// Sleeps in a row whose wake-up found no events of the instance's own (see
    /// [`Epoll::bell_woke`]).
    bells_for_others: AtomicU32,
    /// Whether the device's doorbell is in the kernel half: [`BELL_NONE`], [`BELL_HELD`] or
    /// [`BELL_GIVEN`] (see [`Epoll::bell_woke`]).
    bell: AtomicU8,
    /// Threads asleep in the kernel half (the registry's [`EpState`] holds the same count).
    sleepers: Arc<AtomicU32>,
}

/// Sleeps in a row that ended without events of the instance's own before it gives up the
/// device's doorbell ([`Epoll::bell_woke`]).
pub const BELLS_FOR_OTHERS: u32 = 16;

/// The process's epoll instances that hold the device's doorbell.
static BELL_HOLDERS: crossbeam_utils::CachePadded<AtomicU32> =
    crossbeam_utils::CachePadded::new(AtomicU32::new(0));

/// [`Epoll`]'s doorbell states: never registered (or its registration failed), held, given
/// up ([`BellChange::Drop`]) and not taken back.
const BELL_NONE: u8 = 0;
const BELL_HELD: u8 = 1;
const BELL_GIVEN: u8 = 2;

/// What [`Epoll::bell_woke`] asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BellChange {
    /// Nothing.
    Keep,
    /// Take the doorbell out of the instance's kernel half (`EPOLL_CTL_DEL`).
    Drop,
    /// Put it back (`EPOLL_CTL_ADD`, as at creation); [`Epoll::bell_lost`] if that fails.
    Take,
}

/// Spins in a row that only served other instances before an instance stops spinning.
const SPINS_FOR_OTHERS: u32 = 2;
/// While stopped, one wait in this many spins again, to notice when that changes.
const SPIN_RETRY: u32 = 64;

impl FdObject for Epoll {
    fn kind(&self) -> FdKind {
        FdKind::Epoll
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        self.bell_lost();
        let mut g = net().lock();
        let id = self.id;
        let Some(e) = g.ev.epolls.get_mut(id).and_then(Option::take) else { return };
        g.ev.free.push(id);
        for sock in e.interest.keys() {
            socket::unwatch(&mut g, *sock, &Watcher::Epoll(id));
        }
    }
}

/// One event for the program: `(events, data)`.
pub type Event = (u32, u64);

/// What to register for an fd in [`Epoll::ctl`].
pub enum Target<'a> {
    /// A library-OS socket.
    Socket(&'a Arc<Socket>),
    /// A kernel fd (the shim registered it in the kernel epoll; we only count it).
    Kernel,
}

/// `EPOLL_CTL_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `EPOLL_CTL_ADD`.
    Add,
    /// `EPOLL_CTL_DEL`.
    Del,
    /// `EPOLL_CTL_MOD`.
    Mod,
}

impl Epoll {
    /// A new instance; the shim registers the returned wake eventfd in the kernel epoll with
    /// [`WAKE_DATUM`], `EPOLLIN | EPOLLET`.
    pub fn new() -> SysResult<(Arc<Epoll>, rustix::fd::RawFd)> {
        let wake = internal_eventfd()?;
        let raw = rustix::fd::AsRawFd::as_raw_fd(&wake);
        let n = net();
        let mut g = n.lock();
        let sleepers = Arc::new(AtomicU32::new(0));
        let st = EpState {
            interest: HashMap::new(),
            ready: VecDeque::new(),
            sleepers: sleepers.clone(),
            wake,
            watchers: Vec::new(),
            nested: false,
            rung: false,
            kernel_fds: 0,
        };
        let id = match g.ev.free.pop() {
            Some(i) => {
                g.ev.epolls[i] = Some(st);
                i
            }
            None => {
                g.ev.epolls.push(Some(st));
                g.ev.epolls.len() - 1
            }
        };
        drop(g);
        n.ensure_progress();
        Ok((
            Arc::new(Epoll {
                id,
                spins_for_others: Default::default(),
                spins_skipped: Default::default(),
                bells_for_others: Default::default(),
                bell: AtomicU8::new(BELL_NONE),
                sleepers,
            }),
            raw,
        ))
    }

    /// Whether a wait on this instance should poll the device before sleeping
    /// (`net::world::device_spin`). Only one thread of a process spins at a time, and frames
    /// for any socket end a spin; a thread whose spins keep taking frames that concern other
    /// threads' instances (memcached's listener thread, taking each request for the worker
    /// that serves its connection) only hands them over with a wake-up, and keeps the worker
    /// itself from spinning. After [`SPINS_FOR_OTHERS`] such spins in a row the instance
    /// stops spinning, but for one wait in [`SPIN_RETRY`], until a spin brings it events
    /// again.
    pub fn may_spin(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.spins_for_others.load(Relaxed) < SPINS_FOR_OTHERS {
            return true;
        }
        self.spins_skipped.fetch_add(1, Relaxed) % SPIN_RETRY == SPIN_RETRY - 1
    }

    /// A device spin of a wait on this instance took frames: `mine` if the instance then had
    /// events (see [`Epoll::may_spin`]).
    pub fn spun(&self, mine: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if mine {
            if self.spins_for_others.load(Relaxed) != 0 {
                self.spins_for_others.store(0, Relaxed);
            }
        } else {
            let n = self.spins_for_others.load(Relaxed);
            self.spins_for_others.store(n.saturating_add(1), Relaxed);
        }
    }

    /// The shim registered the device's doorbell in this instance's kernel half
    /// (`EPOLLEXCLUSIVE`, at creation or again after [`BellChange::Take`]).
    pub fn bell_registered(&self) {
        if self.bell.swap(BELL_HELD, SeqCst) != BELL_HELD {
            BELL_HOLDERS.fetch_add(1, SeqCst);
        }
    }

    /// Re-registering the doorbell after [`BellChange::Take`] failed, or the instance is gone.
    pub fn bell_lost(&self) {
        if self.bell.swap(BELL_NONE, SeqCst) == BELL_HELD {
            BELL_HOLDERS.fetch_sub(1, SeqCst);
        }
    }

    /// A wait on this instance slept in the kernel, was woken (by the device's doorbell or
    /// the instance's wake eventfd), and the look that followed found events (`mine`) or
    /// none. Says whether the caller should take the doorbell out of the instance's kernel
    /// half or put it back.
    ///
    /// Every instance holds the doorbell `EPOLLEXCLUSIVE` and a thread about to sleep on one
    /// asks the rings for it (`device_sleep_begin`); a ring wakes the first instance, in
    /// registration order, that has a sleeper, and queues the doorbell on the ready list of
    /// every instance before it. A program's first epoll is often one that almost never has
    /// events of its own (memcached's listener thread, made before the workers'): it slept
    /// all the time, so it kept the rings armed while the workers were busy, and it took the
    /// rings that found no worker asleep, ran the stack for the workers and woke the one that
    /// had gone to sleep meanwhile (memcslap at 50: 0.13 wake-ups a request, nearly all for
    /// others). After [`BELLS_FOR_OTHERS`] such sleeps in a row, an instance that is not the
    /// process's only holder of the doorbell gives it up ([`BellChange::Drop`]): it then
    /// sleeps on its wake eventfd alone, through which whichever thread runs the stack wakes
    /// it, and asks for no doorbell. The first sleep that brings it events takes the
    /// doorbell back ([`BellChange::Take`]). Frames for it that arrive while no thread of the
    /// process runs the stack or sleeps on the doorbell wait in the rings for the progress
    /// thread, which listens once the program has not run the stack for `PROGRESS_QUIET`.
    pub fn bell_woke(&self, mine: bool) -> BellChange {
        use std::sync::atomic::Ordering::Relaxed;
        let n = self.bells_for_others.load(Relaxed);
        if mine {
            if n != 0 {
                self.bells_for_others.store(0, Relaxed);
            }
            if self.bell.load(Relaxed) == BELL_GIVEN
                && self.bell.compare_exchange(BELL_GIVEN, BELL_HELD, SeqCst, SeqCst).is_ok()
            {
                BELL_HOLDERS.fetch_add(1, SeqCst);
                return BellChange::Take;
            }
            return BellChange::Keep;
        }
        if self.bell.load(Relaxed) != BELL_HELD {
            return BellChange::Keep;
        }
        if n + 1 < BELLS_FOR_OTHERS {
            self.bells_for_others.store(n + 1, Relaxed);
            return BellChange::Keep;
        }
        self.bells_for_others.store(0, Relaxed);
        // Give it up only while another instance holds it.
        if BELL_HOLDERS.fetch_update(SeqCst, SeqCst, |h| (h > 1).then(|| h - 1)).is_err() {
            return BellChange::Keep;
        }
        self.bell.store(BELL_GIVEN, SeqCst);
        BellChange::Drop
    }

    /// Whether a thread about to sleep on this instance should ask the device for its
    /// doorbell: unless the instance gave it up (see [`Epoll::bell_woke`]). An instance that
    /// never got it (made before the device, or its registration failed) asks as before.
    pub fn asks_bell(&self) -> bool {
        self.bell.load(std::sync::atomic::Ordering::Relaxed) != BELL_GIVEN
    }

    /// `epoll_ctl` for a library-OS socket (or bookkeeping for a kernel fd).
    pub fn ctl(&self, op: Op, fd: i32, target: Target<'_>, events: u32, data: u64) -> SysResult<()> {
        let mut g = net().lock();
        let ep = self.id;
        let sock = match target {
            Target::Kernel => {
                let e = g.ev.get(ep)?;
                match op {
                    Op::Add => e.kernel_fds += 1,
                    Op::Del => e.kernel_fds = e.kernel_fds.saturating_sub(1),
                    Op::Mod => {}
                }
                return Ok(());
            }
            Target::Socket(s) => s.id(),
        };
        let now = socket::events(&g, sock);
        let e = g.ev.get(ep)?;
        let list = e.interest.entry(sock).or_default();
        let pos = list.iter().position(|en| en.fd == fd);
        match op {
            Op::Add => {
                const EXCLUSIVE_OK: u32 =
                    ev::IN | ev::OUT | ev::ERR | ev::HUP | ev::WAKEUP | ev::ET | ev::EXCLUSIVE;
                if events & ev::EXCLUSIVE != 0 && events & !EXCLUSIVE_OK != 0 {
                    if list.is_empty() {
                        e.interest.remove(&sock);
                    }
                    return Err(Errno::EINVAL);
                }
                if pos.is_some() {
                    return Err(Errno::EEXIST);
                }
                list.push(Entry { fd, events, data, queued: false, armed: true });
            }
            Op::Mod => {
                let Some(i) = pos else {
                    if list.is_empty() {
                        e.interest.remove(&sock);
                    }
                    return Err(Errno::ENOENT);
                };
                if list[i].events & ev::EXCLUSIVE != 0 || events & ev::EXCLUSIVE != 0 {
                    return Err(Errno::EINVAL);
                }
                list[i].events = events;
                list[i].data = data;
                list[i].armed = true;
            }
            Op::Del => {
                let Some(i) = pos else {
                    if list.is_empty() {
                        e.interest.remove(&sock);
                    }
                    return Err(Errno::ENOENT);
                };
                list.remove(i);
                e.ready.retain(|&(s, f)| !(s == sock && f == fd));
                if list.is_empty() {
                    e.interest.remove(&sock);
                    socket::unwatch(&mut g, sock, &Watcher::Epoll(ep));
                }
                return Ok(());
            }
        }
        socket::watch(&mut g, sock, Watcher::Epoll(ep));
        // Already ready: queue it now, as Linux's ep_insert / ep_modify do.
        g.ev.signal(Watcher::Epoll(ep), sock, now);
        Ok(())
    }

    /// Ready library-OS events, at most `max`, walking the ready list as `ep_send_events`.
    pub fn collect(&self, max: usize) -> Vec<Event> {
        let mut g = net().lock();
        collect(&mut g, self.id, max)
    }

    /// Whether the instance holds kernel fds besides our wake eventfd.
    pub fn has_kernel_fds(&self) -> bool {
        let mut g = net().lock();
        g.ev.get(self.id).is_ok_and(|e| e.kernel_fds > 0)
    }

    /// About to sleep in the kernel: from now on readiness rings the wake eventfd. `false` if
    /// something is ready already (do not sleep).
    pub fn sleep_begin(&self) -> bool {
        let mut g = net().lock();
        let Ok(e) = g.ev.get(self.id) else { return false };
        if !e.ready.is_empty() {
            return false;
        }
        // The next readiness must write the eventfd (see `signal`).
        quiet(e);
        e.sleepers.fetch_add(1, SeqCst);
        true
    }

    /// Back from the kernel wait. Without the lock: taking it runs the stack, and frames it
    /// took would each ring the eventfd for this thread, which is awake and looks next.
    pub fn sleep_end(&self) {
        let _ = self.sleepers.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
    }

    /// This instance was put in another epoll or a poll set through the kernel: ring the wake
    /// eventfd on every readiness so the kernel sees it.
    pub fn set_nested(&self) {
        let mut g = net().lock();
        if let Ok(e) = g.ev.get(self.id) {
            e.nested = true;
            if !e.ready.is_empty() {
                let _ = rustix::io::write(&e.wake, &1u64.to_ne_bytes());
                e.rung = true;
            }
        }
    }

    /// Whether library-OS events are ready now (nothing is consumed).
    pub fn ready_now(&self) -> bool {
        let mut g = net().lock();
        Epoll::lib_ready(&mut g, self.id)
    }

    /// Library-side readiness of the instance itself (for `poll` on an epoll fd).
    fn lib_ready(g: &mut Inner, ep: usize) -> bool {
        // Re-check entries: one whose socket stopped being ready does not count.
        let Ok(e) = g.ev.get(ep) else { return false };
        let items: Vec<(usize, i32)> = e.ready.iter().copied().collect();
        items.iter().any(|&(sock, fd)| {
            let now = socket::events(g, sock);
            g.ev.epolls.get(ep).and_then(Option::as_ref).and_then(|e| e.interest.get(&sock)).is_some_and(
                |l| l.iter().any(|en| en.fd == fd && en.armed && now & (en.events | ev::ERR | ev::HUP) != 0),
            )
        })
    }
}

fn collect(g: &mut Inner, ep: usize, max: usize) -> Vec<Event> {
    let mut out = Vec::new();
    let Ok(e) = g.ev.get(ep) else { return out };
    let mut n = e.ready.len();
    while out.len() < max && n > 0 {
        n -= 1;
        let Ok(e) = g.ev.get(ep) else { break };
        let Some((sock, fd)) = e.ready.pop_front() else { break };
        let now = socket::events(g, sock);
        let Ok(e) = g.ev.get(ep) else { break };
        let Some(en) = e.interest.get_mut(&sock).and_then(|l| l.iter_mut().find(|en| en.fd == fd)) else {
            continue;
        };
        en.queued = false;
        if !en.armed {
            continue;
        }
        let got = now & (en.events | ev::ERR | ev::HUP);
        if got == 0 {
            continue;
        }
        out.push((got, en.data));
        if en.events & ev::ONESHOT != 0 {
            en.armed = false;
        } else if en.events & ev::ET == 0 {
            // Level-triggered: stays on the ready list, re-checked next time.
            en.queued = true;
            e.ready.push_back((sock, fd));
        }
    }
    if let Ok(e) = g.ev.get(ep) {
        quiet(e);
        // More ready than this caller took while others sleep: wake one of them, as Linux's
        // `ep_poll` passes a wake-up on (the eventfd's edge this caller consumed was the only).
        if !e.ready.is_empty() && e.sleepers.load(SeqCst) > 0 {
            let _ = rustix::io::write(&e.wake, &1u64.to_ne_bytes());
            e.rung = true;
        }
    }
    out
}

/// Nothing left on the ready list: drain the wake eventfd, so a kernel epoll or poll that
/// holds this instance (nesting) stops seeing it readable, as Linux re-checks nested readiness.
fn quiet(e: &mut EpState) {
    if e.ready.is_empty() && e.rung {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&e.wake, &mut b);
        e.rung = false;
    }
}

/// One library-OS fd in a `poll`/`select` set.
pub enum PollObj<'a> {
    /// A socket.
    Socket(&'a Arc<Socket>),
    /// An epoll instance (its library half; the shim polls its kernel half).
    Epoll(&'a Arc<Epoll>),
}

/// What a look of `poll`/`select` found for each library-OS fd (inline for a few fds: the
/// common `poll` of one socket allocates nothing).
pub type Revents = smallvec::SmallVec<[u32; 4]>;

/// Readiness of library-OS fds for `poll`/`select`, each masked by what was asked (plus
/// `POLLERR`/`POLLHUP`/`POLLNVAL`, always reported). With `watch`, the poller is registered
/// on each until [`poll_end`].
pub fn poll_lib(objs: &[(PollObj<'_>, u32)], watch: Option<&Arc<Poller>>) -> Revents {
    let mut g = net().lock();
    look(&mut g, objs, watch)
}

/// [`poll_lib`] with the poller registered, except that a look that finds something ready
/// unregisters it at once (the [`poll_end`] of a call that returns now), under the same lock:
/// a `poll` that sleeps once takes the lock twice (look and register; look and end), not four
/// times.
pub fn poll_lib_or_end(objs: &[(PollObj<'_>, u32)], p: &Arc<Poller>) -> Revents {
    let mut g = net().lock();
    let rev = look(&mut g, objs, Some(p));
    if rev.iter().any(|&r| r != 0) {
        unwatch_all(&mut g, objs, p);
    }
    rev
}

/// The last look of a `poll`/`select` call and its [`poll_end`], under one lock.
pub fn poll_lib_end(objs: &[(PollObj<'_>, u32)], p: &Arc<Poller>) -> Revents {
    let mut g = net().lock();
    let rev = look(&mut g, objs, None);
    unwatch_all(&mut g, objs, p);
    rev
}

fn look(g: &mut Inner, objs: &[(PollObj<'_>, u32)], watch: Option<&Arc<Poller>>) -> Revents {
    objs.iter()
        .map(|(o, want)| {
            let mask = want | ev::ERR | ev::HUP | ev::NVAL;
            match o {
                PollObj::Socket(s) => {
                    if let Some(p) = watch {
                        socket::watch(g, s.id(), Watcher::Poller(p.clone()));
                    }
                    socket::events(g, s.id()) & mask
                }
                PollObj::Epoll(e) => {
                    if let Some(p) = watch {
                        if let Ok(st) = g.ev.get(e.id) {
                            let w = Watcher::Poller(p.clone());
                            if !st.watchers.contains(&w) {
                                st.watchers.push(w);
                            }
                        }
                    }
                    if Epoll::lib_ready(g, e.id) {
                        (ev::IN | ev::RDNORM) & mask
                    } else {
                        0
                    }
                }
            }
        })
        .collect()
}

/// Unregisters the poller from every fd of a `poll`/`select` call.
pub fn poll_end(objs: &[(PollObj<'_>, u32)], p: &Arc<Poller>) {
    let mut g = net().lock();
    unwatch_all(&mut g, objs, p);
}

fn unwatch_all(g: &mut Inner, objs: &[(PollObj<'_>, u32)], p: &Arc<Poller>) {
    let w = Watcher::Poller(p.clone());
    for (o, _) in objs {
        match o {
            PollObj::Socket(s) => socket::unwatch(g, s.id(), &w),
            PollObj::Epoll(e) => {
                if let Ok(st) = g.ev.get(e.id) {
                    st.watchers.retain(|x| x != &w);
                }
            }
        }
    }
}
