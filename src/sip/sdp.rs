//! SDP (RFC 4566 / RFC 8866) parse and serialize, bounded.
//!
//! Guarantees: at most [`MAX_SDP`] bytes, [`MAX_LINES`] lines,
//! [`MAX_MEDIA`] media sections, [`MAX_FORMATS`] formats per media; every
//! line is `<lowercase letter>=<value>` and `v=0` comes first, an `o=`
//! and an `m=` line parse to their fields; unknown line types are kept in
//! order and written back. [`Session::encode`] output parses again to an
//! equal value. No input panics (see `fuzz/fuzz_targets/sdp.rs`).

use std::fmt::Write;

use thiserror::Error;

/// Most bytes of one SDP body.
pub const MAX_SDP: usize = 8192;
/// Most lines.
pub const MAX_LINES: usize = 256;
/// Most m= sections.
pub const MAX_MEDIA: usize = 8;
/// Most formats on one m= line.
pub const MAX_FORMATS: usize = 32;

/// Why a body is not acceptable SDP.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SdpError {
    /// Larger than [`MAX_SDP`] or more than [`MAX_LINES`] lines.
    #[error("SDP too large")]
    TooLarge,
    /// Not UTF-8.
    #[error("SDP is not UTF-8")]
    Encoding,
    /// A line is not `<letter>=<value>`.
    #[error("malformed SDP line {0}")]
    Line(usize),
    /// The first line is not `v=0`.
    #[error("SDP must start with v=0")]
    Version,
    /// No or malformed `o=` line.
    #[error("malformed o= line")]
    Origin,
    /// Malformed `c=` line.
    #[error("malformed c= line")]
    Connection,
    /// Malformed `m=` line, or too many media or formats.
    #[error("malformed m= line")]
    Media,
}

/// `o=` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// username
    pub username: String,
    /// sess-id
    pub session_id: String,
    /// sess-version
    pub session_version: String,
    /// `IP4` or `IP6` (nettype is always `IN`).
    pub addr_type: String,
    /// unicast-address
    pub address: String,
}

/// `c=` fields (`IN` only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `IP4` or `IP6`.
    pub addr_type: String,
    /// The address (TTL/count suffixes kept as written).
    pub address: String,
}

/// `a=name[:value]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// Name.
    pub name: String,
    /// Value after `:`.
    pub value: Option<String>,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// `audio`, `video`, ...
    pub kind: String,
    /// Port (0 = rejected/disabled).
    pub port: u16,
    /// `RTP/AVP`, ...
    pub proto: String,
    /// Formats (payload type numbers for RTP).
    pub formats: Vec<String>,
    /// Media-level `c=`.
    pub connection: Option<Connection>,
    /// Attributes in order.
    pub attributes: Vec<Attribute>,
    /// Other lines (`b=`, `i=`, `k=`), in order.
    pub other: Vec<(char, String)>,
}

/// A session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `o=`
    pub origin: Origin,
    /// `s=`
    pub name: String,
    /// Session-level `c=`.
    pub connection: Option<Connection>,
    /// Session-level attributes.
    pub attributes: Vec<Attribute>,
    /// Other session-level lines (`t=`, `b=`, `i=`, ...), in order.
    pub other: Vec<(char, String)>,
    /// Media sections.
    pub media: Vec<Media>,
}

/// An `a=rtpmap` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// Encoding name as written.
    pub encoding: String,
    /// Clock rate.
    pub clock: u32,
    /// Channels (default 1).
    pub channels: u8,
}

fn parse_connection(v: &str) -> Result<Connection, SdpError> {
    let mut it = v.split_ascii_whitespace();
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some("IN"), Some(t @ ("IP4" | "IP6")), Some(a), None) if a.len() <= 64 => Ok(Connection {
            addr_type: t.to_string(),
            address: a.to_string(),
        }),
        _ => Err(SdpError::Connection),
    }
}

fn parse_attribute(v: &str) -> Attribute {
    match v.split_once(':') {
        Some((n, val)) => Attribute {
            name: n.to_string(),
            value: Some(val.to_string()),
        },
        None => Attribute {
            name: v.to_string(),
            value: None,
        },
    }
}

impl Session {
    /// Parses a body.
    pub fn parse(body: &[u8]) -> Result<Session, SdpError> {
        if body.len() > MAX_SDP {
            return Err(SdpError::TooLarge);
        }
        let text = std::str::from_utf8(body).map_err(|_| SdpError::Encoding)?;
        let mut lines = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .filter(|l| !l.is_empty())
            .enumerate();
        let mut session = Session {
            origin: Origin {
                username: String::new(),
                session_id: String::new(),
                session_version: String::new(),
                addr_type: String::new(),
                address: String::new(),
            },
            name: String::new(),
            connection: None,
            attributes: Vec::new(),
            other: Vec::new(),
            media: Vec::new(),
        };
        match lines.next() {
            Some((_, "v=0")) => {}
            _ => return Err(SdpError::Version),
        }
        let mut have_origin = false;
        for (n, line) in lines {
            if n >= MAX_LINES {
                return Err(SdpError::TooLarge);
            }
            let b = line.as_bytes();
            if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
                return Err(SdpError::Line(n + 1));
            }
            let (kind, v) = (char::from(b[0]), &line[2..]);
            if kind == 'm' {
                if session.media.len() >= MAX_MEDIA {
                    return Err(SdpError::Media);
                }
                session.media.push(parse_media(v)?);
                continue;
            }
            match session.media.last_mut() {
                Some(m) => match kind {
                    'c' => m.connection = Some(parse_connection(v)?),
                    'a' => m.attributes.push(parse_attribute(v)),
                    k => m.other.push((k, v.to_string())),
                },
                None => match kind {
                    'o' => {
                        session.origin = parse_origin(v)?;
                        have_origin = true;
                    }
                    's' => session.name = v.to_string(),
                    'c' => session.connection = Some(parse_connection(v)?),
                    'a' => session.attributes.push(parse_attribute(v)),
                    k => session.other.push((k, v.to_string())),
                },
            }
        }
        if !have_origin {
            return Err(SdpError::Origin);
        }
        Ok(session)
    }

    /// Serializes with CRLF line ends.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::with_capacity(512);
        let o = &self.origin;
        // Writing into a String cannot fail.
        let _ = write!(
            s,
            "v=0\r\no={} {} {} IN {} {}\r\ns={}\r\n",
            o.username, o.session_id, o.session_version, o.addr_type, o.address, self.name
        );
        let conn = |s: &mut String, c: &Option<Connection>| {
            if let Some(c) = c {
                let _ = write!(s, "c=IN {} {}\r\n", c.addr_type, c.address);
            }
        };
        let attrs = |s: &mut String, a: &[Attribute]| {
            for a in a {
                let _ = match &a.value {
                    Some(v) => write!(s, "a={}:{v}\r\n", a.name),
                    None => write!(s, "a={}\r\n", a.name),
                };
            }
        };
        conn(&mut s, &self.connection);
        for (k, v) in &self.other {
            let _ = write!(s, "{k}={v}\r\n");
        }
        attrs(&mut s, &self.attributes);
        for m in &self.media {
            let _ = write!(s, "m={} {} {}", m.kind, m.port, m.proto);
            for f in &m.formats {
                let _ = write!(s, " {f}");
            }
            s.push_str("\r\n");
            conn(&mut s, &m.connection);
            for (k, v) in &m.other {
                let _ = write!(s, "{k}={v}\r\n");
            }
            attrs(&mut s, &m.attributes);
        }
        s.into_bytes()
    }
}

fn parse_origin(v: &str) -> Result<Origin, SdpError> {
    let f: Vec<&str> = v.split_ascii_whitespace().take(7).collect();
    match f[..] {
        [u, id, ver, "IN", t @ ("IP4" | "IP6"), a] => Ok(Origin {
            username: u.to_string(),
            session_id: id.to_string(),
            session_version: ver.to_string(),
            addr_type: t.to_string(),
            address: a.to_string(),
        }),
        _ => Err(SdpError::Origin),
    }
}

fn parse_media(v: &str) -> Result<Media, SdpError> {
    let mut it = v.split_ascii_whitespace();
    let (Some(kind), Some(port), Some(proto)) = (it.next(), it.next(), it.next()) else {
        return Err(SdpError::Media);
    };
    // A port may carry a "/count" suffix; only the port is kept.
    let port = port.split('/').next().unwrap_or("");
    let port: u16 = port.parse().map_err(|_| SdpError::Media)?;
    let mut formats = Vec::new();
    for f in it {
        if formats.len() >= MAX_FORMATS {
            return Err(SdpError::Media);
        }
        formats.push(f.to_string());
    }
    if formats.is_empty() || !kind.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(SdpError::Media);
    }
    Ok(Media {
        kind: kind.to_string(),
        port,
        proto: proto.to_string(),
        formats,
        connection: None,
        attributes: Vec::new(),
        other: Vec::new(),
    })
}

impl Media {
    /// The first value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
            .and_then(|a| a.value.as_deref())
    }

    /// True when the flag attribute `name` is present.
    pub fn has_flag(&self, name: &str) -> bool {
        self.attributes
            .iter()
            .any(|a| a.name.eq_ignore_ascii_case(name))
    }

    fn per_pt(&self, name: &str, pt: &str) -> Option<&str> {
        self.attributes
            .iter()
            .filter(|a| a.name.eq_ignore_ascii_case(name))
            .filter_map(|a| a.value.as_deref())
            .find_map(|v| {
                let (p, rest) = v.split_once(' ')?;
                (p == pt).then_some(rest.trim())
            })
    }

    /// The `a=rtpmap` of payload type `pt`.
    pub fn rtpmap(&self, pt: &str) -> Option<RtpMap> {
        let v = self.per_pt("rtpmap", pt)?;
        let mut it = v.split('/');
        let encoding = it.next()?.to_string();
        let clock = it.next()?.parse().ok()?;
        let channels = match it.next() {
            Some(c) => c.parse().ok()?,
            None => 1,
        };
        Some(RtpMap {
            encoding,
            clock,
            channels,
        })
    }

    /// The `a=fmtp` parameters of payload type `pt`.
    pub fn fmtp(&self, pt: &str) -> Option<&str> {
        self.per_pt("fmtp", pt)
    }

    /// `a=ptime` in milliseconds.
    pub fn ptime(&self) -> Option<u32> {
        self.attr("ptime")?.trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 123 1 IN IP4 192.168.1.20\r\ns=call\r\nc=IN IP4 192.168.1.20\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 9 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\nm=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";

    #[test]
    fn parse_encode_roundtrip() {
        let s = Session::parse(OFFER.as_bytes()).unwrap();
        assert_eq!(s.origin.address, "192.168.1.20");
        assert_eq!(s.media.len(), 2);
        let a = &s.media[0];
        assert_eq!((a.port, a.formats.len()), (4000, 4));
        assert_eq!(a.rtpmap("101").unwrap().clock, 8000);
        assert_eq!(a.fmtp("101"), Some("0-16"));
        assert_eq!(a.ptime(), Some(20));
        assert!(a.has_flag("sendrecv"));
        assert_eq!(s.encode(), OFFER.as_bytes());
        assert_eq!(Session::parse(&s.encode()).unwrap(), s);
    }

    #[test]
    fn refusals() {
        assert_eq!(
            Session::parse(b"o=- 1 1 IN IP4 h\r\n"),
            Err(SdpError::Version)
        );
        assert_eq!(Session::parse(b"v=0\r\ns=x\r\n"), Err(SdpError::Origin));
        assert_eq!(Session::parse(b"v=0\r\nbogus\r\n"), Err(SdpError::Line(2)));
        assert_eq!(
            Session::parse(b"v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IP9 x\r\n"),
            Err(SdpError::Connection)
        );
        assert_eq!(
            Session::parse(b"v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 99999 RTP/AVP 0\r\n"),
            Err(SdpError::Media)
        );
        let many = format!(
            "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 1 RTP/AVP{}\r\n",
            " 0".repeat(40)
        );
        assert_eq!(Session::parse(many.as_bytes()), Err(SdpError::Media));
        assert_eq!(
            Session::parse(&vec![b'a'; MAX_SDP + 1]),
            Err(SdpError::TooLarge)
        );
        assert_eq!(Session::parse(b"v=0\r\n\xff"), Err(SdpError::Encoding));
    }
}
