//! The packetdrill-style TCP scripts of `backends/tests/tcp/`, played against the library OS's
//! own stack (`core::net::stack::Stack`: a shard per connection, our demultiplexing, listener
//! sockets moving to their own shard on SYN) instead of a bare smoltcp interface. The scripts
//! pass on both, so the demultiplexing changes nothing TCP observes.

use std::path::PathBuf;

use arrakis_backends::script::{self, run, Script, ScriptDevice, Target, REMOTE_ADDR};
use arrakis_backends::smoltcp::socket::tcp;
use arrakis_backends::smoltcp::time::{Duration, Instant};
use arrakis_backends::smoltcp::wire::{IpAddress, IpCidr, IpEndpoint};
use arrakis_core::net::stack::{Buffers, ShardId, Stack};

struct StackTarget {
    stack: Stack<ScriptDevice>,
    listener: Option<ShardId>,
    conn: Option<ShardId>,
}

impl StackTarget {
    fn new() -> StackTarget {
        let addr = IpCidr::new(IpAddress::Ipv4(script::LOCAL_ADDR), script::PREFIX_LEN);
        let defaults =
            Buffers { tcp_rx: script::DEFAULT_BUFFER, tcp_tx: script::DEFAULT_BUFFER, ..Buffers::default() };
        let now = Instant::from_micros(script::EPOCH_MICROS);
        let stack = Stack::with_seed(ScriptDevice::new(), &[addr], now, defaults, script::RANDOM_SEED);
        StackTarget { stack, listener: None, conn: None }
    }

    /// The connection the script talks about: the accepted or connected one, else the first
    /// one a SYN made on the listener.
    fn current(&self) -> Option<ShardId> {
        self.conn.or_else(|| self.listener.and_then(|l| self.stack.pending(l)))
    }

    fn sock(&mut self) -> Result<&mut tcp::Socket<'static>, String> {
        let id = self.current().ok_or("no connection")?;
        self.stack.tcp_mut(id).map_err(|e| e.to_string())
    }
}

impl Target for StackTarget {
    fn device(&mut self) -> &mut ScriptDevice {
        self.stack.device_mut()
    }

    fn poll(&mut self, now: Instant) {
        self.stack.poll(now);
    }

    fn poll_at(&mut self, _now: Instant) -> Option<Instant> {
        self.stack.poll_at()
    }

    fn set_buffers(&mut self, rx: Option<usize>, tx: Option<usize>) -> Result<(), String> {
        if self.current().is_some() || self.listener.is_some() {
            return Err("buffer sizes can only change before listen/connect".into());
        }
        let d = self.stack.defaults_mut();
        d.tcp_rx = rx.unwrap_or(d.tcp_rx);
        d.tcp_tx = tx.unwrap_or(d.tcp_tx);
        Ok(())
    }

    fn set_nagle(&mut self, on: bool) -> Result<(), String> {
        self.stack.defaults_mut().nagle = on;
        if let Ok(s) = self.sock() {
            s.set_nagle_enabled(on);
        }
        Ok(())
    }

    fn set_ack_delay(&mut self, delay: Option<Duration>) -> Result<(), String> {
        self.stack.defaults_mut().ack_delay = delay;
        if let Ok(s) = self.sock() {
            s.set_ack_delay(delay);
        }
        Ok(())
    }

    fn listen(&mut self, port: u16) -> Result<(), String> {
        self.listener = Some(self.stack.listen(port, 128).map_err(|e| format!("listen: {e}"))?);
        Ok(())
    }

    fn connect(&mut self, local_port: u16, remote_port: u16) -> Result<(), String> {
        let remote = IpEndpoint::new(IpAddress::Ipv4(REMOTE_ADDR), remote_port);
        self.conn =
            Some(self.stack.connect_from(Some(local_port), remote).map_err(|e| format!("connect: {e}"))?);
        Ok(())
    }

    fn accept(&mut self) -> Result<(), String> {
        let l = self.listener.ok_or("accept without listen")?;
        match self.stack.accept(l).map_err(|e| e.to_string())? {
            Some(c) => {
                self.conn = Some(c);
                Ok(())
            }
            None => Err(format!("no connection to accept (state {})", self.state())),
        }
    }

    fn send(&mut self, data: &[u8]) -> Result<usize, String> {
        self.sock()?.send_slice(data).map_err(|e| format!("send: {e}"))
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, String> {
        script::recv_into(self.sock()?, buf)
    }

    fn readable(&mut self) -> usize {
        self.sock().map(|s| s.recv_queue()).unwrap_or(0)
    }

    fn close(&mut self) -> Result<(), String> {
        self.sock()?.close();
        Ok(())
    }

    fn abort(&mut self) -> Result<(), String> {
        self.sock()?.abort();
        Ok(())
    }

    fn state(&mut self) -> String {
        match self.current() {
            Some(id) => self.stack.tcp(id).map(|s| s.state().to_string()).unwrap_or_else(|e| e.to_string()),
            None if self.listener.is_some() => tcp::State::Listen.to_string(),
            None => tcp::State::Closed.to_string(),
        }
    }
}

fn scripts() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../backends/tests/tcp");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pkt"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_tcp_script_passes_on_the_library_os_stack() {
    let all = scripts();
    assert!(all.len() >= 20, "expected the scripted cases, found {}", all.len());
    let mut failures = Vec::new();
    for path in &all {
        let text = std::fs::read_to_string(path).unwrap();
        let script = Script::parse(&text).unwrap_or_else(|e| panic!("{}:{e}", path.display()));
        if let Err(e) = run(&script, &mut StackTarget::new()) {
            failures.push(format!("{}:{e}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scripts fail:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n\n")
    );
    eprintln!("{} TCP scripts pass on the library-OS stack", all.len());
}
