//! Root rotation, as a device sees it: which fleet roots it trusts, and
//! whether a new root the relay announces may join them.
//!
//! A new root is taken only with a cross certificate: the new root's name
//! and key, signed by a root the device already trusts. So the relay (or
//! anyone who took it over) cannot hand a device a root of its own; only
//! the holder of a trusted root's key can. Once every device has the new
//! root, the relay says so (`only`) and the older roots are dropped.
//!
//! Sans-IO: DER in, the new bundle out; the caller stores it and swaps its
//! TLS verifier.

use rustls::pki_types::CertificateDer;
use thiserror::Error;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why an announced root was not taken.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RootError {
    /// The root or cross certificate does not parse.
    #[error("the announced {0} certificate does not parse")]
    Unreadable(&'static str),
    /// The root is not a self-signed CA certificate whose signature holds.
    #[error("the announced root is not a self-signed CA certificate")]
    NotRoot,
    /// A certificate is outside its validity period.
    #[error("the announced {0} certificate is not valid now")]
    NotValidNow(&'static str),
    /// No cross certificate came with a root the device does not know.
    #[error("a new root came without a cross certificate from a root this device trusts")]
    NoCross,
    /// The cross certificate is not for the announced root's name and key.
    #[error("the cross certificate is not for the announced root's name and key")]
    CrossMismatch,
    /// No trusted root signed the cross certificate.
    #[error("the cross certificate is not signed by a root this device trusts")]
    Untrusted,
    /// `only` named a root the device does not hold.
    #[error(
        "the relay says to keep only a root this device never took; re-enroll it with `voxgate setup`"
    )]
    UnknownOnly,
}

/// What the relay announced (base64 decoded by the caller).
#[derive(Debug, Clone, Copy)]
pub struct Announcement<'a> {
    /// The new root, DER.
    pub root: &'a [u8],
    /// Its cross certificate (the new root's name and key signed by an
    /// older root), DER; may be empty once `only` is set.
    pub cross: &'a [u8],
    /// Every device has the new root: drop the others.
    pub only: bool,
}

/// The roots to trust after `a`, newest first, or `None` when `held`
/// already says it all.
pub fn adopt(
    held: &[CertificateDer<'static>],
    a: Announcement<'_>,
    now_unix: i64,
) -> Result<Option<Vec<CertificateDer<'static>>>, RootError> {
    let (_, root) = X509Certificate::from_der(a.root).map_err(|_| RootError::Unreadable("root"))?;
    let self_signed = root.subject().as_raw() == root.issuer().as_raw()
        && root.verify_signature(None).is_ok()
        && root.is_ca();
    if !self_signed {
        return Err(RootError::NotRoot);
    }
    if !valid_at(&root, now_unix) {
        return Err(RootError::NotValidNow("root"));
    }
    let known = held.iter().any(|h| h.as_ref() == a.root);
    if !known {
        if a.cross.is_empty() {
            return Err(if a.only {
                RootError::UnknownOnly
            } else {
                RootError::NoCross
            });
        }
        let (_, cross) =
            X509Certificate::from_der(a.cross).map_err(|_| RootError::Unreadable("cross"))?;
        if cross.subject().as_raw() != root.subject().as_raw()
            || cross.public_key().raw != root.public_key().raw
            || !cross.is_ca()
        {
            return Err(RootError::CrossMismatch);
        }
        if !valid_at(&cross, now_unix) {
            return Err(RootError::NotValidNow("cross"));
        }
        let signed_by_held = held.iter().any(|h| {
            X509Certificate::from_der(h).is_ok_and(|(_, anchor)| {
                anchor.subject().as_raw() == cross.issuer().as_raw()
                    && cross.verify_signature(Some(anchor.public_key())).is_ok()
            })
        });
        if !signed_by_held {
            return Err(RootError::Untrusted);
        }
    }
    let root_der = CertificateDer::from(a.root.to_vec());
    let next: Vec<CertificateDer<'static>> = if a.only {
        vec![root_der]
    } else if known {
        return Ok(None);
    } else {
        std::iter::once(root_der)
            .chain(held.iter().cloned())
            .collect()
    };
    Ok((next.as_slice() != held).then_some(next))
}

fn valid_at(c: &X509Certificate<'_>, now_unix: i64) -> bool {
    let v = c.validity();
    v.not_before.timestamp() <= now_unix && now_unix <= v.not_after.timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };

    fn params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p
    }

    struct Root {
        der: CertificateDer<'static>,
        params: CertificateParams,
        key: KeyPair,
    }

    fn root(cn: &str) -> Root {
        let key = KeyPair::generate().unwrap();
        let params = params(cn);
        let der = params.self_signed(&key).unwrap().der().clone();
        Root { der, params, key }
    }

    /// `new`'s name and key, signed by `by`.
    fn cross(new: &Root, by: &Root) -> Vec<u8> {
        let issuer = Issuer::from_params(&by.params, &by.key);
        new.params
            .signed_by(&new.key, &issuer)
            .unwrap()
            .der()
            .to_vec()
    }

    const NOW: i64 = 1_800_000_000;

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn a_cross_signed_root_joins_then_stands_alone() {
        let (r1, r2) = (root("root 1"), root("root 2"));
        let held = vec![r1.der.clone()];
        let x = cross(&r2, &r1);
        let a = Announcement {
            root: &r2.der,
            cross: &x,
            only: false,
        };
        let next = adopt(&held, a, now()).unwrap().unwrap();
        assert_eq!(next, vec![r2.der.clone(), r1.der.clone()]);
        // Announced again: nothing to do.
        assert_eq!(adopt(&next, a, now()).unwrap(), None);
        // The overlap ends.
        let only = Announcement {
            root: &r2.der,
            cross: &[],
            only: true,
        };
        let last = adopt(&next, only, now()).unwrap().unwrap();
        assert_eq!(last, vec![r2.der.clone()]);
        assert_eq!(adopt(&last, only, now()).unwrap(), None);
    }

    #[test]
    fn a_root_without_a_trusted_signature_is_refused() {
        let (r1, r2, evil) = (root("root 1"), root("root 2"), root("root 1"));
        let held = vec![r1.der.clone()];
        // No cross at all.
        let bare = Announcement {
            root: &r2.der,
            cross: &[],
            only: false,
        };
        assert_eq!(adopt(&held, bare, now()), Err(RootError::NoCross));
        // `only` for a root never taken drops nothing.
        let only = Announcement { only: true, ..bare };
        assert_eq!(adopt(&held, only, now()), Err(RootError::UnknownOnly));
        // Cross-signed by a key of the same name that the device does not
        // trust (a relay that made its own "root 1").
        let forged = cross(&r2, &evil);
        let a = Announcement {
            root: &r2.der,
            cross: &forged,
            only: false,
        };
        assert_eq!(adopt(&held, a, now()), Err(RootError::Untrusted));
        // A genuine cross for another root.
        let r3 = root("root 3");
        let other = cross(&r3, &r1);
        let a = Announcement {
            root: &r2.der,
            cross: &other,
            only: false,
        };
        assert_eq!(adopt(&held, a, now()), Err(RootError::CrossMismatch));
        // Garbage.
        let a = Announcement {
            root: b"not a certificate",
            cross: &[],
            only: false,
        };
        assert_eq!(adopt(&held, a, now()), Err(RootError::Unreadable("root")));
        let a = Announcement {
            root: &r2.der,
            cross: b"\x30\x03junk",
            only: false,
        };
        assert_eq!(adopt(&held, a, now()), Err(RootError::Unreadable("cross")));
    }

    #[test]
    fn an_intermediate_is_not_a_root() {
        let r1 = root("root 1");
        let sub = root("issuing");
        let signed = cross(&sub, &r1);
        let a = Announcement {
            root: &signed,
            cross: &signed,
            only: false,
        };
        assert_eq!(
            adopt(std::slice::from_ref(&r1.der), a, now()),
            Err(RootError::NotRoot)
        );
    }

    #[test]
    fn an_expired_root_or_cross_is_refused() {
        let (r1, mut r2) = (root("root 1"), root("root 2"));
        let held = vec![r1.der.clone()];
        r2.params.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 100).unwrap();
        r2.params.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 100).unwrap();
        let der = r2.params.self_signed(&r2.key).unwrap().der().clone();
        // The cross certificate ends sooner: at the overlap's end.
        let mut short = Root {
            der: der.clone(),
            params: r2.params.clone(),
            key: KeyPair::generate().unwrap(),
        };
        short.params.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 50).unwrap();
        short.key = r2.key;
        let x = cross(&short, &r1);
        let a = Announcement {
            root: &der,
            cross: &x,
            only: false,
        };
        assert!(adopt(&held, a, NOW).unwrap().is_some());
        assert_eq!(
            adopt(&held, a, NOW + 60),
            Err(RootError::NotValidNow("cross"))
        );
        assert_eq!(
            adopt(&held, a, NOW + 101),
            Err(RootError::NotValidNow("root"))
        );
    }
}
