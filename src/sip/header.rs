//! Header names, header lists and `;name=value` parameters.
//!
//! Guarantees: names compare case-insensitively and compact forms (`v`, `f`,
//! `t`, `i`, `m`, `l`, `c`, `k`, `s`, `e`, ...) are expanded to one canonical
//! spelling at parse time, so lookups never depend on how a phone spelled a
//! name. List headers (Via, Contact, Route, ...) are split on commas outside
//! quotes and angle brackets, one [`Header`] per value. Every collection here
//! is bounded by the constants below; nothing panics on any input.

use std::fmt;

/// Most parameters kept on one value (Via, Contact, URI).
pub const MAX_PARAMS: usize = 24;

/// Compact form, canonical spelling (RFC 3261 7.3.3 and later extensions).
const COMPACT: &[(&str, &str)] = &[
    ("a", "Accept-Contact"),
    ("b", "Referred-By"),
    ("c", "Content-Type"),
    ("d", "Request-Disposition"),
    ("e", "Content-Encoding"),
    ("f", "From"),
    ("i", "Call-ID"),
    ("j", "Reject-Contact"),
    ("k", "Supported"),
    ("l", "Content-Length"),
    ("m", "Contact"),
    ("o", "Event"),
    ("r", "Refer-To"),
    ("s", "Subject"),
    ("t", "To"),
    ("u", "Allow-Events"),
    ("v", "Via"),
    ("x", "Session-Expires"),
    ("y", "Identity"),
];

/// Known long names, in their canonical spelling.
const KNOWN: &[&str] = &[
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Allow",
    "Allow-Events",
    "Authorization",
    "Call-ID",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Event",
    "Expires",
    "From",
    "Max-Forwards",
    "Min-Expires",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "Record-Route",
    "Refer-To",
    "Referred-By",
    "Require",
    "Retry-After",
    "Route",
    "Server",
    "Session-Expires",
    "Subject",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
];

/// Headers whose value is a comma-separated list (RFC 3261 7.3.1).
const LIST: &[&str] = &[
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Allow",
    "Allow-Events",
    "Contact",
    "Content-Encoding",
    "Proxy-Require",
    "Record-Route",
    "Require",
    "Route",
    "Supported",
    "Unsupported",
    "Via",
];

/// The canonical spelling of a header name: compact forms expanded, known
/// names in their RFC spelling, unknown names kept as written.
pub fn canonical_name(name: &str) -> String {
    if name.len() == 1
        && let Some((_, long)) = COMPACT.iter().find(|(c, _)| c.eq_ignore_ascii_case(name))
    {
        return (*long).to_string();
    }
    match KNOWN.iter().find(|k| k.eq_ignore_ascii_case(name)) {
        Some(k) => (*k).to_string(),
        None => name.to_string(),
    }
}

/// True when `name` (canonical) is a comma-separated list header.
pub fn is_list(name: &str) -> bool {
    LIST.iter().any(|l| l.eq_ignore_ascii_case(name))
}

/// True for an RFC 3261 `token` character.
pub fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// True when `s` is a non-empty RFC 3261 `token`.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

/// One header field value (one element of a list header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Canonical name (see [`canonical_name`]).
    pub name: String,
    /// The value, with surrounding whitespace removed and folding undone.
    pub value: String,
}

/// The ordered header fields of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    list: Vec<Header>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of header values.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// All values in wire order.
    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.list.iter()
    }

    /// The first value of `name` (any spelling, compact or long).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).next()
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = canonical_name(name);
        self.list
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(&name))
            .map(|h| h.value.as_str())
    }

    /// Appends a value (the name is canonicalised).
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.list.push(Header {
            name: canonical_name(name),
            value: value.into(),
        });
    }

    /// Inserts a value before every other header (used for a new top Via).
    pub fn push_front(&mut self, name: &str, value: impl Into<String>) {
        self.list.insert(
            0,
            Header {
                name: canonical_name(name),
                value: value.into(),
            },
        );
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        let name = canonical_name(name);
        self.list.retain(|h| !h.name.eq_ignore_ascii_case(&name));
    }

    /// Replaces every value of `name` with one value, kept at the position of
    /// the first old one (or appended).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let canon = canonical_name(name);
        let value = value.into();
        match self
            .list
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(&canon))
        {
            Some(i) => {
                self.list[i].value = value;
                let mut seen = false;
                self.list.retain(|h| {
                    if h.name.eq_ignore_ascii_case(&canon) {
                        let keep = !seen;
                        seen = true;
                        keep
                    } else {
                        true
                    }
                });
            }
            None => self.list.push(Header { name: canon, value }),
        }
    }

    /// Replaces the first value of `name` (no-op when absent).
    pub fn replace_first(&mut self, name: &str, value: impl Into<String>) {
        let canon = canonical_name(name);
        if let Some(h) = self
            .list
            .iter_mut()
            .find(|h| h.name.eq_ignore_ascii_case(&canon))
        {
            h.value = value.into();
        }
    }
}

/// Splits `s` on `sep` outside double quotes (with `\` escapes) and outside
/// `<...>`. Unbalanced quotes or brackets give `None`.
pub fn split_outside(s: &str, sep: u8) -> Option<Vec<&str>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut start, mut i) = (false, false, 0, 0);
    while i < b.len() {
        let c = b[i];
        if quoted {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                quoted = false;
            }
        } else if c == b'"' {
            quoted = true;
        } else if c == b'<' && !angle {
            angle = true;
        } else if c == b'>' && angle {
            angle = false;
        } else if c == sep && !angle {
            out.push(&s[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    if quoted || angle {
        return None;
    }
    out.push(&s[start.min(s.len())..]);
    Some(out)
}

/// `;name[=value]` parameters, in order; names compare case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    list: Vec<(String, Option<String>)>,
}

impl Params {
    /// Parses `;a=b;c` (the leading `;` optional). `None` on an empty or
    /// non-token name, or more than [`MAX_PARAMS`].
    pub fn parse(s: &str) -> Option<Params> {
        let mut list = Vec::new();
        let s = s.trim();
        if s.is_empty() {
            return Some(Params { list });
        }
        let s = s.strip_prefix(';').unwrap_or(s);
        for part in split_outside(s, b';')? {
            if list.len() >= MAX_PARAMS {
                return None;
            }
            let (name, value) = match part.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
                None => (part.trim(), None),
            };
            if !is_token(name) {
                return None;
            }
            list.push((name.to_string(), value));
        }
        Some(Params { list })
    }

    /// `Some(value)` when present: `Some(None)` for a flag like `;lr`.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.list
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The value of `name`, if present with a value.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.get(name).flatten()
    }

    /// True when `name` is present (with or without a value).
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets (or adds) `name`.
    pub fn set(&mut self, name: &str, value: Option<String>) {
        match self
            .list
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(p) => p.1 = value,
            None => self.list.push((name.to_string(), value)),
        }
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) {
        self.list.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// All parameters in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.list.iter().map(|(n, v)| (n.as_str(), v.as_deref()))
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, v) in &self.list {
            match v {
                Some(v) => write!(f, ";{n}={v}")?,
                None => write!(f, ";{n}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_case() {
        assert_eq!(canonical_name("v"), "Via");
        assert_eq!(canonical_name("I"), "Call-ID");
        assert_eq!(canonical_name("cseq"), "CSeq");
        assert_eq!(canonical_name("X-Foo"), "X-Foo");
        let mut h = Headers::new();
        h.push("m", "<sip:a@b>");
        h.push("CONTACT", "<sip:c@d>");
        assert_eq!(h.get_all("contact").count(), 2);
        h.set("Contact", "*");
        assert_eq!(h.get_all("m").collect::<Vec<_>>(), ["*"]);
    }

    #[test]
    fn split_respects_quotes_and_angles() {
        let v = split_outside(r#""a,\"b" <sip:x@y;p=1,2>, <sip:z>"#, b',').unwrap();
        assert_eq!(v.len(), 2);
        assert!(split_outside("\"open", b',').is_none());
    }

    #[test]
    fn params_roundtrip() {
        let p = Params::parse(";branch=z9hG4bK1;rport;received=1.2.3.4").unwrap();
        assert_eq!(p.value("BRANCH"), Some("z9hG4bK1"));
        assert_eq!(p.get("rport"), Some(None));
        assert_eq!(p.to_string(), ";branch=z9hG4bK1;rport;received=1.2.3.4");
        assert!(Params::parse(";=x").is_none());
    }
}
