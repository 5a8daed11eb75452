//! SIP requests and responses (RFC 3261 7): parse and serialize.
//!
//! Guarantees:
//! - every size is bounded by a [`Limits`] (message, header count, header
//!   line, body); input over a bound is refused before it is stored;
//! - a message that parses has a valid start line, a parseable top Via,
//!   From, To, a non-empty Call-ID and a CSeq whose method matches the
//!   request method, and one agreed Content-Length (when present);
//! - `Content-Length` is honoured: extra datagram bytes are ignored (RFC 3261
//!   18.3), a short body is an error;
//! - [`Message::encode`] always writes one correct `Content-Length` and
//!   turns CR/LF inside fields into spaces (no header injection);
//! - no input makes any function here panic (see `fuzz/fuzz_targets/sip_message.rs`).

use thiserror::Error;

use super::header::{Headers, canonical_name, is_list, is_token, split_outside};
use super::uri::{CSeq, Method, NameAddr, SipUri, ValueError, Via};

/// Size bounds applied while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of one datagram (whole message).
    pub max_message: usize,
    /// Most bytes of the start line plus header section.
    pub max_head: usize,
    /// Most header values (after list splitting).
    pub max_headers: usize,
    /// Most bytes of one unfolded header line.
    pub max_header_len: usize,
    /// Most body bytes.
    pub max_body: usize,
}

impl Limits {
    /// Bounds for one UDP datagram.
    pub const UDP: Limits = Limits {
        max_message: 8192,
        max_head: 8192,
        max_headers: 64,
        max_header_len: 2048,
        max_body: 8192,
    };
    /// Bounds for one message on a TCP/TLS stream.
    pub const STREAM: Limits = Limits {
        max_message: 8192 + 16384,
        max_head: 8192,
        max_headers: 64,
        max_header_len: 2048,
        max_body: 16384,
    };
}

/// Why bytes are not a SIP message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The message is larger than `Limits::max_message`.
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    /// The header section is larger than `Limits::max_head`.
    #[error("header section larger than {0} bytes")]
    HeadTooLarge(usize),
    /// No empty line ends the header section (datagram) or not yet (stream).
    #[error("header section not terminated by an empty line")]
    Incomplete,
    /// More header values than `Limits::max_headers`.
    #[error("more than {0} header values")]
    TooManyHeaders(usize),
    /// One header line is longer than `Limits::max_header_len`.
    #[error("header line longer than {0} bytes")]
    HeaderTooLong(usize),
    /// The header section is not UTF-8 or holds control characters.
    #[error("header section is not printable UTF-8")]
    BadEncoding,
    /// The request or status line is malformed.
    #[error("malformed start line")]
    BadStartLine,
    /// The protocol version is not `SIP/2.0` (answer 505).
    #[error("unsupported SIP version")]
    BadVersion,
    /// The Request-URI is not a valid sip:/sips: URI (answer 416 or 400).
    #[error("invalid Request-URI")]
    BadRequestUri,
    /// The status code is not three digits in 100..=699.
    #[error("invalid status code")]
    BadStatusCode,
    /// A header line has no colon or an invalid name.
    #[error("malformed header line")]
    BadHeaderLine,
    /// A known header has an invalid value.
    #[error("invalid {name} header: {source}")]
    BadHeader {
        /// Canonical header name.
        name: &'static str,
        /// What was wrong with the value.
        #[source]
        source: ValueError,
    },
    /// A mandatory header (Via, From, To, Call-ID, CSeq) is missing.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// The CSeq method differs from the request method.
    #[error("CSeq method does not match the request method")]
    CSeqMismatch,
    /// Content-Length is not a number, or two Content-Length values disagree.
    #[error("invalid Content-Length")]
    BadContentLength,
    /// A stream message has no Content-Length (RFC 3261 18.3 requires it).
    #[error("Content-Length is required on stream transports")]
    MissingContentLength,
    /// The body is shorter than Content-Length.
    #[error("body shorter than Content-Length")]
    BodyTruncated,
    /// Content-Length is larger than `Limits::max_body`.
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// Max-Forwards is not a number in 0..=255.
    #[error("invalid Max-Forwards")]
    BadMaxForwards,
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `METHOD uri SIP/2.0`
    Request {
        /// Method.
        method: Method,
        /// Request-URI.
        uri: SipUri,
    },
    /// `SIP/2.0 code reason`
    Response {
        /// Status code 100..=699.
        code: u16,
        /// Reason phrase (may be empty).
        reason: String,
    },
}

/// A parsed or built SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Request or status line.
    pub start: StartLine,
    /// Headers (Content-Length is rewritten by [`Message::encode`]).
    pub headers: Headers,
    /// Body bytes (exactly Content-Length of them).
    pub body: Vec<u8>,
}

/// A Contact value: `*` or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contact {
    /// `Contact: *` (only valid in REGISTER with Expires: 0).
    Star,
    /// One contact address.
    Addr(NameAddr),
}

fn find_head_end(b: &[u8]) -> Option<(usize, usize)> {
    // Returns (end of head text, start of body).
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

/// Parses one message from `buf`. `stream` selects stream rules (Content-Length
/// required, a short body is `Incomplete`). Returns the message and the bytes
/// it used (including leading CRLFs).
pub(crate) fn parse_with(
    buf: &[u8],
    limits: &Limits,
    stream: bool,
) -> Result<(Message, usize), ParseError> {
    if !stream && buf.len() > limits.max_message {
        return Err(ParseError::TooLarge(limits.max_message));
    }
    let skip = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let b = &buf[skip..];
    let (head_end, body_start) = match find_head_end(b) {
        Some(x) if x.0 <= limits.max_head => x,
        Some(_) => return Err(ParseError::HeadTooLarge(limits.max_head)),
        None if b.len() > limits.max_head => return Err(ParseError::HeadTooLarge(limits.max_head)),
        None => return Err(ParseError::Incomplete),
    };
    let head = std::str::from_utf8(&b[..head_end]).map_err(|_| ParseError::BadEncoding)?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().unwrap_or("");
    // Control characters are legal inside quoted strings of header values
    // (RFC 4475 3.1.1.2), never in the start line; a bare CR is never legal.
    if first.bytes().any(|c| c < 0x20 || c == 0x7f)
        || head
            .split('\n')
            .any(|l| l.strip_suffix('\r').unwrap_or(l).contains('\r'))
    {
        return Err(ParseError::BadEncoding);
    }
    let start = parse_start_line(first)?;
    let headers = parse_headers(lines, limits)?;

    // Content-Length: every value must agree.
    let mut content_length = None;
    for v in headers.get_all("Content-Length") {
        if v.is_empty() || v.len() > 10 || !v.bytes().all(|c| c.is_ascii_digit()) {
            return Err(ParseError::BadContentLength);
        }
        let n: usize = v.parse().map_err(|_| ParseError::BadContentLength)?;
        if content_length.is_some_and(|c| c != n) {
            return Err(ParseError::BadContentLength);
        }
        content_length = Some(n);
    }
    let avail = &b[body_start..];
    let (body, used) = match content_length {
        Some(n) if !stream && avail.len() < n => return Err(ParseError::BodyTruncated),
        Some(n) if n > limits.max_body => return Err(ParseError::BodyTooLarge(limits.max_body)),
        Some(n) if avail.len() < n => {
            return Err(if stream {
                ParseError::Incomplete
            } else {
                ParseError::BodyTruncated
            });
        }
        Some(n) => (&avail[..n], skip + body_start + n),
        None if stream => return Err(ParseError::MissingContentLength),
        None if avail.len() > limits.max_body => {
            return Err(ParseError::BodyTooLarge(limits.max_body));
        }
        None => (avail, buf.len()),
    };
    let msg = Message {
        start,
        headers,
        body: body.to_vec(),
    };
    msg.validate()?;
    Ok((msg, used))
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    let mut parts = line.splitn(3, ' ');
    let (a, b, c) = match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), c) => (a, b, c),
        _ => return Err(ParseError::BadStartLine),
    };
    let sip_prefix =
        |s: &str| s.len() > 4 && s.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/"));
    if sip_prefix(a) {
        if a != "SIP/2.0" {
            return Err(ParseError::BadVersion);
        }
        if b.len() != 3 || !b.bytes().all(|d| d.is_ascii_digit()) {
            return Err(ParseError::BadStatusCode);
        }
        let code: u16 = b.parse().map_err(|_| ParseError::BadStatusCode)?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::BadStatusCode);
        }
        return Ok(StartLine::Response {
            code,
            reason: c.unwrap_or("").to_string(),
        });
    }
    let c = c.ok_or(ParseError::BadStartLine)?;
    if c.bytes().any(|x| x.is_ascii_whitespace()) || b.is_empty() {
        return Err(ParseError::BadStartLine);
    }
    if !c.eq_ignore_ascii_case("SIP/2.0") {
        return Err(if sip_prefix(c) {
            ParseError::BadVersion
        } else {
            ParseError::BadStartLine
        });
    }
    let method = Method::parse(a).map_err(|_| ParseError::BadStartLine)?;
    let uri = SipUri::parse(b).map_err(|_| ParseError::BadRequestUri)?;
    Ok(StartLine::Request { method, uri })
}

fn parse_headers<'a>(
    lines: impl Iterator<Item = &'a str>,
    limits: &Limits,
) -> Result<Headers, ParseError> {
    // Unfold continuation lines, bounded by max_header_len.
    let mut unfolded: Vec<String> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            let last = unfolded.last_mut().ok_or(ParseError::BadHeaderLine)?;
            if last.len() + line.len() + 1 > limits.max_header_len {
                return Err(ParseError::HeaderTooLong(limits.max_header_len));
            }
            last.push(' ');
            last.push_str(line.trim_start());
        } else {
            if line.len() > limits.max_header_len {
                return Err(ParseError::HeaderTooLong(limits.max_header_len));
            }
            if unfolded.len() >= limits.max_headers {
                return Err(ParseError::TooManyHeaders(limits.max_headers));
            }
            unfolded.push(line.to_string());
        }
    }
    let mut headers = Headers::new();
    for line in &unfolded {
        let (name, value) = line.split_once(':').ok_or(ParseError::BadHeaderLine)?;
        let name = name.trim_end_matches([' ', '\t']);
        if !is_token(name) {
            return Err(ParseError::BadHeaderLine);
        }
        let canon = canonical_name(name);
        let value = value.trim();
        if is_list(&canon) {
            let parts = split_outside(value, b',').ok_or_else(|| bad_header(&canon))?;
            for part in parts {
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                if headers.len() >= limits.max_headers {
                    return Err(ParseError::TooManyHeaders(limits.max_headers));
                }
                headers.push(&canon, part);
            }
        } else {
            if headers.len() >= limits.max_headers {
                return Err(ParseError::TooManyHeaders(limits.max_headers));
            }
            headers.push(&canon, value);
        }
    }
    Ok(headers)
}

fn static_name(canon: &str) -> &'static str {
    const NAMES: &[&str] = &[
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Route",
        "Record-Route",
    ];
    NAMES
        .iter()
        .find(|n| n.eq_ignore_ascii_case(canon))
        .copied()
        .unwrap_or("list")
}

fn bad_header(canon: &str) -> ParseError {
    let source = match static_name(canon) {
        "Via" => ValueError::Via,
        "Contact" | "Route" | "Record-Route" => ValueError::NameAddr,
        _ => ValueError::Params,
    };
    ParseError::BadHeader {
        name: static_name(canon),
        source,
    }
}

impl Message {
    /// Parses one UDP datagram ([`Limits::UDP`]).
    pub fn parse(buf: &[u8]) -> Result<Message, ParseError> {
        Self::parse_limited(buf, &Limits::UDP)
    }

    /// Parses one datagram with explicit bounds.
    pub fn parse_limited(buf: &[u8], limits: &Limits) -> Result<Message, ParseError> {
        parse_with(buf, limits, false).map(|(m, _)| m)
    }

    /// A new request with no headers.
    pub fn request(method: Method, uri: SipUri) -> Message {
        Message {
            start: StartLine::Request { method, uri },
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// A response to `req` (RFC 3261 8.2.6.2): Via, From, To, Call-ID, CSeq
    /// copied, and Record-Route for a dialog-creating INVITE response. The
    /// caller adds a To tag with [`Message::set_to_tag`] where needed.
    pub fn response_to(req: &Message, code: u16) -> Message {
        let mut headers = Headers::new();
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            for v in req.headers.get_all(name) {
                headers.push(name, v);
            }
        }
        if req.method() == Some(&Method::Invite) && (101..300).contains(&code) {
            for v in req.headers.get_all("Record-Route") {
                headers.push("Record-Route", v);
            }
        }
        Message {
            start: StartLine::Response {
                code,
                reason: reason_phrase(code).to_string(),
            },
            headers,
            body: Vec::new(),
        }
    }

    /// Adds `;tag=` to To unless it already has one.
    pub fn set_to_tag(&mut self, tag: &str) {
        if let Ok(mut to) = self.to()
            && to.tag().is_none()
        {
            to.params.set("tag", Some(tag.to_string()));
            self.headers.replace_first("To", to.to_string());
        }
    }

    /// Checks the invariants listed in the module docs.
    fn validate(&self) -> Result<(), ParseError> {
        self.top_via()?;
        self.from()?;
        self.to()?;
        self.call_id()?;
        let cseq = self.cseq()?;
        if let StartLine::Request { method, .. } = &self.start
            && *method != cseq.method
        {
            return Err(ParseError::CSeqMismatch);
        }
        if let Some(mf) = self.headers.get("Max-Forwards") {
            if mf.is_empty() || mf.len() > 10 || !mf.bytes().all(|c| c.is_ascii_digit()) {
                return Err(ParseError::BadMaxForwards);
            }
            if mf.parse::<u32>().map_err(|_| ParseError::BadMaxForwards)? > 255 {
                return Err(ParseError::BadMaxForwards);
            }
        }
        for v in self.headers.get_all("Via") {
            Via::parse(v).map_err(|source| ParseError::BadHeader {
                name: "Via",
                source,
            })?;
        }
        Ok(())
    }

    /// The request method, `None` for a response.
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code, `None` for a request.
    pub fn code(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// True for a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The Request-URI, `None` for a response.
    pub fn request_uri(&self) -> Option<&SipUri> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    fn typed<T>(
        &self,
        name: &'static str,
        f: impl Fn(&str) -> Result<T, ValueError>,
    ) -> Result<T, ParseError> {
        let v = self
            .headers
            .get(name)
            .ok_or(ParseError::MissingHeader(name))?;
        f(v).map_err(|source| ParseError::BadHeader { name, source })
    }

    /// The top (first) Via.
    pub fn top_via(&self) -> Result<Via, ParseError> {
        self.typed("Via", Via::parse)
    }

    /// Every Via, top first.
    pub fn vias(&self) -> Result<Vec<Via>, ParseError> {
        self.headers
            .get_all("Via")
            .map(|v| {
                Via::parse(v).map_err(|source| ParseError::BadHeader {
                    name: "Via",
                    source,
                })
            })
            .collect()
    }

    /// From.
    pub fn from(&self) -> Result<NameAddr, ParseError> {
        self.typed("From", NameAddr::parse)
    }

    /// To.
    pub fn to(&self) -> Result<NameAddr, ParseError> {
        self.typed("To", NameAddr::parse)
    }

    /// Call-ID (non-empty, no whitespace).
    pub fn call_id(&self) -> Result<&str, ParseError> {
        match self.headers.get("Call-ID") {
            Some(v) if !v.is_empty() && !v.bytes().any(|c| c.is_ascii_whitespace()) => Ok(v),
            Some(_) => Err(ParseError::BadHeader {
                name: "Call-ID",
                source: ValueError::Params,
            }),
            None => Err(ParseError::MissingHeader("Call-ID")),
        }
    }

    /// CSeq.
    pub fn cseq(&self) -> Result<CSeq, ParseError> {
        self.typed("CSeq", CSeq::parse)
    }

    /// Contact values, in order.
    pub fn contacts(&self) -> Result<Vec<Contact>, ParseError> {
        self.headers
            .get_all("Contact")
            .map(|v| {
                if v == "*" {
                    Ok(Contact::Star)
                } else {
                    NameAddr::parse(v)
                        .map(Contact::Addr)
                        .map_err(|source| ParseError::BadHeader {
                            name: "Contact",
                            source,
                        })
                }
            })
            .collect()
    }

    /// Route or Record-Route values (`name`), in order.
    pub fn routes(&self, name: &'static str) -> Result<Vec<NameAddr>, ParseError> {
        self.headers
            .get_all(name)
            .map(|v| NameAddr::parse(v).map_err(|source| ParseError::BadHeader { name, source }))
            .collect()
    }

    /// The Expires header as seconds, `None` when absent or not a number.
    pub fn expires(&self) -> Option<u32> {
        parse_delta(self.headers.get("Expires")?)
    }

    /// Serializes with CRLF line ends and a correct Content-Length.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512 + self.body.len());
        // CR and LF inside any field become spaces, so no value set by the
        // caller can inject a header or end the header section early.
        let mut line = |text: &str| {
            out.extend(
                text.bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        };
        line(&match &self.start {
            StartLine::Request { method, uri } => format!("{method} {uri} SIP/2.0"),
            StartLine::Response { code, reason } => format!("SIP/2.0 {code} {reason}"),
        });
        for h in self.headers.iter() {
            if !h.name.eq_ignore_ascii_case("Content-Length") {
                line(&format!("{}: {}", h.name, h.value));
            }
        }
        line(&format!("Content-Length: {}", self.body.len()));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// Parses a delta-seconds value; values past `u32::MAX` saturate (RFC 3261 25.1).
pub fn parse_delta(v: &str) -> Option<u32> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u32>().unwrap_or(u32::MAX))
}

/// The RFC 3261 reason phrase of a status code.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        603 => "Decline",
        _ => "",
    }
}
