//! The signer's wire format and what it agrees to sign, sans-IO.
//!
//! A frame is a big-endian `u16` length, then the body. A request body:
//! version (1), kind (1 device, 2 node, 3 relay), the issuing CA's
//! fingerprint (`u8` length), the name (`u8` length), the key's DER
//! SubjectPublicKeyInfo (`u16` length), the lifetime in seconds (`u64`).
//! An answer body: 0 and the certificate (`u16` length, DER), or 1 and why
//! (`u16` length, UTF-8).
//!
//! [`check`] is the whole of the signer's policy: a device or node name by
//! the device id rule, a relay certificate only for the relay's own name,
//! a P-256 key, a lifetime within the configured one. Anything else is
//! refused, so a relay taken over can get certificates only of the kinds it
//! could get anyway, never a CA certificate or a signature over bytes of
//! its choosing.

use thiserror::Error;

/// Largest frame body either way.
pub const MAX_FRAME: usize = 4096;
/// Wire format version.
pub const VERSION: u8 = 1;

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A device's client certificate.
    Device,
    /// A relay cluster node's certificate (client and server).
    Node,
    /// The relay's server certificate.
    Relay,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Device => 1,
            Kind::Node => 2,
            Kind::Relay => 3,
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            1 => Kind::Device,
            2 => Kind::Node,
            3 => Kind::Relay,
            _ => return None,
        })
    }
}

/// A signing request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// What for.
    pub kind: Kind,
    /// The issuing CA the relay expects to sign (`SHA256:` fingerprint).
    pub issuer: &'a str,
    /// Device id, node name or server name.
    pub name: &'a str,
    /// The key, DER SubjectPublicKeyInfo.
    pub spki: &'a [u8],
    /// Seconds from now.
    pub lifetime_s: u64,
}

/// The signer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The certificate, DER.
    Signed(Vec<u8>),
    /// Why not.
    Refused(String),
}

/// A frame that does not parse.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Longer than [`MAX_FRAME`], or a field longer than its limit.
    #[error("signer frame too long")]
    TooLong,
    /// Ends before its fields do, or has bytes after them.
    #[error("signer frame truncated or padded")]
    Length,
    /// Unknown version, kind or status.
    #[error("signer frame of an unknown version, kind or status")]
    Unknown,
    /// A text field is not UTF-8.
    #[error("signer frame text is not UTF-8")]
    Text,
}

/// What the signer is configured to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The relay's server name: the only name of relay certificates.
    pub server_name: String,
    /// Longest device and node certificate.
    pub max_device_s: u64,
    /// Longest relay certificate.
    pub max_relay_s: u64,
}

/// Whether the signer signs `r` (the issuing CA is checked where its files
/// are).
pub fn check(r: &Request<'_>, p: &Policy) -> Result<(), String> {
    let max = match r.kind {
        Kind::Device | Kind::Node => {
            if !crate::pki::name::valid_device_id(r.name) {
                return Err(format!(
                    "`{}` is not a valid device or node name",
                    r.name.escape_debug()
                ));
            }
            p.max_device_s
        }
        Kind::Relay => {
            if r.name != p.server_name {
                return Err(format!(
                    "relay certificates name `{}` only, not `{}`",
                    p.server_name,
                    r.name.escape_debug()
                ));
            }
            p.max_relay_s
        }
    };
    if r.lifetime_s == 0 || r.lifetime_s > max {
        return Err(format!(
            "a lifetime of {} s is outside 1..={max} s",
            r.lifetime_s
        ));
    }
    if !p256_key(r.spki) {
        return Err("the key is not an ECDSA P-256 public key".into());
    }
    Ok(())
}

/// `spki` is a whole DER SubjectPublicKeyInfo of an uncompressed P-256 point.
fn p256_key(spki: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::SubjectPublicKeyInfo;
    let Ok((rest, k)) = SubjectPublicKeyInfo::from_der(spki) else {
        return false;
    };
    let oid = |s: &str| s.parse::<x509_parser::der_parser::Oid<'static>>().ok();
    let curve = k
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    rest.is_empty()
        && Some(&k.algorithm.algorithm) == oid("1.2.840.10045.2.1").as_ref()
        && curve == oid("1.2.840.10045.3.1.7")
        && k.subject_public_key.data.len() == 65
        && k.subject_public_key.data[0] == 4
}

/// Append `r` as one frame to `out`.
pub fn encode_request(r: &Request<'_>, out: &mut Vec<u8>) -> Result<(), FrameError> {
    if r.issuer.len() > 255 || r.name.len() > 255 || r.spki.len() > 1024 {
        return Err(FrameError::TooLong);
    }
    let mut body = Vec::with_capacity(16 + r.issuer.len() + r.name.len() + r.spki.len());
    body.push(VERSION);
    body.push(r.kind.code());
    body.push(r.issuer.len() as u8);
    body.extend_from_slice(r.issuer.as_bytes());
    body.push(r.name.len() as u8);
    body.extend_from_slice(r.name.as_bytes());
    body.extend_from_slice(&(r.spki.len() as u16).to_be_bytes());
    body.extend_from_slice(r.spki);
    body.extend_from_slice(&r.lifetime_s.to_be_bytes());
    frame(&body, out)
}

/// Append `a` as one frame to `out`.
pub fn encode_answer(a: &Answer, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let (status, data) = match a {
        Answer::Signed(der) => (0u8, der.as_slice()),
        Answer::Refused(why) => (1u8, why.as_bytes()),
    };
    if data.len() > MAX_FRAME - 3 {
        return Err(FrameError::TooLong);
    }
    let mut body = Vec::with_capacity(3 + data.len());
    body.push(status);
    body.extend_from_slice(&(data.len() as u16).to_be_bytes());
    body.extend_from_slice(data);
    frame(&body, out)
}

fn frame(body: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLong);
    }
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// The body length a frame's two-byte prefix announces.
pub fn body_len(prefix: [u8; 2]) -> Result<usize, FrameError> {
    let n = usize::from(u16::from_be_bytes(prefix));
    if n > MAX_FRAME {
        return Err(FrameError::TooLong);
    }
    Ok(n)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Length);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<usize, FrameError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn text(&mut self, n: usize) -> Result<&'a str, FrameError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| FrameError::Text)
    }
    fn end(&self) -> Result<(), FrameError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Length)
        }
    }
}

/// Parse a request body (without its prefix).
pub fn decode_request(body: &[u8]) -> Result<Request<'_>, FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLong);
    }
    let mut r = Reader(body);
    if r.u8()? != VERSION {
        return Err(FrameError::Unknown);
    }
    let kind = Kind::from_code(r.u8()?).ok_or(FrameError::Unknown)?;
    let n = usize::from(r.u8()?);
    let issuer = r.text(n)?;
    let n = usize::from(r.u8()?);
    let name = r.text(n)?;
    let n = r.u16()?;
    let spki = r.take(n)?;
    let l = r.take(8)?;
    let lifetime_s = u64::from_be_bytes(l.try_into().map_err(|_| FrameError::Length)?);
    r.end()?;
    Ok(Request {
        kind,
        issuer,
        name,
        spki,
        lifetime_s,
    })
}

/// Parse an answer body (without its prefix).
pub fn decode_answer(body: &[u8]) -> Result<Answer, FrameError> {
    let mut r = Reader(body);
    let status = r.u8()?;
    let n = r.u16()?;
    let data = r.take(n)?;
    r.end()?;
    match status {
        0 => Ok(Answer::Signed(data.to_vec())),
        1 => Ok(Answer::Refused(
            std::str::from_utf8(data)
                .map_err(|_| FrameError::Text)?
                .to_string(),
        )),
        _ => Err(FrameError::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{KeyPair, PublicKeyData as _};

    fn policy() -> Policy {
        Policy {
            server_name: "relay.test".into(),
            max_device_s: 86_400,
            max_relay_s: 3_600,
        }
    }

    #[test]
    fn requests_and_answers_round_trip() {
        let key = KeyPair::generate().unwrap();
        let spki = key.subject_public_key_info();
        let r = Request {
            kind: Kind::Device,
            issuer: "SHA256:ab",
            name: "shop-5",
            spki: &spki,
            lifetime_s: 86_400,
        };
        let mut out = Vec::new();
        encode_request(&r, &mut out).unwrap();
        let n = body_len([out[0], out[1]]).unwrap();
        assert_eq!(n + 2, out.len());
        assert_eq!(decode_request(&out[2..]).unwrap(), r);
        assert_eq!(check(&r, &policy()), Ok(()));
        for a in [Answer::Signed(vec![1, 2, 3]), Answer::Refused("no".into())] {
            let mut out = Vec::new();
            encode_answer(&a, &mut out).unwrap();
            assert_eq!(decode_answer(&out[2..]).unwrap(), a);
        }
        // Every truncation, and a padded body, is an error.
        let body = &out[2..];
        for cut in 0..body.len() {
            assert!(decode_answer(&body[..cut]).is_err());
        }
        let mut req = Vec::new();
        encode_request(&r, &mut req).unwrap();
        for cut in 0..req.len() - 2 {
            assert!(decode_request(&req[2..2 + cut]).is_err(), "{cut}");
        }
        let mut padded = req[2..].to_vec();
        padded.push(0);
        assert_eq!(decode_request(&padded), Err(FrameError::Length));
        assert_eq!(body_len([0xff, 0xff]), Err(FrameError::TooLong));
    }

    #[test]
    fn the_policy_signs_only_what_the_relay_may_have() {
        let key = KeyPair::generate().unwrap();
        let spki = key.subject_public_key_info();
        let ok = Request {
            kind: Kind::Relay,
            issuer: "SHA256:ab",
            name: "relay.test",
            spki: &spki,
            lifetime_s: 3_600,
        };
        assert_eq!(check(&ok, &policy()), Ok(()));
        let refused = [
            Request {
                name: "evil.example",
                ..ok
            },
            Request {
                lifetime_s: 3_601,
                ..ok
            },
            Request {
                lifetime_s: 0,
                ..ok
            },
            Request {
                kind: Kind::Device,
                name: "Not A Device",
                lifetime_s: 60,
                ..ok
            },
            Request {
                kind: Kind::Device,
                name: "shop-5",
                lifetime_s: 86_401,
                ..ok
            },
            Request {
                spki: b"\x30\x00",
                ..ok
            },
        ];
        for r in refused {
            assert!(check(&r, &policy()).is_err(), "{r:?}");
        }
        // Another curve.
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let spki384 = p384.subject_public_key_info();
        let r = Request {
            spki: &spki384,
            ..ok
        };
        assert_eq!(
            check(&r, &policy()),
            Err("the key is not an ECDSA P-256 public key".into())
        );
    }
}
