//! SDP offer/answer (RFC 3264) for one audio stream.
//!
//! Guarantees:
//! - the answer has one m= line per offered m= line, in order; every stream
//!   but the first usable `audio RTP/AVP` one is rejected with port 0;
//! - the codec is the first of our preference list that was offered
//!   (default: Opus, G.722, PCMU, PCMA) and keeps the offerer's payload
//!   type number; telephone-event is kept when offered at the codec's clock
//!   (or any clock when none matches);
//! - direction mirrors the offer (sendonly -> recvonly, recvonly ->
//!   sendonly), and `c=0.0.0.0` (RFC 2543 hold) is treated as sendonly with
//!   no remote address;
//! - the offered ptime is echoed (20 ms when none);
//! - no common codec is an error (answer 488), never a panic.

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use super::sdp::{Attribute, Connection, Media, Origin, Session};

/// Audio codecs the gateway can bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Opus, `opus/48000/2`, dynamic payload type.
    Opus,
    /// G.722, static payload type 9 (RTP clock 8000).
    G722,
    /// G.711 mu-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
}

/// Our default preference.
pub const DEFAULT_PREFERENCE: [Codec; 4] = [Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma];

impl Codec {
    /// The RTP clock rate used in SDP and RTP timestamps.
    pub fn rtp_clock(self) -> u32 {
        match self {
            Codec::Opus => 48000,
            _ => 8000,
        }
    }

    fn rtpmap(self) -> &'static str {
        match self {
            Codec::Opus => "opus/48000/2",
            Codec::G722 => "G722/8000",
            Codec::Pcmu => "PCMU/8000",
            Codec::Pcma => "PCMA/8000",
        }
    }

    /// The static RTP payload type, `None` for Opus (dynamic).
    pub fn static_pt(self) -> Option<u8> {
        match self {
            Codec::Opus => None,
            Codec::G722 => Some(9),
            Codec::Pcmu => Some(0),
            Codec::Pcma => Some(8),
        }
    }

    /// What payload type `pt` of `m` carries, if one of ours.
    fn of(m: &Media, pt: &str) -> Option<Codec> {
        match m.rtpmap(pt) {
            Some(map) => {
                let name = map.encoding.to_ascii_lowercase();
                match (name.as_str(), map.clock, map.channels) {
                    ("opus", 48000, 2) => Some(Codec::Opus),
                    ("g722", 8000, 1) => Some(Codec::G722),
                    ("pcmu", 8000, 1) => Some(Codec::Pcmu),
                    ("pcma", 8000, 1) => Some(Codec::Pcma),
                    _ => None,
                }
            }
            None => match pt {
                "0" => Some(Codec::Pcmu),
                "8" => Some(Codec::Pcma),
                "9" => Some(Codec::G722),
                _ => None,
            },
        }
    }
}

/// Media direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Both ways.
    SendRecv,
    /// Only the describing side sends.
    SendOnly,
    /// Only the describing side receives.
    RecvOnly,
    /// Neither (hold both ways).
    Inactive,
}

impl Direction {
    fn attr(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The answer's direction to this offered direction.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    fn find(attrs: &[Attribute]) -> Option<Direction> {
        attrs.iter().rev().find_map(|a| match a.name.as_str() {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        })
    }
}

/// Why no answer can be built (answer the INVITE with 488).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OfferError {
    /// No `m=audio` with a non-zero port and `RTP/AVP`.
    #[error("no usable audio stream in the offer")]
    NoAudio,
    /// None of our codecs was offered.
    #[error("no common audio codec")]
    NoCommonCodec,
}

/// Our side of the media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    /// Our RTP address.
    pub addr: IpAddr,
    /// Our RTP port.
    pub port: u16,
    /// `o=` session id (stable for the call).
    pub session_id: u64,
    /// `o=` version (bump on every new offer or answer).
    pub session_version: u64,
}

/// What was agreed for the audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Codec.
    pub codec: Codec,
    /// Its payload type (the offerer's number).
    pub pt: u8,
    /// telephone-event payload type, when agreed.
    pub dtmf_pt: Option<u8>,
    /// Packet time in ms.
    pub ptime: u32,
    /// Where to send RTP; `None` when on hold via `c=0.0.0.0` or port 0.
    pub remote: Option<SocketAddr>,
    /// Our direction (what we may do).
    pub direction: Direction,
}

fn session_for(local: &LocalMedia, media: Vec<Media>) -> Session {
    let addr_type = if local.addr.is_ipv4() { "IP4" } else { "IP6" };
    Session {
        origin: Origin {
            username: "voxgate".into(),
            session_id: local.session_id.to_string(),
            session_version: local.session_version.to_string(),
            addr_type: addr_type.into(),
            address: local.addr.to_string(),
        },
        name: "-".into(),
        connection: Some(Connection {
            addr_type: addr_type.into(),
            address: local.addr.to_string(),
        }),
        attributes: Vec::new(),
        other: vec![('t', "0 0".into())],
        media,
    }
}

fn attr(name: &str, value: impl Into<String>) -> Attribute {
    Attribute {
        name: name.into(),
        value: Some(value.into()),
    }
}

/// Where `m` wants RTP and the direction it declares, with RFC 2543 hold
/// (`c=0.0.0.0`) read as sendonly and no address.
fn remote_and_direction(s: &Session, m: &Media) -> (Option<SocketAddr>, Direction) {
    let conn = m.connection.as_ref().or(s.connection.as_ref());
    let hold_addr = conn.is_some_and(|c| c.address == "0.0.0.0");
    let offered_dir = Direction::find(&m.attributes)
        .or_else(|| Direction::find(&s.attributes))
        .unwrap_or(Direction::SendRecv);
    let offered_dir = match (hold_addr, offered_dir) {
        (true, Direction::SendRecv) => Direction::SendOnly,
        (true, Direction::RecvOnly) => Direction::Inactive,
        (_, d) => d,
    };
    let remote = match conn {
        Some(c) if !hold_addr => c
            .address
            .split('/')
            .next()
            .and_then(|a| a.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, m.port)),
        _ => None,
    };
    (remote, offered_dir)
}

/// Builds the answer to `offer`.
pub fn answer(
    offer: &Session,
    local: &LocalMedia,
    prefs: &[Codec],
) -> Result<(Session, Negotiated), OfferError> {
    let usable = |m: &Media| m.kind == "audio" && m.port != 0 && m.proto == "RTP/AVP";
    let idx = offer
        .media
        .iter()
        .position(usable)
        .ok_or(OfferError::NoAudio)?;
    let m = &offer.media[idx];
    let (codec, pt) = prefs
        .iter()
        .find_map(|want| {
            m.formats
                .iter()
                .find(|pt| Codec::of(m, pt) == Some(*want))
                .map(|pt| (*want, pt.clone()))
        })
        .ok_or(OfferError::NoCommonCodec)?;
    let pt_num: u8 = pt.parse().map_err(|_| OfferError::NoCommonCodec)?;
    let events: Vec<(&String, u32)> = m
        .formats
        .iter()
        .filter_map(|f| {
            let map = m.rtpmap(f)?;
            map.encoding
                .eq_ignore_ascii_case("telephone-event")
                .then_some((f, map.clock))
        })
        .collect();
    let dtmf = events
        .iter()
        .find(|(_, c)| *c == codec.rtp_clock())
        .or(events.first())
        .and_then(|(f, c)| Some((f.parse::<u8>().ok()?, *c, m.fmtp(f))));

    let (remote, offered_dir) = remote_and_direction(offer, m);
    let ptime = usable_ptime(m.ptime());
    let direction = offered_dir.reverse();

    let mut formats = vec![pt.clone()];
    let mut attributes = vec![attr("rtpmap", format!("{pt} {}", codec.rtpmap()))];
    if codec == Codec::Opus {
        attributes.push(attr("fmtp", format!("{pt} useinbandfec=1")));
    }
    if let Some((dpt, clock, fmtp)) = dtmf {
        formats.push(dpt.to_string());
        attributes.push(attr("rtpmap", format!("{dpt} telephone-event/{clock}")));
        attributes.push(attr("fmtp", format!("{dpt} {}", fmtp.unwrap_or("0-15"))));
    }
    attributes.push(attr("ptime", ptime.to_string()));
    attributes.push(Attribute {
        name: direction.attr().into(),
        value: None,
    });
    let media = offer
        .media
        .iter()
        .enumerate()
        .map(|(i, om)| {
            if i == idx {
                Media {
                    kind: "audio".into(),
                    port: local.port,
                    proto: "RTP/AVP".into(),
                    formats: formats.clone(),
                    connection: None,
                    attributes: attributes.clone(),
                    other: Vec::new(),
                }
            } else {
                Media {
                    kind: om.kind.clone(),
                    port: 0,
                    proto: om.proto.clone(),
                    formats: om.formats.iter().take(1).cloned().collect(),
                    connection: None,
                    attributes: Vec::new(),
                    other: Vec::new(),
                }
            }
        })
        .collect();
    let neg = Negotiated {
        codec,
        pt: pt_num,
        dtmf_pt: dtmf.map(|d| d.0),
        ptime,
        remote,
        direction,
    };
    Ok((session_for(local, media), neg))
}

/// Our offer for a call towards a phone: every codec we bridge, in our
/// order (Opus 111, G.722 9, PCMU 0, PCMA 8, telephone-event 101).
pub fn offer(local: &LocalMedia, direction: Direction, ptime_ms: u32) -> Session {
    let formats = ["111", "9", "0", "8", "101"].map(String::from).to_vec();
    let attributes = vec![
        attr("rtpmap", "111 opus/48000/2"),
        attr("fmtp", "111 useinbandfec=1"),
        attr("rtpmap", "9 G722/8000"),
        attr("rtpmap", "0 PCMU/8000"),
        attr("rtpmap", "8 PCMA/8000"),
        attr("rtpmap", "101 telephone-event/8000"),
        attr("fmtp", "101 0-15"),
        attr("ptime", usable_ptime(Some(ptime_ms)).to_string()),
        Attribute {
            name: direction.attr().into(),
            value: None,
        },
    ];
    let media = vec![Media {
        kind: "audio".into(),
        port: local.port,
        proto: "RTP/AVP".into(),
        formats,
        connection: None,
        attributes,
        other: Vec::new(),
    }];
    session_for(local, media)
}

/// Reads the phone's answer to our [`offer`]: the codec is the first one
/// the answer lists that we offered; our direction mirrors the phone's.
pub fn accept_answer(ans: &Session) -> Result<Negotiated, OfferError> {
    let usable = |m: &&Media| m.kind == "audio" && m.port != 0 && m.proto == "RTP/AVP";
    let m = ans.media.iter().find(usable).ok_or(OfferError::NoAudio)?;
    let (codec, pt) = m
        .formats
        .iter()
        .find_map(|f| Some((Codec::of(m, f)?, f.parse::<u8>().ok()?)))
        .ok_or(OfferError::NoCommonCodec)?;
    let dtmf_pt = m.formats.iter().find_map(|f| {
        let map = m.rtpmap(f)?;
        if map.encoding.eq_ignore_ascii_case("telephone-event") {
            f.parse().ok()
        } else {
            None
        }
    });
    let (remote, dir) = remote_and_direction(ans, m);
    Ok(Negotiated {
        codec,
        pt,
        dtmf_pt,
        ptime: usable_ptime(m.ptime()),
        remote,
        direction: dir.reverse(),
    })
}

/// The phone's packet time when the box can carry it (10-60 ms in steps of
/// 10: the phone leg repacketizes it into Opus frames), else 20 ms.
fn usable_ptime(p: Option<u32>) -> u32 {
    p.filter(|p| (10..=60).contains(p) && p % 10 == 0)
        .unwrap_or(20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalMedia {
        LocalMedia {
            addr: "192.168.1.2".parse().unwrap(),
            port: 20000,
            session_id: 42,
            session_version: 1,
        }
    }

    fn offer_sdp(formats: &str, extra: &str, conn: &str) -> Session {
        Session::parse(
            format!(
                "v=0\r\no=- 1 1 IN IP4 192.168.1.20\r\ns=-\r\nc=IN IP4 {conn}\r\nt=0 0\r\nm=video 5000 RTP/AVP 96\r\nm=audio 4000 RTP/AVP {formats}\r\n{extra}"
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn prefers_opus_then_g722_and_keeps_offered_numbers() {
        let o = offer_sdp(
            "0 8 9 107 100",
            "a=rtpmap:107 OPUS/48000/2\r\na=rtpmap:100 telephone-event/48000\r\na=rtpmap:0 PCMU/8000\r\n",
            "192.168.1.20",
        );
        let (sdp, n) = answer(&o, &local(), &DEFAULT_PREFERENCE).unwrap();
        assert_eq!((n.codec, n.pt, n.dtmf_pt), (Codec::Opus, 107, Some(100)));
        assert_eq!(n.remote, Some("192.168.1.20:4000".parse().unwrap()));
        assert_eq!(n.direction, Direction::SendRecv);
        assert_eq!(sdp.media.len(), 2);
        assert_eq!(sdp.media[0].port, 0, "video rejected");
        assert_eq!(sdp.media[1].formats, ["107", "100"]);
        assert_eq!(sdp.media[1].rtpmap("107").unwrap().clock, 48000);
        // The answer is valid SDP.
        assert_eq!(Session::parse(&sdp.encode()).unwrap(), sdp);

        let o = offer_sdp(
            "0 8 9 101",
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:30\r\n",
            "192.168.1.20",
        );
        let (sdp, n) = answer(&o, &local(), &DEFAULT_PREFERENCE).unwrap();
        assert_eq!(
            (n.codec, n.pt, n.dtmf_pt, n.ptime),
            (Codec::G722, 9, Some(101), 30)
        );
        assert_eq!(sdp.media[1].fmtp("101"), Some("0-16"));
        let (_, n) = answer(
            &offer_sdp("8 0", "", "192.168.1.20"),
            &local(),
            &DEFAULT_PREFERENCE,
        )
        .unwrap();
        assert_eq!(n.codec, Codec::Pcmu);
        let (_, n) = answer(
            &offer_sdp("8 0", "", "192.168.1.20"),
            &local(),
            &[Codec::Pcma, Codec::Pcmu],
        )
        .unwrap();
        assert_eq!(n.codec, Codec::Pcma);
    }

    #[test]
    fn hold_and_directions() {
        for (offered, ours) in [
            ("a=sendonly\r\n", Direction::RecvOnly),
            ("a=recvonly\r\n", Direction::SendOnly),
            ("a=inactive\r\n", Direction::Inactive),
        ] {
            let (sdp, n) = answer(
                &offer_sdp("0", offered, "192.168.1.20"),
                &local(),
                &DEFAULT_PREFERENCE,
            )
            .unwrap();
            assert_eq!(n.direction, ours);
            assert!(sdp.media[1].has_flag(ours.attr()));
        }
        // RFC 2543 hold.
        let (_, n) = answer(
            &offer_sdp("0", "", "0.0.0.0"),
            &local(),
            &DEFAULT_PREFERENCE,
        )
        .unwrap();
        assert_eq!((n.direction, n.remote), (Direction::RecvOnly, None));
    }

    #[test]
    fn refusals_and_our_offer() {
        assert_eq!(
            answer(
                &offer_sdp("18 3", "", "192.168.1.20"),
                &local(),
                &DEFAULT_PREFERENCE
            ),
            Err(OfferError::NoCommonCodec)
        );
        // An Opus rtpmap with the wrong clock is not Opus.
        assert_eq!(
            answer(
                &offer_sdp("96", "a=rtpmap:96 opus/16000\r\n", "192.168.1.20"),
                &local(),
                &DEFAULT_PREFERENCE
            ),
            Err(OfferError::NoCommonCodec)
        );
        let mut no_audio = offer_sdp("0", "", "192.168.1.20");
        no_audio.media[1].port = 0;
        assert_eq!(
            answer(&no_audio, &local(), &DEFAULT_PREFERENCE),
            Err(OfferError::NoAudio)
        );
        // A phone answering our offer with PCMA.
        let ours = offer(&local(), Direction::SendRecv, 20);
        let (phone_answer, _) = answer(
            &ours,
            &LocalMedia {
                port: 4000,
                ..local()
            },
            &[Codec::Pcma],
        )
        .unwrap();
        let n = accept_answer(&phone_answer).unwrap();
        assert_eq!((n.codec, n.pt, n.dtmf_pt), (Codec::Pcma, 8, Some(101)));
        assert_eq!(n.remote, Some("192.168.1.2:4000".parse().unwrap()));
    }
}
