//! Scripted TCP cases in the packetdrill style, played against smoltcp on the script device.
//! One test per file in `tests/tcp/`; syntax and case list in `tests/tcp/README.md`.
//! `TCP_SCRIPT_TRACE=1 cargo test -p arrakis-backends --test tcp_script -- --nocapture` prints
//! each case's trace.

use std::path::PathBuf;

use arrakis_backends::script::{run, Script, SmoltcpTarget};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tcp")
}

fn play(name: &str) {
    let path = dir().join(format!("{name}.pkt"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let script = Script::parse(&text).unwrap_or_else(|e| panic!("{}:{e}", path.display()));
    let mut target = SmoltcpTarget::new();
    match run(&script, &mut target) {
        Ok(report) => {
            if std::env::var_os("TCP_SCRIPT_TRACE").is_some() {
                eprintln!("{}:\n{}", path.display(), report.trace.join("\n"));
            }
        }
        Err(e) => panic!("{}:{e}", path.display()),
    }
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { play(stringify!($name)); })*
        const CASES: &[&str] = &[$(stringify!($name)),*];
    };
}

cases!(
    abort,
    data_loss_rto,
    fast_retransmit,
    fin_lost,
    fin_peer_first,
    fin_simultaneous,
    fin_we_first,
    fin_with_data,
    handshake_active,
    handshake_passive,
    reorder,
    reorder_sack,
    rst_closed_port,
    rst_established,
    rst_in_window,
    rst_syn_sent,
    syn_retransmit,
    synack_retransmit,
    time_wait,
    zero_window_idle,
    zero_window_local,
    zero_window_peer,
);

/// Every script in the directory is a test case (none forgotten in the list above).
#[test]
fn every_script_is_listed() {
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .expect("tests/tcp")
        .filter_map(|e| e.ok()?.file_name().into_string().ok()?.strip_suffix(".pkt").map(str::to_string))
        .collect();
    files.sort();
    let mut listed: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed);
}

const PRE: &str = "0 socket listen 8080
+0 < S 0:0(0) win 65535 <mss 1460>
+0 > S. 0:0(0) ack 1 <...>
+0 < . 1:1(0) ack 1 win 65535
";

fn fails(text: &str) -> arrakis_backends::script::ScriptError {
    let script = Script::parse(text).expect("parses");
    run(&script, &mut SmoltcpTarget::new()).expect_err("the script must fail")
}

/// The runner is only useful if wrong expectations fail, with the right line and a diff.
#[test]
fn the_harness_catches_wrong_expectations() {
    let cases: &[(&str, usize, &str)] = &[
        // wrong ack number
        ("+0 socket send 10\n+0 > P. 1:11(10) ack 2\n", 6, "ack: expected 2 got 1"),
        // wrong flags and sequence
        ("+0 socket send 10\n+0 > . 1:12(11) ack 1\n", 6, "flags: expected . got P."),
        ("+0 socket send 10\n+0 > P. 1:12(11) ack 1\n", 6, "sequence: expected 1:12 got 1:11"),
        // wrong window, wrong options
        ("+0 socket send 10\n+0 > P. 1:11(10) ack 1 win 100\n", 6, "win: expected 100 got 65535"),
        ("+0 socket send 10\n+0 > P. 1:11(10) ack 1 <nop,mss 1460>\n", 6, "options: missing mss 1460"),
        // a retransmission expected before the RTO: nothing comes
        (
            "+0 socket send 10\n+0 > P. 1:11(10) ack 1\n+0.5 > P. 1:11(10) ack 1\n",
            7,
            "the stack sent nothing",
        ),
        // ... or after it: it came too early
        (
            "+0 socket send 10\n+0 > P. 1:11(10) ack 1\n+1.5~+2 > P. 1:11(10) ack 1\n",
            7,
            "expected no earlier",
        ),
        // a segment no line accounts for, before the next action or at the end
        ("+0 socket send 10\n+0.1 socket close\n", 6, "unexpected outbound segment at t=0.000000"),
        ("+0 socket send 10\n", 5, "after the last line"),
        // silence that is not
        (
            "+0 socket send 10\n+0 > P. 1:11(10) ack 1\n+2 > (none)\n",
            7,
            "unexpected outbound segment at t=1.000000",
        ),
        // application-level assertions
        ("+0 < P. 1:11(10) ack 1\n+0 socket recv 11\n", 6, "only 10 bytes"),
        ("+0 socket state CLOSE-WAIT\n", 5, "expected CLOSE-WAIT, the socket is ESTABLISHED"),
        ("+0 < P. 1:11(10) ack 1\n+0 socket readable 9\n", 6, "10 bytes are readable"),
        // time cannot go back
        ("+1 socket send 10\n0.5 > (none)\n", 6, "before the current time"),
    ];
    for (tail, line, needle) in cases {
        let e = fails(&format!("{PRE}{tail}"));
        assert_eq!(e.line, *line, "{tail}\n{e}");
        assert!(e.message.contains(needle), "{tail}\nwanted `{needle}` in:\n{e}");
    }
}
