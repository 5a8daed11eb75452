//! A minimal Ogg page writer (RFC 3533) for one logical stream, built for
//! the recorder's hot path: packets are copied once into the page being
//! built, and a finished page leaves in one `write_all` (header, lacing
//! values and data contiguous in one buffer).
//!
//! Packets are never split across pages: a packet that would not fit the
//! page's 255 lacing values starts a new page. Every page therefore ends
//! with a complete packet, and its granule position is the one given with
//! that packet. Packets are at most [`MAX_PACKET`] bytes (241 lacing
//! values), so each fits an empty page.

use std::io::{self, Write};

/// Largest packet accepted (fits one page: 255 lacing values of 255 bytes).
pub const MAX_PACKET: usize = 255 * 255 - 1;
const HEADER: usize = 27;
const MAX_SEGMENTS: usize = 255;
/// Room before the page data for the header and the lacing values.
const PREFIX: usize = HEADER + MAX_SEGMENTS;

const FLAG_BOS: u8 = 0x02;
const FLAG_EOS: u8 = 0x04;

/// Writes one logical Ogg stream to `out`.
pub struct PageWriter<W: Write> {
    out: W,
    serial: u32,
    sequence: u32,
    first: bool,
    /// `PREFIX` bytes of room, then the data of the page being built.
    buf: Vec<u8>,
    lacing: [u8; MAX_SEGMENTS],
    segments: usize,
    packets: u32,
    granule: u64,
}

impl<W: Write> PageWriter<W> {
    /// A stream with serial number `serial`; its first page gets the
    /// beginning-of-stream flag.
    pub fn new(out: W, serial: u32) -> Self {
        let mut buf = Vec::with_capacity(PREFIX + 4096);
        buf.resize(PREFIX, 0);
        PageWriter {
            out,
            serial,
            sequence: 0,
            first: true,
            buf,
            lacing: [0; MAX_SEGMENTS],
            segments: 0,
            packets: 0,
            granule: 0,
        }
    }

    /// Packets on the page being built.
    pub fn page_packets(&self) -> u32 {
        self.packets
    }

    /// Appends a packet whose end has granule position `granule` (a page
    /// that has no room for it is written first).
    pub fn packet(&mut self, packet: &[u8], granule: u64) -> io::Result<()> {
        if packet.len() > MAX_PACKET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("Ogg packet of {} bytes (limit {MAX_PACKET})", packet.len()),
            ));
        }
        let needed = packet.len() / 255 + 1;
        if self.segments + needed > MAX_SEGMENTS {
            self.end_page(false)?;
        }
        let full = packet.len() / 255;
        self.lacing[self.segments..self.segments + full].fill(255);
        self.lacing[self.segments + full] = (packet.len() % 255) as u8;
        self.segments += needed;
        self.buf.extend_from_slice(packet);
        self.packets += 1;
        self.granule = granule;
        Ok(())
    }

    /// Writes the page being built (with the end-of-stream flag when `eos`).
    /// A page without packets is written only when it carries the flag.
    pub fn end_page(&mut self, eos: bool) -> io::Result<()> {
        if self.packets == 0 && !eos {
            return Ok(());
        }
        let start = PREFIX - HEADER - self.segments;
        let mut flags = 0;
        if self.first {
            flags |= FLAG_BOS;
        }
        if eos {
            flags |= FLAG_EOS;
        }
        let granule = if self.packets == 0 {
            u64::MAX // no packet finishes on this page (RFC 3533: -1)
        } else {
            self.granule
        };
        let head = &mut self.buf[start..PREFIX];
        head[..4].copy_from_slice(b"OggS");
        head[4] = 0; // version
        head[5] = flags;
        head[6..14].copy_from_slice(&granule.to_le_bytes());
        head[14..18].copy_from_slice(&self.serial.to_le_bytes());
        head[18..22].copy_from_slice(&self.sequence.to_le_bytes());
        head[22..26].fill(0);
        head[26] = self.segments as u8;
        head[HEADER..].copy_from_slice(&self.lacing[..self.segments]);
        let crc = crc32(&self.buf[start..]);
        self.buf[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&self.buf[start..])?;
        self.buf.truncate(PREFIX);
        self.first = false;
        self.sequence = self.sequence.wrapping_add(1);
        self.segments = 0;
        self.packets = 0;
        Ok(())
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> std::fmt::Debug for PageWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageWriter")
            .field("serial", &self.serial)
            .field("sequence", &self.sequence)
            .field("packets", &self.packets)
            .finish_non_exhaustive()
    }
}

/// The Ogg CRC (polynomial 0x04c11db7, not reflected, initial value and
/// final XOR 0), eight bytes a step (slicing-by-8).
pub fn crc32(data: &[u8]) -> u32 {
    let t = &TABLES;
    let mut crc = 0u32;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let hi = crc ^ u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        crc = t[7][(hi >> 24) as usize]
            ^ t[6][((hi >> 16) & 0xff) as usize]
            ^ t[5][((hi >> 8) & 0xff) as usize]
            ^ t[4][(hi & 0xff) as usize]
            ^ t[3][c[4] as usize]
            ^ t[2][c[5] as usize]
            ^ t[1][c[6] as usize]
            ^ t[0][c[7] as usize];
    }
    for &b in chunks.remainder() {
        crc = (crc << 8) ^ t[0][((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

const fn tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut k = 0;
        while k < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04c1_1db7
            } else {
                r << 1
            };
            k += 1;
        }
        t[0][i] = r;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev << 8) ^ t[0][(prev >> 24) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

static TABLES: [[u32; 256]; 8] = tables();

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-by-bit reference of the Ogg CRC.
    fn crc_reference(data: &[u8]) -> u32 {
        let mut crc = 0u32;
        for &b in data {
            crc ^= u32::from(b) << 24;
            for _ in 0..8 {
                crc = if crc & 0x8000_0000 != 0 {
                    (crc << 1) ^ 0x04c1_1db7
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    #[test]
    fn crc_matches_the_bitwise_definition_and_the_ogg_crate() {
        let mut x = 0x1234_5678u32;
        let data: Vec<u8> = (0..4099)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for len in [0, 1, 7, 8, 9, 63, 64, 65, 1000, 4099] {
            assert_eq!(crc32(&data[..len]), crc_reference(&data[..len]), "{len}");
        }
        // A page the ogg crate writes carries the same checksum.
        let mut out = Vec::new();
        let mut w = ogg::PacketWriter::new(&mut out);
        w.write_packet(&data[..300], 7, ogg::PacketWriteEndInfo::EndPage, 960)
            .unwrap();
        let stored = u32::from_le_bytes(out[22..26].try_into().unwrap());
        out[22..26].fill(0);
        assert_eq!(crc32(&out), stored);
    }

    /// Pages read back by the `ogg` crate: packets intact, granules and
    /// flags as written, a page started early when the lacing is full.
    #[test]
    fn pages_read_back_and_full_lacing_starts_a_page() {
        let mut out = Vec::new();
        let mut w = PageWriter::new(&mut out, 99);
        let big = vec![0xabu8; 255 * 200]; // 201 lacing values
        w.packet(b"first", 0).unwrap();
        w.end_page(false).unwrap();
        w.packet(&big, 960).unwrap();
        w.packet(&big, 1920).unwrap(); // does not fit: the first page ends
        w.packet(&[], 1920).unwrap();
        w.end_page(true).unwrap();
        assert!(w.packet(&vec![0; MAX_PACKET + 1], 0).is_err());
        drop(w);
        let mut r = ogg::PacketReader::new(std::io::Cursor::new(out));
        let p = r.read_packet().unwrap().unwrap();
        assert_eq!((&p.data[..], p.first_in_stream()), (&b"first"[..], true));
        let p = r.read_packet().unwrap().unwrap();
        assert_eq!(
            (p.data.len(), p.last_in_page(), p.absgp_page()),
            (big.len(), true, 960)
        );
        let p = r.read_packet().unwrap().unwrap();
        assert_eq!((p.data.len(), p.last_in_page()), (big.len(), false));
        let p = r.read_packet().unwrap().unwrap();
        assert!(p.data.is_empty() && p.last_in_stream() && p.absgp_page() == 1920);
        assert!(r.read_packet().unwrap().is_none());
    }
}
