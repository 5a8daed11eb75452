//! SIP URIs, name-addr values (From, To, Contact, Route), Via and CSeq.
//!
//! Guarantees: each parser checks its input before indexing, rejects values
//! RFC 3261 forbids (spaces in a URI, unbalanced quotes, CSeq numbers of 2^31
//! or more, non-token methods) with a [`ValueError`], bounds parameter lists
//! and never panics. `Display` writes a form the parser accepts again.

use std::fmt;

use thiserror::Error;

use super::header::{Params, is_token, split_outside};

/// Why a header value or URI was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValueError {
    /// A URI was not `sip:`/`sips:` or had an empty or invalid host or port.
    #[error("invalid SIP URI")]
    Uri,
    /// A From/To/Contact/Route value was not a valid name-addr or addr-spec.
    #[error("invalid name-addr")]
    NameAddr,
    /// A Via value was not `SIP/2.0/<transport> host[:port];params`.
    #[error("invalid Via")]
    Via,
    /// CSeq was not `<number below 2^31> <method>`.
    #[error("invalid CSeq")]
    CSeq,
    /// A method name was not a token.
    #[error("invalid method")]
    Method,
    /// Too many or malformed `;` parameters.
    #[error("invalid parameters")]
    Params,
}

/// A request method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// REGISTER
    Register,
    /// OPTIONS
    Options,
    /// Any other token (INFO, UPDATE, NOTIFY, ...), kept as written.
    Other(String),
}

impl Method {
    /// Parses a method token (case-sensitive, RFC 3261 7.1).
    pub fn parse(s: &str) -> Result<Method, ValueError> {
        if !is_token(s) || s.len() > 64 {
            return Err(ValueError::Method);
        }
        Ok(match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_string()),
        })
    }

    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `sip:` or `sips:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// `sips:` rather than `sip:`.
    pub secure: bool,
    /// The user part (still %-escaped), if any.
    pub user: Option<String>,
    /// Host name, IPv4 address or bracketed IPv6 reference.
    pub host: String,
    /// Port, if written.
    pub port: Option<u16>,
    /// URI parameters (`;transport=tcp;lr`).
    pub params: Params,
    /// The `?headers` part, kept verbatim (without the `?`).
    pub headers: Option<String>,
}

fn valid_host(h: &str) -> bool {
    if let Some(inner) = h.strip_prefix('[') {
        return inner
            .strip_suffix(']')
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok());
    }
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Splits `host[:port]` (IPv6 in brackets).
pub fn parse_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let (h, rest) = s.split_at(end + 1);
        match rest {
            "" => (h, None),
            _ => (h, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if !valid_host(host) {
        return None;
    }
    let port = match port {
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

impl SipUri {
    /// Parses a URI; no whitespace is allowed anywhere in it.
    pub fn parse(s: &str) -> Result<SipUri, ValueError> {
        if s.len() > 1024
            || s.bytes()
                .any(|b| b.is_ascii_whitespace() || b < 0x21 || b == 0x7f)
        {
            return Err(ValueError::Uri);
        }
        let (secure, rest) = if let Some(r) = strip_prefix_ci(s, "sips:") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(s, "sip:") {
            (false, r)
        } else {
            return Err(ValueError::Uri);
        };
        // The user part may hold `?` and `;` (RFC 4475 3.1.1.2), so split it
        // off first.
        let (user, rest) = match rest.split_once('@') {
            Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
            Some(_) => return Err(ValueError::Uri),
            None => (None, rest),
        };
        let (hostpart, headers) = match rest.split_once('?') {
            Some((r, h)) => (r, Some(h.to_string())),
            None => (rest, None),
        };
        let (hostport, params) = match hostpart.split_once(';') {
            Some((h, p)) => (h, Params::parse(p).ok_or(ValueError::Uri)?),
            None => (hostpart, Params::default()),
        };
        let (host, port) = parse_host_port(hostport).ok_or(ValueError::Uri)?;
        Ok(SipUri {
            secure,
            user,
            host,
            port,
            params,
            headers,
        })
    }

    /// `user@host` (or `host`), the address-of-record key of this URI.
    pub fn aor(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, p: &str) -> Option<&'a str> {
    let head = s.get(..p.len())?;
    head.eq_ignore_ascii_case(p).then(|| &s[p.len()..])
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "sips:" } else { "sip:" })?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)?;
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

/// `"Display" <uri>;params` or `uri;params` (From, To, Contact, Route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name as written (quotes kept), if any.
    pub display: Option<String>,
    /// The URI.
    pub uri: SipUri,
    /// Header parameters (`;tag=`, `;expires=`, `;q=`).
    pub params: Params,
}

impl NameAddr {
    /// Parses one value.
    pub fn parse(s: &str) -> Result<NameAddr, ValueError> {
        let s = s.trim();
        let b = s.as_bytes();
        // Find a '<' outside a quoted display name.
        let mut quoted = false;
        let mut lt = None;
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b'<' if !quoted => {
                    lt = Some(i);
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        if quoted {
            return Err(ValueError::NameAddr);
        }
        match lt {
            Some(lt) => {
                let gt = s[lt..].find('>').ok_or(ValueError::NameAddr)? + lt;
                let display = s[..lt].trim();
                if !display.is_empty() && !valid_display(display) {
                    return Err(ValueError::NameAddr);
                }
                let uri = SipUri::parse(&s[lt + 1..gt]).map_err(|_| ValueError::NameAddr)?;
                let params = Params::parse(&s[gt + 1..]).ok_or(ValueError::Params)?;
                Ok(NameAddr {
                    display: (!display.is_empty()).then(|| display.to_string()),
                    uri,
                    params,
                })
            }
            None => {
                let (u, p) = match s.split_once(';') {
                    Some((u, p)) => (u.trim(), p),
                    None => (s, ""),
                };
                let uri = SipUri::parse(u).map_err(|_| ValueError::NameAddr)?;
                let params = Params::parse(p).ok_or(ValueError::Params)?;
                Ok(NameAddr {
                    display: None,
                    uri,
                    params,
                })
            }
        }
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        self.params.value("tag")
    }
}

fn valid_display(d: &str) -> bool {
    if d.starts_with('"') {
        // The caller's scan already balanced the quotes and escapes.
        d.len() >= 2 && d.ends_with('"')
    } else {
        d.split_ascii_whitespace().all(is_token)
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            write!(f, "{d} ")?;
        }
        write!(f, "<{}>{}", self.uri, self.params)
    }
}

/// One Via value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport, upper case (`UDP`, `TCP`, `TLS`, `WS`, ...).
    pub transport: String,
    /// sent-by host (lower case).
    pub host: String,
    /// sent-by port, if written.
    pub port: Option<u16>,
    /// Parameters (`branch`, `rport`, `received`, ...).
    pub params: Params,
}

impl Via {
    /// Parses `SIP / 2.0 / UDP host:port;params` (LWS around `/` allowed).
    pub fn parse(s: &str) -> Result<Via, ValueError> {
        let parts = split_outside(s, b';').ok_or(ValueError::Via)?;
        let head = parts.first().ok_or(ValueError::Via)?;
        let mut slash = head.splitn(3, '/');
        let (name, version, rest) = match (slash.next(), slash.next(), slash.next()) {
            (Some(n), Some(v), Some(r)) => (n.trim(), v.trim(), r.trim_start()),
            _ => return Err(ValueError::Via),
        };
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" {
            return Err(ValueError::Via);
        }
        let (transport, sent_by) = rest
            .split_once(|c: char| c.is_ascii_whitespace())
            .ok_or(ValueError::Via)?;
        if !is_token(transport) {
            return Err(ValueError::Via);
        }
        let (host, port) = parse_host_port(sent_by.trim()).ok_or(ValueError::Via)?;
        let params = Params::parse(&s[head.len()..]).ok_or(ValueError::Via)?;
        Ok(Via {
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params,
        })
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&str> {
        self.params.value("branch")
    }

    /// True when the branch carries the RFC 3261 magic cookie.
    pub fn is_rfc3261(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with("z9hG4bK"))
    }

    /// Records where the request really came from (RFC 3261 18.2.1, RFC 3581):
    /// `received` when the source address differs from sent-by, `rport` filled
    /// in when the client asked for it.
    pub fn stamp_source(&mut self, src: std::net::SocketAddr) {
        let ip = src.ip().to_string();
        let host_ip = self.host.trim_start_matches('[').trim_end_matches(']');
        if host_ip != ip || self.params.has("rport") {
            self.params.set("received", Some(ip));
        }
        if self.params.has("rport") {
            self.params.set("rport", Some(src.port().to_string()));
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)
    }
}

/// A CSeq value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number, below 2^31.
    pub seq: u32,
    /// Method.
    pub method: Method,
}

impl CSeq {
    /// Parses `<number> <method>`.
    pub fn parse(s: &str) -> Result<CSeq, ValueError> {
        let mut it = s.split_ascii_whitespace();
        let (n, m) = match (it.next(), it.next(), it.next()) {
            (Some(n), Some(m), None) => (n, m),
            _ => return Err(ValueError::CSeq),
        };
        if n.is_empty() || n.len() > 10 || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValueError::CSeq);
        }
        let seq: u32 = n.parse().map_err(|_| ValueError::CSeq)?;
        if seq >= 1 << 31 {
            return Err(ValueError::CSeq);
        }
        Ok(CSeq {
            seq,
            method: Method::parse(m).map_err(|_| ValueError::CSeq)?,
        })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_forms() {
        let u = SipUri::parse("sip:alice:pw@Example.COM:5070;transport=tcp?subject=x").unwrap();
        assert_eq!(u.user.as_deref(), Some("alice:pw"));
        assert_eq!(u.host, "example.com");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.params.value("transport"), Some("tcp"));
        let v6 = SipUri::parse("sip:[2001:db8::10]:5060").unwrap();
        assert_eq!(v6.host, "[2001:db8::10]");
        assert_eq!(v6.to_string(), "sip:[2001:db8::10]:5060");
        for bad in [
            "http://x",
            "sip:",
            "sip:a b",
            "sip:@h",
            "sip:h:99999",
            "sip:[zz]",
            "sip:h:",
        ] {
            assert!(SipUri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(r#""Bell, A." <sip:bell@example.com>;tag=abc"#).unwrap();
        assert_eq!(n.tag(), Some("abc"));
        let n = NameAddr::parse("sip:bob@example.com;tag=1").unwrap();
        assert_eq!(n.tag(), Some("1"));
        assert!(n.uri.params.value("tag").is_none());
        assert!(NameAddr::parse("\"unbalanced <sip:a@b>").is_err());
        assert!(NameAddr::parse("< sip:a@b >").is_err());
    }

    #[test]
    fn via_forms() {
        let v = Via::parse("SIP  /   2.0 /UDP    192.0.2.2;rport;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.2");
        assert_eq!(v.branch(), Some("390skdjuw"));
        let mut v = Via::parse("SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bKx;rport").unwrap();
        assert!(v.is_rfc3261());
        v.stamp_source("[2001:db8::2]:4000".parse().unwrap());
        assert_eq!(v.params.value("received"), Some("2001:db8::2"));
        assert_eq!(v.params.value("rport"), Some("4000"));
        assert!(Via::parse("SIP/3.0/UDP h").is_err());
        assert!(Via::parse("SIP/2.0/UDP").is_err());
    }

    #[test]
    fn cseq_bounds() {
        assert_eq!(CSeq::parse("0009 INVITE").unwrap().seq, 9);
        assert!(CSeq::parse("2147483648 INVITE").is_err());
        assert!(CSeq::parse("-1 INVITE").is_err());
        assert!(CSeq::parse("1").is_err());
    }
}
