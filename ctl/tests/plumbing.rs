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

    // A second nic (a process that execs asks again) replaces the first: same blocks, a
    // fresh port, and the old one is gone from the switch.
    let again = a.ask("nic");
    let info: serde_json::Value = serde_json::from_str(again.strip_prefix("nic ").unwrap()).unwrap();
    assert_eq!(info, a.ready);
    assert_eq!(a.ask("send 40001 40002 renewed"), "sent");
    assert_eq!(b.ask("recv"), "got 40001 40002 renewed");
    assert_eq!(traffic(&dir, a.pid())["tx_frames"], 1, "the counters are the new port's");
}

/// Grants as (id, filter text, holders), for comparing listings.
fn grants(dir: &Dir) -> Vec<String> {
    let v = json(dir, &["filters"]);
    v["grants"].as_array().unwrap().iter().map(|g| g.to_string()).collect()
}

#[test]
fn kill_9_of_the_daemon_loses_no_frame_and_the_next_daemon_adopts_the_switch() {
    let dir = Dir::new("daemon-kill");
    let daemon = start_daemon(&dir);
    let mut a = Container::start(&dir, "child", "a", &[40001]);
    let mut b = Container::start(&dir, "child", "b", &[40002]);
    let switch = dir.switch_pid().expect("a switch runs");
    let before = grants(&dir);
    const N: u64 = 100_000;
    b.send_line(&format!("echo {N}"));
    assert_eq!(b.answer(), "echoing");
    a.send_line(&format!("burst 40001 40002 {N}"));
    drop(daemon); // kill -9, while the frames flow
    let daemon = start_daemon(&dir);
    assert_eq!(a.answer(), format!("burst {N} {N}"), "frames were lost");
    assert_eq!(b.answer(), format!("echoed {N}"));
    // The same grants, the same switch, its ports taken back with their counters.
    assert_eq!(grants(&dir), before);
    assert_eq!(dir.switch_pid(), Some(switch));
    let t = traffic(&dir, a.pid());
    assert!(t["tx_frames"].as_u64().unwrap() >= N, "{t}");
    assert_eq!(t["drops"], serde_json::json!({}), "{t}");
    // And the adopted ports still follow the grants: a revocation stops A's next frame.
    let id = a.ask("grant 40005");
    let id = id.strip_prefix("granted ").unwrap_or_else(|| panic!("{id}")).to_owned();
    let (ok, _, err) = cli(&dir, &["revoke", &id]);
    assert!(ok, "{err}");
    assert_eq!(a.ask("send 40005 40002 revoked"), "sent");
    assert_eq!(a.ask("send 40001 40002 after"), "sent");
    assert_eq!(b.ask("recv"), "got 40001 40002 after");
    assert_eq!(traffic(&dir, a.pid())["drops"]["src-not-granted"], 1);
    drop(daemon);
}

#[test]
fn a_revoked_grant_stops_traffic_at_once() {
    let dir = Dir::new("revoke");
    let _daemon = start_daemon(&dir);
    let mut a = Container::start(&dir, "child", "a", &[]);
    let mut b = Container::start(&dir, "child", "b", &[40012]);
    let id = a.ask("grant 40011");
    let id = id.strip_prefix("granted ").unwrap_or_else(|| panic!("{id}")).to_owned();
    assert_eq!(a.ask("send 40011 40012 before"), "sent");
    assert_eq!(b.ask("recv"), "got 40011 40012 before");
    let (ok, _, err) = cli(&dir, &["revoke", &id]);
    assert!(ok, "{err}");
    // The very next frame from the revoked port is dropped; one from A's ephemeral block,
    // sent after it, arrives (so the dropped one was looked at before it).
    let eph = a.ready["udp_ports"]["lo"].as_u64().unwrap();
    assert_eq!(a.ask("send 40011 40012 late"), "sent");
    assert_eq!(a.ask(&format!("send {eph} 40012 ephemeral")), "sent");
    assert_eq!(b.ask("recv"), format!("got {eph} 40012 ephemeral"));
    let t = traffic(&dir, a.pid());
    assert_eq!(t["drops"]["src-not-granted"], 1, "{t}");
}

#[test]
fn kill_9_of_the_switch_restarts_it_and_traffic_resumes() {
    let dir = Dir::new("switch-kill");
    let _daemon = start_daemon(&dir);
    let mut a = Container::start(&dir, "child", "a", &[40021]);
    let mut b = Container::start(&dir, "child", "b", &[40022]);
    assert_eq!(a.ask("send 40021 40022 one"), "sent");
    assert_eq!(b.ask("recv"), "got 40021 40022 one");
    let old = dir.switch_pid().expect("a switch runs");
    dir.kill_switch();
    wait_for("a new switch", || dir.switch_pid().is_some_and(|p| p != old));
    // The same NICs, re-attached: frames sent after the restart go through, both ways.
    assert_eq!(a.ask("send 40021 40022 two"), "sent");
    assert_eq!(b.ask("recv"), "got 40021 40022 two");
    b.send_line("echo 1000");
    assert_eq!(b.answer(), "echoing");
    assert_eq!(a.ask("burst 40021 40022 1000"), "burst 1000 1000");
    assert_eq!(b.answer(), "echoed 1000");
}

#[test]
fn kill_9_of_a_container_frees_its_ports_for_the_next() {
    let dir = Dir::new("container-kill");
    let _daemon = start_daemon(&dir);
    let a = Container::start(&dir, "child", "a", &[40031]);
    let a_pid = a.pid();
    let blocks = (a.ready["tcp_ports"].clone(), a.ready["udp_ports"].clone());
    drop(a);
    wait_for("reclamation", || {
        let v = json(&dir, &["filters"]);
        v["grants"].as_array().unwrap().iter().all(|g| g["holders"][0].as_u64() != Some(u64::from(a_pid)))
    });
    // Its port goes to the next container; its ephemeral blocks are free again but wait at
    // the back of the queue (a dead process's connections may still be open at their
    // peers), so the next container gets unused ones; its switch port is gone.
    let c = Container::start(&dir, "child", "c", &[40031]);
    assert_ne!(c.ready["tcp_ports"], blocks.0);
    assert_ne!(c.ready["udp_ports"], blocks.1);
    assert!(traffic(&dir, a_pid).is_null());
    assert!(!traffic(&dir, c.pid()).is_null());
}

/// Waits for a CLI child to exit: (success, stdout and stderr).
fn finish(g: &mut Guard) -> (bool, String) {
    let st = g.0.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(g.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    std::io::Read::read_to_string(g.0.stderr.as_mut().unwrap(), &mut out).unwrap();
    (st.success(), out)
}

/// pcap records of a file: (incl_len, the frame).
fn pcap(bytes: &[u8]) -> Vec<Vec<u8>> {
    assert_eq!(&bytes[..4], &0xa1b2_c3d4u32.to_le_bytes(), "pcap magic");
    assert_eq!(&bytes[20..24], &101u32.to_le_bytes(), "LINKTYPE_RAW");
    let (mut off, mut out) = (24, Vec::new());
    while off < bytes.len() {
        let incl = u32::from_le_bytes(bytes[off + 8..off + 12].try_into().unwrap()) as usize;
        out.push(bytes[off + 16..off + 16 + incl].to_vec());
        off += 16 + incl;
    }
    assert_eq!(off, bytes.len(), "a partial record");
    out
}

#[test]
fn capture_writes_a_containers_frames_as_pcap_until_its_count_or_ctrl_c() {
    let dir = Dir::new("capture");
    let _daemon = start_daemon(&dir);
    let mut a = Container::start(&dir, "child", "cap-a", &[40041]);
    let mut b = Container::start(&dir, "child", "cap-b", &[40042]);
    let file = dir.0.join("a.pcap");
    let capture = |args: &[&str]| {
        std::process::Command::new(ARRAKIS)
            .arg("capture")
            .args(args)
            .arg("-w")
            .arg(&file)
            .env("ARRAKIS_RUN_DIR", dir.run())
            .env_remove("ARRAKIS_SOCKET")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // By name, three frames: two A sends (one dropped at the switch) and one A receives.
    let mut cap = Guard(capture(&["cap-a", "--count", "3"]));
    wait_for("the capture to start", || std::fs::metadata(&file).is_ok_and(|m| m.len() >= 24));
    assert_eq!(a.ask("send 40041 40042 one"), "sent");
    assert_eq!(b.ask("recv"), "got 40041 40042 one");
    assert_eq!(a.ask("send 40049 40042 dropped"), "sent");
    assert_eq!(b.ask("send 40042 40041 three"), "sent");
    assert_eq!(a.ask("recv"), "got 40042 40041 three");
    assert_eq!(a.ask("send 40041 40042 beyond"), "sent");
    assert_eq!(b.ask("recv"), "got 40041 40042 beyond");
    let (ok, stdout) = finish(&mut cap);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("captured 3 frame(s)") && stdout.contains("count reached"), "{stdout}");
    let frames = pcap(&std::fs::read(&file).unwrap());
    let payloads: Vec<Vec<u8>> = frames.iter().map(|f| parse_udp4(f).unwrap().2).collect();
    assert_eq!(payloads, [&b"one"[..], b"dropped", b"three"]);
    if let Ok(out) = std::process::Command::new("tshark").arg("-r").arg(&file).output() {
        assert!(out.status.success(), "tshark: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    }

    // By pid, until Ctrl-C.
    let mut cap = Guard(capture(&[&a.pid().to_string()]));
    wait_for("the capture to start", || std::fs::metadata(&file).is_ok_and(|m| m.len() == 24));
    assert_eq!(a.ask("send 40041 40042 four"), "sent");
    assert_eq!(b.ask("recv"), "got 40041 40042 four");
    wait_for("the frame in the file", || std::fs::read(&file).is_ok_and(|b| b.len() > 24));
    let _ = std::process::Command::new("kill").args(["-INT", &cap.pid().to_string()]).status();
    let (ok, so) = finish(&mut cap);
    assert!(ok, "{so}");
    assert!(so.contains("captured 1 frame(s)") && so.contains("interrupted"), "{so}");
    // Stopped: later frames are not written.
    assert_eq!(a.ask("send 40041 40042 five"), "sent");
    assert_eq!(b.ask("recv"), "got 40041 40042 five");
    assert_eq!(pcap(&std::fs::read(&file).unwrap()).len(), 1);
    // Nobody else's container, and no such container.
    let (ok, _, err) = cli(&dir, &["capture", "nobody", "-w", "/dev/null"]);
    assert!(!ok && err.contains("no container nobody"), "{err}");
}

/// Kills a process by pid on drop (a daemon the launcher started).
struct KillPid(Option<u32>);

impl Drop for KillPid {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

#[test]
fn run_with_the_emulator_backend_starts_a_daemon_when_none_answers() {
    let dir = Dir::new("launcher");
    let run = |dir: &std::path::Path| {
        std::process::Command::new(ARRAKIS)
            .args(["run", "--backend", "emulator", "--", "sh", "-c", "echo backend=$ARRAKIS_BACKEND"])
            .env("ARRAKIS_RUN_DIR", dir)
            .env_remove("ARRAKIS_SOCKET")
            .output()
            .unwrap()
    };
    // The shim must exist for `run`; without it the launcher says so and this test has
    // nothing else to check.
    let shim = std::path::Path::new(ARRAKIS).with_file_name("libarrakis.so");
    if !shim.is_file() && std::env::var_os("ARRAKIS_SHIM").is_none() {
        eprintln!("no libarrakis.so next to {ARRAKIS}: skipped");
        return;
    }
    let out = run(&dir.run());
    let mut daemon = KillPid(None);
    let status = json(&dir, &["status"]);
    daemon.0 = status["daemon"]["pid"].as_u64().map(|p| p as u32);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("backend=emulator"));
    assert!(daemon.0.is_some(), "{status}");
    // A second run finds it and starts no other.
    let out = run(&dir.run());
    assert!(out.status.success());
    assert_eq!(json(&dir, &["status"])["daemon"]["pid"].as_u64().map(|p| p as u32), daemon.0);
    // A run directory that cannot be made is a clear error.
    let out = run(std::path::Path::new("/proc/arrakis-no-such-dir"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot create the run directory") && err.contains("ARRAKIS_RUN_DIR"), "{err}");
}
