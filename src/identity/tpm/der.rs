//! ECDSA P-256 signatures from TPM form (r and s as variable-length
//! big-endian integers) to the DER `Ecdsa-Sig-Value` that TLS and X.509
//! carry: `SEQUENCE { INTEGER r, INTEGER s }`.

/// Why a TPM signature cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerError {
    /// r or s is zero (not a valid ECDSA signature).
    Zero,
    /// r or s has more than 32 significant bytes (not a P-256 signature).
    TooLong,
}

impl DerError {
    pub(crate) fn what(self) -> &'static str {
        match self {
            DerError::Zero => "r or s is zero",
            DerError::TooLong => "r or s is longer than 32 bytes",
        }
    }
}

/// Left-pad a big-endian integer to 32 bytes; leading zero bytes beyond 32
/// are accepted (some TPMs send them), more significant bytes are not.
pub fn pad32(v: &[u8]) -> Result<[u8; 32], DerError> {
    let first = v.iter().position(|&b| b != 0).ok_or(DerError::Zero)?;
    let v = &v[first..];
    if v.len() > 32 {
        return Err(DerError::TooLong);
    }
    let mut out = [0u8; 32];
    out[32 - v.len()..].copy_from_slice(v);
    Ok(out)
}

/// Append a DER INTEGER holding the unsigned big-endian `v` (32 bytes):
/// leading zeros are dropped, and one zero is put back when the high bit
/// is set so that the value stays positive.
fn integer(out: &mut Vec<u8>, v: &[u8; 32]) {
    let first = v.iter().position(|&b| b != 0).unwrap_or(31);
    let v = &v[first..];
    let pad = v[0] & 0x80 != 0;
    out.push(0x02);
    // At most 33 bytes: the short length form applies.
    out.push((v.len() + usize::from(pad)) as u8);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(v);
}

/// DER-encode a P-256 ECDSA signature from the TPM's r and s.
pub fn ecdsa_p256(r: &[u8], s: &[u8]) -> Result<Vec<u8>, DerError> {
    let (r, s) = (pad32(r)?, pad32(s)?);
    let mut body = Vec::with_capacity(70);
    integer(&mut body, &r);
    integer(&mut body, &s);
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push(0x30);
    // At most 2 * 35 = 70 bytes: the short length form applies.
    out.push(body.len() as u8);
    out.extend_from_slice(&body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_bit_gets_a_leading_zero() {
        let r = [0x80u8; 32];
        let s = [0x01u8; 32];
        let der = ecdsa_p256(&r, &s).unwrap();
        let mut want = vec![0x30, 2 + 33 + 2 + 32, 0x02, 33, 0x00];
        want.extend_from_slice(&r);
        want.extend_from_slice(&[0x02, 32]);
        want.extend_from_slice(&s);
        assert_eq!(der, want);
    }

    #[test]
    fn short_r_is_padded_then_minimal() {
        // A TPM returning a 31-byte r (its top byte was zero).
        let r = [0x7Fu8; 31];
        let der = ecdsa_p256(&r, &[0xFF; 32]).unwrap();
        assert_eq!(&der[..4], &[0x30, 2 + 31 + 2 + 33, 0x02, 31]);
        assert_eq!(&der[4..35], &r);
        assert_eq!(&der[35..38], &[0x02, 33, 0x00]);
        assert_eq!(der.len(), 2 + 33 + 35);
    }

    #[test]
    fn leading_zeros_in_value_are_stripped() {
        // r = 0x00 0x00 0x01 ... (30 significant bytes), s = 1.
        let mut r = [0u8; 32];
        r[2] = 1;
        let der = ecdsa_p256(&r, &[1]).unwrap();
        assert_eq!(&der[..4], &[0x30, 2 + 30 + 3, 0x02, 30]);
        assert_eq!(der[4], 1);
        assert_eq!(&der[34..], &[0x02, 1, 1]);
        // A high bit after stripping still gets its zero.
        let der = ecdsa_p256(&[0, 0, 0x80], &[0x80]).unwrap();
        assert_eq!(der, vec![0x30, 8, 0x02, 2, 0, 0x80, 0x02, 2, 0, 0x80]);
    }

    #[test]
    fn zero_and_oversize_are_refused() {
        assert_eq!(ecdsa_p256(&[], &[1]), Err(DerError::Zero));
        assert_eq!(ecdsa_p256(&[1], &[0, 0]), Err(DerError::Zero));
        assert_eq!(ecdsa_p256(&[1; 33], &[1]), Err(DerError::TooLong));
        // 33 bytes with a leading zero is a 32-byte value.
        let mut r = vec![0u8];
        r.extend_from_slice(&[0x90; 32]);
        assert!(ecdsa_p256(&r, &[1]).is_ok());
    }

    #[test]
    fn ring_accepts_our_encoding() {
        use ring::rand::SystemRandom;
        use ring::signature::{
            ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
            UnparsedPublicKey,
        };
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let pk = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, kp.public_key().as_ref().to_vec());
        // Enough signatures that some r or s have the high bit set or a
        // zero top byte.
        for i in 0..64u32 {
            let msg = i.to_be_bytes();
            let fixed = kp.sign(&rng, &msg).unwrap();
            let (r, s) = fixed.as_ref().split_at(32);
            // Strip leading zeros as a TPM would.
            let strip = |v: &[u8]| v[v.iter().position(|&b| b != 0).unwrap()..].to_vec();
            let der = ecdsa_p256(&strip(r), &strip(s)).unwrap();
            pk.verify(&msg, &der).unwrap();
        }
    }
}
