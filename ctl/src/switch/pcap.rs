//! A pcap writer for a container's frames (`arrakis capture`): the classic libpcap format,
//! microsecond timestamps, `LINKTYPE_RAW` (101) since the NICs carry bare IP packets.
//! tcpdump and tshark read it as is.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// `LINKTYPE_RAW`: each record is an IPv4 or IPv6 packet, no link header.
pub const LINKTYPE_RAW: u32 = 101;
/// Bytes kept of each frame.
pub const SNAPLEN: u32 = 65535;

/// Writes a pcap stream: the global header on creation, then one record per frame.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the global header.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic: µs timestamps, little-endian
        h.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes()); // thiszone
        h.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        h.extend_from_slice(&SNAPLEN.to_le_bytes());
        h.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
        out.write_all(&h)?;
        Ok(PcapWriter { out })
    }

    /// Writes one frame seen at `at`, cut to [`SNAPLEN`].
    pub fn write(&mut self, at: SystemTime, frame: &[u8]) -> io::Result<()> {
        let t = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let kept = &frame[..frame.len().min(SNAPLEN as usize)];
        let mut r = [0u8; 16];
        r[0..4].copy_from_slice(&(t.as_secs() as u32).to_le_bytes());
        r[4..8].copy_from_slice(&t.subsec_micros().to_le_bytes());
        r[8..12].copy_from_slice(&(kept.len() as u32).to_le_bytes());
        r[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        self.out.write_all(&r)?;
        self.out.write_all(kept)
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The underlying writer.
    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The bytes tcpdump/tshark expect (checked against `pcap-savefile(5)`); if tshark is
    /// installed, it must read the file back too.
    #[test]
    fn header_and_records_have_the_savefile_layout() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        // IPv4 UDP 10.0.0.1:5000 -> 10.0.0.2:53 with a valid header checksum.
        let mut frame = vec![0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        let sum: u32 = frame.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
        let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        frame[10..12].copy_from_slice(&sum.to_be_bytes());
        frame.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 12, 0, 0, 1, 2, 3, 4]);
        w.write(at, &frame).unwrap();
        w.write(at, &vec![0x60; 70_000]).unwrap();
        let bytes = w.into_inner();

        assert_eq!(
            &bytes[..24],
            &[0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 101, 0, 0, 0]
        );
        let rec = &bytes[24..40];
        assert_eq!(u32::from_le_bytes(rec[0..4].try_into().unwrap()), 1_700_000_000);
        assert_eq!(u32::from_le_bytes(rec[4..8].try_into().unwrap()), 123_456);
        assert_eq!(u32::from_le_bytes(rec[8..12].try_into().unwrap()), 32);
        assert_eq!(u32::from_le_bytes(rec[12..16].try_into().unwrap()), 32);
        assert_eq!(&bytes[40..72], &frame[..]);
        let rec2 = &bytes[72..88];
        assert_eq!(u32::from_le_bytes(rec2[8..12].try_into().unwrap()), 65535, "cut to the snaplen");
        assert_eq!(u32::from_le_bytes(rec2[12..16].try_into().unwrap()), 70_000, "original length kept");
        assert_eq!(bytes.len(), 88 + 65535);

        // Optional cross-check with a real reader; never installed by the test.
        let Ok(tshark) = which("tshark") else { return };
        let dir = std::env::temp_dir().join(format!("arrakis-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.pcap");
        std::fs::write(&file, &bytes).unwrap();
        let out = std::process::Command::new(tshark).arg("-r").arg(&file).output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "tshark: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("10.0.0.1"));
    }

    fn which(name: &str) -> Result<std::path::PathBuf, ()> {
        let path = std::env::var_os("PATH").ok_or(())?;
        std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()).ok_or(())
    }
}
