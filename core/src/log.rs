//! Logging through `tracing`, filtered by `ARRAKIS_LOG`. The shim supplies the sink: a
//! function that writes one formatted line with raw system calls, so that a log line never
//! passes through an intercepted `write` and can never recurse into the library OS.

use std::io;
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Where finished log lines go.
pub type Sink = Arc<dyn Fn(&[u8]) + Send + Sync>;

struct SinkWriter {
    sink: Sink,
    buf: Vec<u8>,
}

impl io::Write for SinkWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            (self.sink)(&self.buf);
            self.buf.clear();
        }
        Ok(())
    }
}

impl Drop for SinkWriter {
    fn drop(&mut self) {
        let _ = io::Write::flush(self);
    }
}

struct MakeSink(Sink);

impl<'a> MakeWriter<'a> for MakeSink {
    type Writer = SinkWriter;
    fn make_writer(&'a self) -> SinkWriter {
        SinkWriter { sink: self.0.clone(), buf: Vec::with_capacity(256) }
    }
}

/// Installs the global subscriber. Returns an error naming `ARRAKIS_LOG` when the filter does
/// not parse (the default `warn` filter is installed instead).
pub fn init(filter: &str, sink: Sink) -> Result<(), String> {
    let (filter, err) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (
            EnvFilter::new("warn"),
            Some(format!("ARRAKIS_LOG={filter:?} is not a valid filter ({e}); using \"warn\"")),
        ),
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(MakeSink(sink))
        .finish();
    tracing::subscriber::set_global_default(subscriber).map_err(|e| e.to_string())?;
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn lines_reach_the_sink_whole() {
        let got = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let g = got.clone();
        let sink: Sink = Arc::new(move |b: &[u8]| g.lock().unwrap().push(b.to_vec()));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(MakeSink(sink))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(fd = 3, "hello");
            tracing::debug!("filtered out");
        });
        let lines = got.lock().unwrap();
        assert_eq!(lines.len(), 1);
        let line = String::from_utf8_lossy(&lines[0]);
        assert!(line.contains("hello") && line.contains("fd=3") && line.ends_with('\n'), "{line}");
    }
}
