//! Object templates: the storage primary (TCG SRK template, ECC P-256),
//! the device signing key and the sealed-data object. A template is the
//! public area the TPM fills in; the primary's is deterministic, so the
//! same template under the same owner seed always gives the same key.

use tpm2_protocol::basic::{TpmBuffer, TpmUint16};
use tpm2_protocol::data::{
    Tpm2bDigest, TpmAlgId, TpmEccCurve, TpmaObject, TpmsEccParms, TpmsEccPoint, TpmsKeyedhashParms,
    TpmsSchemeHash, TpmtEccScheme, TpmtPublic, TpmtSymDef, TpmuAsymScheme, TpmuPublicId,
    TpmuPublicParms, TpmuSymKeyBits, TpmuSymMode,
};

/// The most a sealed object holds (TCG: MAX_SYM_DATA).
pub const MAX_SEALED: usize = 128;

fn attrs(list: &[TpmaObject]) -> TpmaObject {
    list.iter().fold(TpmaObject::empty(), |a, &b| a | b)
}

/// The storage primary: the TCG "SRK" template for ECC P-256 (restricted
/// decryption key, AES-128-CFB, zeroed 32-byte unique). Deterministic: the
/// same template under the same owner seed gives the same key.
pub fn srk_template() -> TpmtPublic {
    let zero = TpmBuffer::try_from(&[0u8; 32][..]).unwrap_or_default();
    TpmtPublic {
        object_type: TpmAlgId::Ecc,
        name_alg: TpmAlgId::Sha256,
        object_attributes: attrs(&[
            TpmaObject::FIXED_TPM,
            TpmaObject::FIXED_PARENT,
            TpmaObject::SENSITIVE_DATA_ORIGIN,
            TpmaObject::USER_WITH_AUTH,
            TpmaObject::NO_DA,
            TpmaObject::RESTRICTED,
            TpmaObject::DECRYPT,
        ]),
        auth_policy: Tpm2bDigest::default(),
        parameters: TpmuPublicParms::Ecc(TpmsEccParms {
            symmetric: TpmtSymDef {
                algorithm: TpmAlgId::Aes,
                key_bits: TpmuSymKeyBits::Aes(TpmUint16::new(128)),
                mode: TpmuSymMode::Aes(TpmAlgId::Cfb),
            },
            scheme: TpmtEccScheme::default(),
            curve_id: TpmEccCurve::NistP256,
            kdf: Default::default(),
        }),
        unique: TpmuPublicId::Ecc(TpmsEccPoint { x: zero, y: zero }),
    }
}

/// The device key: unrestricted ECDSA P-256 / SHA-256, sign only, created
/// inside the TPM (sensitiveDataOrigin), bound to this TPM and parent
/// (fixedTPM, fixedParent), empty auth (userWithAuth, noDA).
pub fn signing_key_template() -> TpmtPublic {
    TpmtPublic {
        object_type: TpmAlgId::Ecc,
        name_alg: TpmAlgId::Sha256,
        object_attributes: attrs(&[
            TpmaObject::FIXED_TPM,
            TpmaObject::FIXED_PARENT,
            TpmaObject::SENSITIVE_DATA_ORIGIN,
            TpmaObject::USER_WITH_AUTH,
            TpmaObject::NO_DA,
            TpmaObject::SIGN_ENCRYPT,
        ]),
        auth_policy: Tpm2bDigest::default(),
        parameters: TpmuPublicParms::Ecc(TpmsEccParms {
            symmetric: TpmtSymDef::default(),
            scheme: TpmtEccScheme {
                scheme: TpmAlgId::Ecdsa,
                details: TpmuAsymScheme::Hash(TpmsSchemeHash {
                    hash_alg: TpmAlgId::Sha256,
                }),
            },
            curve_id: TpmEccCurve::NistP256,
            kdf: Default::default(),
        }),
        unique: TpmuPublicId::Ecc(TpmsEccPoint::default()),
    }
}

/// A sealed data object: keyed-hash with no scheme, bound to this TPM and
/// parent, empty auth.
pub fn sealed_template() -> TpmtPublic {
    TpmtPublic {
        object_type: TpmAlgId::KeyedHash,
        name_alg: TpmAlgId::Sha256,
        object_attributes: attrs(&[
            TpmaObject::FIXED_TPM,
            TpmaObject::FIXED_PARENT,
            TpmaObject::USER_WITH_AUTH,
            TpmaObject::NO_DA,
        ]),
        auth_policy: Tpm2bDigest::default(),
        parameters: TpmuPublicParms::KeyedHash(TpmsKeyedhashParms::default()),
        unique: TpmuPublicId::KeyedHash(Tpm2bDigest::default()),
    }
}
