//! Section framing shared by the writer and the reader: the kind, length and CRC-32 of
//! a section, and the bounds-checked cursor over a checksummed payload.

use super::FormatError;

/// A section's kind and payload length.
fn push_section_header(out: &mut Vec<u8>, kind: [u8; 4], payload: &[u8]) -> Result<(), FormatError> {
    let len = u32::try_from(payload.len()).map_err(|_| FormatError::LimitExceeded {
        what: format!("section '{}' payload of {} bytes", kind_str(&kind), payload.len()),
        limit: u64::from(u32::MAX),
    })?;
    out.extend_from_slice(&kind);
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

pub(super) fn push_section(out: &mut Vec<u8>, kind: [u8; 4], payload: &[u8]) -> Result<(), FormatError> {
    push_section_header(out, kind, payload)?;
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc(&kind, payload).to_le_bytes());
    Ok(())
}

pub(super) fn crc(kind: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(kind);
    h.update(payload);
    h.finalize()
}

pub(super) fn kind_str(kind: &[u8]) -> String {
    String::from_utf8_lossy(kind).into_owned()
}

/// A cursor over a checksummed payload; running out is corruption, not truncation.
pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(usize::try_from(n).ok()?)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    pub(super) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub(super) fn u16(&mut self) -> Option<u16> {
        self.take(2).and_then(|b| b.try_into().ok()).map(u16::from_le_bytes)
    }
    pub(super) fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
    }
    pub(super) fn rest(&mut self) -> &'a [u8] {
        let s = self.bytes.get(self.pos..).unwrap_or(&[]);
        self.pos = self.bytes.len();
        s
    }
    pub(super) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }
}

pub(super) fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}
