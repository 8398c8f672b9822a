//! Control messages (`msg_control`) as Linux lays them out on x86_64: what `recvmsg` writes,
//! with `put_cmsg`'s truncation rules for a short buffer, and the walk `sendmsg` makes over
//! the caller's messages (`for_each_cmsghdr` with `CMSG_OK`).
//!
//! Pure byte handling: the shim copies the bytes in and out of the program's memory; which
//! messages a socket produces or accepts is decided in [`super::socket`].

use crate::error::{Errno, SysResult};

/// `sizeof(struct cmsghdr)`: `size_t cmsg_len; int cmsg_level; int cmsg_type`.
pub const HDR: usize = 16;

/// `CMSG_ALIGN`.
pub const fn align(n: usize) -> usize {
    (n + 7) & !7
}

/// `CMSG_LEN`.
pub const fn len(data: usize) -> usize {
    HDR + data
}

/// `CMSG_SPACE`.
pub const fn space(data: usize) -> usize {
    HDR + align(data)
}

/// One control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmsg {
    /// `cmsg_level`.
    pub level: i32,
    /// `cmsg_type`.
    pub ty: i32,
    /// The data after the header.
    pub data: Vec<u8>,
}

impl Cmsg {
    /// A message carrying a C `int`.
    pub fn int(level: i32, ty: i32, v: i32) -> Cmsg {
        Cmsg { level, ty, data: v.to_ne_bytes().to_vec() }
    }
}

/// What `recvmsg` writes into a control buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    /// Bytes to store at offsets of the buffer (padding between messages is not written,
    /// as Linux leaves it).
    pub writes: Vec<(usize, Vec<u8>)>,
    /// The new `msg_controllen`: bytes consumed.
    pub used: usize,
    /// `MSG_CTRUNC`: something did not fit.
    pub truncated: bool,
}

/// Lays `msgs` out in a buffer of `room` bytes as successive `put_cmsg` calls do: a message
/// whose header does not fit is dropped, one whose data does not fit is cut (its
/// `cmsg_len` says how much was written), and either sets `MSG_CTRUNC`. `room` is 0 for a
/// null `msg_control`.
pub fn encode(msgs: &[Cmsg], mut room: usize) -> Encoded {
    let mut e = Encoded::default();
    for m in msgs {
        if room < HDR {
            e.truncated = true;
            continue;
        }
        let mut cmlen = len(m.data.len());
        if room < cmlen {
            e.truncated = true;
            cmlen = room;
        }
        let mut bytes = Vec::with_capacity(cmlen);
        bytes.extend_from_slice(&(cmlen as u64).to_ne_bytes());
        bytes.extend_from_slice(&m.level.to_ne_bytes());
        bytes.extend_from_slice(&m.ty.to_ne_bytes());
        bytes.extend_from_slice(&m.data[..cmlen - HDR]);
        e.writes.push((e.used, bytes));
        let step = space(m.data.len()).min(room);
        e.used += step;
        room -= step;
    }
    e
}

/// The messages of a `sendmsg` control buffer, in order. `EINVAL` for a message that fails
/// `CMSG_OK` (shorter than its header or running past the buffer), as Linux's protocols do
/// when they walk it; a buffer shorter than one header holds no messages.
pub fn parse(buf: &[u8]) -> SysResult<Vec<Cmsg>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while buf.len().saturating_sub(at) >= HDR {
        let word = |o: usize, n: usize| &buf[at + o..at + o + n];
        let cmlen = u64::from_ne_bytes(word(0, 8).try_into().map_err(|_| Errno::EINVAL)?);
        let level = i32::from_ne_bytes(word(8, 4).try_into().map_err(|_| Errno::EINVAL)?);
        let ty = i32::from_ne_bytes(word(12, 4).try_into().map_err(|_| Errno::EINVAL)?);
        let left = (buf.len() - at) as u64;
        if cmlen < HDR as u64 || cmlen > left {
            return Err(Errno::EINVAL);
        }
        let cmlen = cmlen as usize;
        out.push(Cmsg { level, ty, data: buf[at + HDR..at + cmlen].to_vec() });
        at += align(cmlen);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> Vec<Cmsg> {
        vec![Cmsg::int(41, 52, 64), Cmsg::int(41, 67, 0)]
    }

    fn header(e: &Encoded, i: usize) -> (u64, i32, i32) {
        let b = &e.writes[i].1;
        (
            u64::from_ne_bytes(b[0..8].try_into().unwrap()),
            i32::from_ne_bytes(b[8..12].try_into().unwrap()),
            i32::from_ne_bytes(b[12..16].try_into().unwrap()),
        )
    }

    #[test]
    fn everything_fits() {
        let e = encode(&two(), 256);
        assert!(!e.truncated);
        assert_eq!(e.used, 2 * space(4));
        assert_eq!(e.writes[1].0, space(4));
        assert_eq!(header(&e, 0), (len(4) as u64, 41, 52));
        assert_eq!(&e.writes[0].1[16..], &64i32.to_ne_bytes());
    }

    #[test]
    fn a_second_header_that_does_not_fit_is_dropped() {
        // CPython's testSecondCmsgTruncLen0Minus1: room for the first and 15 bytes more.
        let e = encode(&two(), space(4) + len(0) - 1);
        assert!(e.truncated);
        assert_eq!(e.writes.len(), 1);
        assert_eq!(e.used, space(4));
    }

    #[test]
    fn a_second_message_cut_in_its_data() {
        let e = encode(&two(), space(4) + len(4) - 1);
        assert!(e.truncated);
        assert_eq!(e.writes.len(), 2);
        assert_eq!(header(&e, 1).0, (len(4) - 1) as u64);
        assert_eq!(e.writes[1].1.len(), len(4) - 1);
        assert_eq!(e.used, space(4) + len(4) - 1);
    }

    #[test]
    fn a_first_message_cut_after_its_header_and_no_buffer_at_all() {
        let e = encode(&two(), len(0));
        assert!(e.truncated);
        assert_eq!(header(&e, 0).0, HDR as u64);
        assert_eq!(e.used, HDR);
        let none = encode(&two(), 0);
        assert!(none.truncated && none.writes.is_empty() && none.used == 0);
        let nothing = encode(&[], 0);
        assert!(!nothing.truncated);
    }

    #[test]
    fn parse_walks_aligned_messages_and_rejects_bad_lengths() {
        let e = encode(&two(), 256);
        let mut buf = vec![0u8; e.used];
        for (at, b) in &e.writes {
            buf[*at..*at + b.len()].copy_from_slice(b);
        }
        assert_eq!(parse(&buf).unwrap(), two());
        assert_eq!(parse(&buf[..HDR - 1]).unwrap(), vec![]);
        let mut bad = buf.clone();
        bad[0] = 3;
        assert_eq!(parse(&bad), Err(Errno::EINVAL));
        let mut long = buf.clone();
        long[0..8].copy_from_slice(&1000u64.to_ne_bytes());
        assert_eq!(parse(&long), Err(Errno::EINVAL));
    }
}
