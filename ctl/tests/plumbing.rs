//! The data plane end to end: the real `arrakis daemon`, the switch process it starts, and
//! container children that take NICs from the daemon and move hand-built UDP frames through
//! the switch. Each test has its own run directory; its guards kill the daemon, the switch
//! and the children even when it fails.

mod common;

use common::*;

/// Not a test: the container child's body (acts only when started by [`Container::start`]).
#[test]
fn child() {
    child_main();
}

#[test]
fn two_containers_exchange_a_frame_and_an_ungranted_source_is_dropped_and_counted() {
    let dir = Dir::new("nic");
    let _daemon = start_daemon(&dir);
    let mut a = Container::start(&dir, "child", "a", &[40001]);
    let mut b = Container::start(&dir, "child", "b", &[40002]);
    // Each got its own ephemeral blocks, listed as its grants.
    let v = json(&dir, &["filters"]);
    let blocks: Vec<(u64, u64)> = v["grants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["filter"]["ports"]["lo"].as_u64().unwrap() >= 61000)
        .map(|g| (g["filter"]["ports"]["lo"].as_u64().unwrap(), g["holders"][0].as_u64().unwrap()))
        .collect();
    assert_eq!(blocks.len(), 4, "{v}");

    // A granted frame goes through; the answer comes back.
    assert_eq!(a.ask("send 40001 40002 hello"), "sent");
    assert_eq!(b.ask("recv"), "got 40001 40002 hello");
    assert_eq!(b.ask("send 40002 40001 back"), "sent");
    assert_eq!(a.ask("recv"), "got 40002 40001 back");

    // From a port A holds no grant for: dropped. The good frame after it arrives first.
    assert_eq!(a.ask("send 40009 40002 spoof"), "sent");
    assert_eq!(a.ask("send 40001 40002 fine"), "sent");
    assert_eq!(b.ask("recv"), "got 40001 40002 fine");
    let t = traffic(&dir, a.pid());
    assert_eq!(t["drops"]["src-not-granted"], 1, "{t}");
    assert_eq!(t["tx_frames"], 3, "{t}");
    assert_eq!(traffic(&dir, b.pid())["rx_frames"], 2);
}
