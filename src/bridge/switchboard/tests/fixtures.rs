//! Byte fixtures: SIP messages as desk phones put them on the wire (header
//! order, compact SDP and header values as baresip and SIPp send them).

use super::BOX;
use crate::sip::Message;
use std::net::SocketAddr;

/// baresip's offer: PCMU, PCMA and telephone-event at 20 ms, RTP on 4000.
pub const SDP_PCMU: &str = "v=0
o=- 3925476129 3925476129 IN IP4 192.168.1.20
s=-
c=IN IP4 192.168.1.20
t=0 0
m=audio 4000 RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=sendrecv
";

/// The same phone puts the call on hold (RFC 3264: sendonly, next version).
pub const SDP_HOLD: &str = "v=0
o=- 3925476129 3925476130 IN IP4 192.168.1.20
s=-
c=IN IP4 192.168.1.20
t=0 0
m=audio 4000 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=sendonly
";

/// Back from hold, RTP now on another port.
pub const SDP_RESUME: &str = "v=0
o=- 3925476129 3925476131 IN IP4 192.168.1.20
s=-
c=IN IP4 192.168.1.20
t=0 0
m=audio 4002 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=sendrecv
";

/// RFC 2543 hold, as older phones do it: the connection address 0.0.0.0.
pub const SDP_HOLD_ZERO: &str = "v=0
o=- 3925476129 3925476130 IN IP4 192.168.1.20
s=-
c=IN IP4 0.0.0.0
t=0 0
m=audio 4000 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=ptime:20
";

/// A G.722 phone answering our offer at 30 ms (SIPp callee style).
pub const SDP_202_G722: &str = "v=0
o=user1 53655765 2353687637 IN IP4 192.168.1.21
s=-
c=IN IP4 192.168.1.21
t=0 0
m=audio 6000 RTP/AVP 9 101
a=rtpmap:9 G722/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:30
";

/// Video only: nothing the bridge can answer.
pub const SDP_VIDEO: &str = "v=0
o=- 1 1 IN IP4 192.168.1.20
s=-
c=IN IP4 192.168.1.20
t=0 0
m=video 5000 RTP/AVP 96
a=rtpmap:96 H264/90000
";

/// `head` (lines, `\n`-separated) and `body` as wire bytes: CRLF line ends
/// and the right Content-Length.
pub fn wire(head: &str, body: &str) -> Vec<u8> {
    let body = body.replace('\n', "\r\n");
    let mut s = head.trim_end().replace('\n', "\r\n");
    if !body.is_empty() {
        s.push_str("\r\nContent-Type: application/sdp");
    }
    s.push_str(&format!("\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    s.into_bytes()
}

fn parse(b: &[u8]) -> Message {
    Message::parse(b).unwrap()
}

fn h<'a>(m: &'a Message, name: &str) -> &'a str {
    m.headers.get(name).unwrap_or_else(|| panic!("no {name}"))
}

/// SIPp's REGISTER (`auth`: the Authorization value of the second one).
pub fn register(
    ext: &str,
    src: SocketAddr,
    cseq: u32,
    auth: Option<&str>,
    expires: u32,
) -> Vec<u8> {
    let ip = src.ip();
    let port = src.port();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\n"));
    wire(
        &format!(
            "REGISTER sip:{BOX}:5060 SIP/2.0
Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK-reg-{ext}-{cseq}-{expires};rport
From: <sip:{ext}@{BOX}>;tag=4242SIPpTag00{ext}
To: <sip:{ext}@{BOX}>
Call-ID: 1-4242@{ip}
CSeq: {cseq} REGISTER
Contact: <sip:{ext}@{ip}:{port}>
{auth}User-Agent: Yealink SIP-T46U 66.86.0.15
Max-Forwards: 70
Expires: {expires}"
        ),
        "",
    )
}

/// baresip (extension 201) dials `to`.
pub fn invite_from_201(
    to: &str,
    cseq: u32,
    branch: &str,
    auth: Option<&str>,
    sdp: &str,
) -> Vec<u8> {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\n"));
    wire(
        &format!(
            "INVITE sip:{to}@{BOX} SIP/2.0
Via: SIP/2.0/UDP 192.168.1.20:5060;branch={branch};rport
Max-Forwards: 70
Contact: <sip:201-0x5581@192.168.1.20:5060;transport=udp>
To: <sip:{to}@{BOX}>
From: \"Desk 201\" <sip:201@{BOX}>;tag=7c1d9e2a0b3f4d5e
Call-ID: 5f0e3c2b9a41c7d8
CSeq: {cseq} INVITE
Allow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,UPDATE,REFER
Supported: replaces,norefersub,100rel
User-Agent: baresip v1.0.0 (x86_64/linux)
{auth}"
        ),
        sdp,
    )
}

/// The phone's ACK for `resp` to `invite`: in the INVITE's transaction
/// (same branch) for an error response, a new one (`branch`) for a 2xx.
pub fn ack(invite: &[u8], resp: &Message, branch: Option<&str>) -> Vec<u8> {
    let inv = parse(invite);
    let via = match branch {
        None => h(&inv, "Via").to_string(),
        Some(b) => format!("SIP/2.0/UDP 192.168.1.20:5060;branch={b};rport"),
    };
    let ruri = match branch {
        None => inv.request_uri().unwrap().to_string(),
        Some(_) => contact_uri(resp),
    };
    let seq = inv.cseq().unwrap().seq;
    wire(
        &format!(
            "ACK {ruri} SIP/2.0
Via: {via}
Max-Forwards: 70
To: {}
From: {}
Call-ID: {}
CSeq: {seq} ACK",
            h(resp, "To"),
            h(&inv, "From"),
            inv.call_id().unwrap()
        ),
        "",
    )
}

/// The ACK of 201's INVITE answered with a non-2xx `challenge`.
pub fn ack_from_201(invite: &[u8], resp: &Message) -> Vec<u8> {
    ack(invite, resp, None)
}

fn contact_uri(m: &Message) -> String {
    let c = h(m, "Contact");
    c.trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string()
}

/// 201's in-dialog request (`BYE`, or `INVITE` with `sdp`) in the dialog
/// that `ok` (our 200 to `invite`) established.
pub fn in_dialog_from_201(
    method: &str,
    invite: &[u8],
    ok: &Message,
    cseq: u32,
    branch: &str,
    sdp: &str,
) -> Vec<u8> {
    let inv = parse(invite);
    wire(
        &format!(
            "{method} {} SIP/2.0
Via: SIP/2.0/UDP 192.168.1.20:5060;branch={branch};rport
Max-Forwards: 70
Contact: <sip:201-0x5581@192.168.1.20:5060;transport=udp>
To: {}
From: {}
Call-ID: {}
CSeq: {cseq} {method}
User-Agent: baresip v1.0.0 (x86_64/linux)",
            contact_uri(ok),
            h(ok, "To"),
            h(&inv, "From"),
            inv.call_id().unwrap()
        ),
        sdp,
    )
}

/// 201 cancels its INVITE.
pub fn cancel_from_201(invite: &[u8]) -> Vec<u8> {
    let inv = parse(invite);
    wire(
        &format!(
            "CANCEL {} SIP/2.0
Via: {}
Max-Forwards: 70
To: {}
From: {}
Call-ID: {}
CSeq: {} CANCEL
User-Agent: baresip v1.0.0 (x86_64/linux)",
            inv.request_uri().unwrap(),
            h(&inv, "Via"),
            h(&inv, "To"),
            h(&inv, "From"),
            inv.call_id().unwrap(),
            inv.cseq().unwrap().seq
        ),
        "",
    )
}

/// SIPp (extension 202) answers `req` with `code`: `[last_Via:]`,
/// `[last_From:]`, `[last_To:];tag=...`, `[last_Call-ID:]`, `[last_CSeq:]`.
pub fn response_from_202(req: &Message, code: u16, reason: &str, sdp: &str) -> Vec<u8> {
    let vias: String = req
        .headers
        .get_all("Via")
        .map(|v| format!("Via: {v}\n"))
        .collect();
    let to = h(req, "To");
    let to = if to.contains(";tag=") {
        to.to_string()
    } else {
        format!("{to};tag=4343SIPpTag01202")
    };
    let contact = if code < 300 {
        "Contact: <sip:202@192.168.1.21:5062;transport=UDP>\n"
    } else {
        ""
    };
    wire(
        &format!(
            "SIP/2.0 {code} {reason}
{vias}From: {}
To: {to}
Call-ID: {}
CSeq: {}
{contact}",
            h(req, "From"),
            req.call_id().unwrap(),
            h(req, "CSeq")
        ),
        sdp,
    )
}

/// SIPp (202) hangs up the call our `invite` set up and `ok` answered.
pub fn bye_from_202(invite: &Message, ok: &Message) -> Vec<u8> {
    wire(
        &format!(
            "BYE {} SIP/2.0
Via: SIP/2.0/UDP 192.168.1.21:5062;branch=z9hG4bK-4343-1-8
From: {}
To: {}
Call-ID: {}
CSeq: 2 BYE
Max-Forwards: 70",
            contact_uri(invite),
            h(ok, "To"),
            h(invite, "From"),
            invite.call_id().unwrap()
        ),
        "",
    )
}
