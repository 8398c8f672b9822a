//! Which epoll instances hold the device's doorbell (`Epoll::bell_woke`): an instance whose
//! wake-ups keep serving other instances gives it up, but never the process's last holder,
//! and takes it back with the first wake-up that brings it events.
//!
//! Its own binary: the count of holders is per process.

use arrakis_core::event::{BellChange, Epoll, BELLS_FOR_OTHERS};

#[test]
fn an_instance_woken_for_others_gives_up_the_doorbell_but_not_the_last_one() {
    let (a, _) = Epoll::new().expect("an instance");
    let (b, _) = Epoll::new().expect("another");
    // Made without the shim: neither holds the doorbell; one that never had it asks for it
    // when it sleeps (as before), and its wake-ups count for nothing.
    assert!(a.asks_bell() && b.asks_bell());
    for _ in 0..3 * BELLS_FOR_OTHERS {
        assert_eq!(a.bell_woke(false), BellChange::Keep);
    }
    a.bell_registered();
    b.bell_registered();
    assert!(a.asks_bell() && b.asks_bell());

    // A wake-up with events resets the count.
    for _ in 0..BELLS_FOR_OTHERS - 1 {
        assert_eq!(a.bell_woke(false), BellChange::Keep);
    }
    assert_eq!(a.bell_woke(true), BellChange::Keep);
    for _ in 0..BELLS_FOR_OTHERS - 1 {
        assert_eq!(a.bell_woke(false), BellChange::Keep);
    }
    assert!(a.asks_bell());
    assert_eq!(a.bell_woke(false), BellChange::Drop, "the {BELLS_FOR_OTHERS}th wake-up for others");
    assert!(!a.asks_bell(), "a thread sleeping on it no longer asks for the doorbell");
    // More such wake-ups change nothing.
    for _ in 0..3 * BELLS_FOR_OTHERS {
        assert_eq!(a.bell_woke(false), BellChange::Keep);
    }

    // `b` is now the only holder: it keeps the doorbell however its wake-ups go.
    for _ in 0..3 * BELLS_FOR_OTHERS {
        assert_eq!(b.bell_woke(false), BellChange::Keep);
    }
    assert!(b.asks_bell());

    // `a` has events again: it takes the doorbell back, and can then give it up again
    // (there are two holders once more).
    assert_eq!(a.bell_woke(true), BellChange::Take);
    assert!(a.asks_bell());
    assert_eq!(a.bell_woke(true), BellChange::Keep);
    let changes: Vec<BellChange> = (0..BELLS_FOR_OTHERS).map(|_| a.bell_woke(false)).collect();
    assert_eq!(changes.last(), Some(&BellChange::Drop), "{changes:?}");

    // A failed re-registration: the instance holds nothing, and asks as one that never had
    // the doorbell.
    assert_eq!(a.bell_woke(true), BellChange::Take);
    a.bell_lost();
    assert!(a.asks_bell());
    for _ in 0..3 * BELLS_FOR_OTHERS {
        assert_eq!(a.bell_woke(false), BellChange::Keep);
    }

    // Closing `b`, the last holder, leaves none: `a` (registered again) cannot give it up.
    drop(b);
    a.bell_registered();
    for _ in 0..3 * BELLS_FOR_OTHERS {
        assert_eq!(a.bell_woke(false), BellChange::Keep);
    }
    assert!(a.asks_bell());
}
