//! Public areas: parsing them exactly, and checking that they describe
//! what voxgate creates (a P-256 ECDSA/SHA-256 signing key or a sealed
//! keyed-hash object, both fixedTPM and fixedParent).

use super::blob::{BlobError, MAX_PUBLIC, ObjectKind};
use tpm2_protocol::data::{
    TpmAlgId, TpmEccCurve, TpmaObject, TpmtPublic, TpmuAsymScheme, TpmuPublicId, TpmuPublicParms,
};
use tpm2_protocol::{TpmMarshal, TpmUnmarshal, TpmWriter};

/// Parse a TPMT_PUBLIC that must fill `raw` and marshal back to the same
/// bytes (the TPM names the object by the hash of exactly these bytes).
pub(crate) fn parse_public(raw: &[u8]) -> Result<TpmtPublic, BlobError> {
    let (public, rest) =
        TpmtPublic::unmarshal(raw).map_err(|_| BlobError::Public("does not parse"))?;
    if !rest.is_empty() {
        return Err(BlobError::Public("trailing bytes"));
    }
    let mut buf = [0u8; MAX_PUBLIC];
    let mut w = TpmWriter::new(&mut buf);
    public
        .marshal(&mut w)
        .map_err(|_| BlobError::Public("does not marshal"))?;
    if w.as_bytes() != raw {
        return Err(BlobError::Public("not in canonical form"));
    }
    Ok(public)
}

/// Attributes every voxgate object has: the TPM will not let it move.
pub const FIXED: TpmaObject =
    TpmaObject::from_bits_truncate(TpmaObject::FIXED_TPM.bits() | TpmaObject::FIXED_PARENT.bits());

pub(crate) fn check_public(kind: ObjectKind, p: &TpmtPublic) -> Result<(), BlobError> {
    if p.name_alg != TpmAlgId::Sha256 {
        return Err(BlobError::Public("name algorithm is not SHA-256"));
    }
    if !p.object_attributes.contains(FIXED) {
        return Err(BlobError::Public("object is not fixedTPM and fixedParent"));
    }
    match kind {
        ObjectKind::SigningKey => {
            let a = p.object_attributes;
            if !a.contains(TpmaObject::SIGN_ENCRYPT | TpmaObject::SENSITIVE_DATA_ORIGIN)
                || a.contains(TpmaObject::DECRYPT)
                || a.contains(TpmaObject::RESTRICTED)
            {
                return Err(BlobError::Public("not an unrestricted sign-only key"));
            }
            let TpmuPublicParms::Ecc(ecc) = p.parameters else {
                return Err(BlobError::Public("not an ECC key"));
            };
            if ecc.curve_id != TpmEccCurve::NistP256 {
                return Err(BlobError::Public("not on curve P-256"));
            }
            let scheme_ok = ecc.scheme.scheme == TpmAlgId::Ecdsa
                && matches!(ecc.scheme.details, TpmuAsymScheme::Hash(h) if h.hash_alg == TpmAlgId::Sha256);
            if !scheme_ok {
                return Err(BlobError::Public("scheme is not ECDSA with SHA-256"));
            }
            ecc_point(p).map(|_| ())
        }
        ObjectKind::Sealed => {
            if p.object_type != TpmAlgId::KeyedHash
                || p.object_attributes.contains(TpmaObject::SIGN_ENCRYPT)
                || p.object_attributes.contains(TpmaObject::DECRYPT)
            {
                return Err(BlobError::Public("not a sealed data object"));
            }
            Ok(())
        }
    }
}

/// The uncompressed point `04 || X || Y` of a P-256 public area, with X and
/// Y left-padded to 32 bytes.
pub(crate) fn ecc_point(p: &TpmtPublic) -> Result<[u8; 65], BlobError> {
    let TpmuPublicId::Ecc(point) = &p.unique else {
        return Err(BlobError::Public("no ECC point"));
    };
    let (x, y) = (&point.x[..], &point.y[..]);
    if x.is_empty() || y.is_empty() || x.len() > 32 || y.len() > 32 {
        return Err(BlobError::Public(
            "ECC point coordinates are not P-256 sized",
        ));
    }
    let mut out = [0u8; 65];
    out[0] = 4;
    out[33 - x.len()..33].copy_from_slice(x);
    out[65 - y.len()..].copy_from_slice(y);
    Ok(out)
}
