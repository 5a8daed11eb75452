//! TPM commands voxgate sends and the parsing of their responses: object
//! templates, command encoding through `tpm2-protocol`, and response
//! checks (size, response code, structure) before any field is used.
//! Sans-IO: bytes in, bytes out.

use super::blob::{BlobError, MAX_PRIVATE};
use super::der;
use super::error::TpmError;
use super::transport::MAX_RESPONSE;
use tpm2_protocol::TpmWriter;
use tpm2_protocol::basic::{Tpm2b, TpmBuffer, TpmHandle};
use tpm2_protocol::constant::{MAX_SENSITIVE_DATA, TPM_MAX_COMMAND_SIZE};
use tpm2_protocol::data::{
    Tpm2bDigest, Tpm2bPublic, Tpm2bPublicWire, TpmAlgId, TpmRh, TpmSt, TpmaSession,
    TpmsAuthCommand, TpmsSchemeHash, TpmtPublic, TpmtSigScheme, TpmtTkHashcheck, TpmuSigScheme,
    TpmuSignature,
};
use tpm2_protocol::frame::{
    TpmCreatePrimaryCommand, TpmCreatePrimaryResponse, TpmCreateResponse, TpmFrame, TpmHeader,
    TpmLoadResponse, TpmReadPublicResponse, TpmResponse, TpmSignResponse, TpmUnmarshalBody,
    TpmUnsealResponse, tpm_marshal_command,
};
use zeroize::Zeroizing;

pub use super::templates::{MAX_SEALED, sealed_template, signing_key_template, srk_template};

/// TPM2_CreatePrimary of the storage primary in the owner hierarchy.
pub fn create_primary() -> TpmCreatePrimaryCommand {
    TpmCreatePrimaryCommand {
        handles: [TpmHandle::new(TpmRh::Owner.value())],
        in_public: Tpm2bPublic {
            inner: srk_template(),
        },
        ..Default::default()
    }
}

/// TPM2_Create under `parent`: `template` with the sensitive `data`
/// (empty for a key the TPM generates). Encoded here, not through
/// `TpmCreateCommand`, so the secret is only ever in the caller's slice and
/// the zeroizing command buffer.
#[derive(Clone)]
pub struct Create<'a> {
    /// The parent's handle.
    pub parent: u32,
    /// The object's public template.
    pub template: TpmtPublic,
    /// Sensitive data to seal (empty for a key).
    pub data: &'a [u8],
}

impl std::fmt::Debug for Create<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Create")
            .field("parent", &format_args!("{:#010x}", self.parent))
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl Create<'_> {
    fn sensitive_len(&self) -> usize {
        // TPM2B_SENSITIVE_CREATE: size, userAuth (empty), data.
        2 + 2 + 2 + self.data.len()
    }
    fn public_len(&self) -> usize {
        2 + tpm2_protocol::TpmSized::len(&self.template)
    }
}

impl tpm2_protocol::TpmSized for Create<'_> {
    const SIZE: usize = TPM_MAX_COMMAND_SIZE;
    fn len(&self) -> usize {
        // Handle, sensitive, public, outsideInfo (2), creationPCR (4).
        4 + self.sensitive_len() + self.public_len() + 2 + 4
    }
}

impl tpm2_protocol::frame::TpmMarshalBody for Create<'_> {
    fn marshal_handles(&self, w: &mut TpmWriter) -> tpm2_protocol::TpmResult<()> {
        w.write_bytes(&self.parent.to_be_bytes())
    }
    fn marshal_parameters(&self, w: &mut TpmWriter) -> tpm2_protocol::TpmResult<()> {
        use tpm2_protocol::TpmMarshal;
        let too_large = || tpm2_protocol::TpmError::IntegerTooLarge {
            offset: 0,
            value: self.data.len() as u64,
        };
        let inner = u16::try_from(self.sensitive_len() - 2).map_err(|_| too_large())?;
        let data = u16::try_from(self.data.len()).map_err(|_| too_large())?;
        w.write_bytes(&inner.to_be_bytes())?;
        w.write_bytes(&[0, 0])?;
        w.write_bytes(&data.to_be_bytes())?;
        w.write_bytes(self.data)?;
        Tpm2bPublic {
            inner: self.template.clone(),
        }
        .marshal(w)?;
        w.write_bytes(&[0, 0, 0, 0, 0, 0])
    }
}

impl tpm2_protocol::TpmMarshal for Create<'_> {
    fn marshal(&self, w: &mut TpmWriter) -> tpm2_protocol::TpmResult<()> {
        use tpm2_protocol::frame::TpmMarshalBody;
        self.marshal_handles(w)?;
        self.marshal_parameters(w)
    }
}

impl TpmFrame for Create<'_> {
    fn cc(&self) -> tpm2_protocol::data::TpmCc {
        tpm2_protocol::data::TpmCc::Create
    }
    fn handles(&self) -> usize {
        1
    }
}

/// The empty password session (TPM_RS_PW) that authorizes objects whose
/// auth value is empty.
fn password_session() -> TpmsAuthCommand {
    TpmsAuthCommand {
        session_handle: TpmHandle::new(TpmRh::Pw.value()),
        nonce: Default::default(),
        session_attributes: TpmaSession::CONTINUE_SESSION,
        hmac: Default::default(),
    }
}

/// Encode a command, with `auth` password sessions (one per handle that
/// needs authorization), into a zeroizing buffer.
pub fn encode<C: TpmFrame>(
    command: &'static str,
    cmd: &C,
    auth: usize,
) -> Result<Zeroizing<Vec<u8>>, TpmError> {
    let sessions = [password_session(), password_session()];
    let sessions = sessions.get(..auth).unwrap_or(&sessions);
    let tag = if sessions.is_empty() {
        TpmSt::NoSessions
    } else {
        TpmSt::Sessions
    };
    let mut buf = Zeroizing::new(vec![0u8; TPM_MAX_COMMAND_SIZE]);
    let n = {
        let mut w = TpmWriter::new(&mut buf);
        tpm_marshal_command(cmd, tag, sessions, &mut w).map_err(|e| TpmError::Encode {
            command,
            what: format!("{e:?}"),
        })?;
        w.len()
    };
    buf.truncate(n);
    Ok(buf)
}

fn malformed(command: &'static str, what: impl std::fmt::Display) -> TpmError {
    TpmError::Malformed {
        command,
        what: what.to_string(),
    }
}

/// Check a response frame for command `R` and return its handle and
/// parameter areas. The size field must match the bytes, a non-zero
/// response code becomes [`TpmError::Rc`], and the session area must parse.
pub fn split<'a, R: TpmHeader>(
    command: &'static str,
    resp: &'a [u8],
) -> Result<(&'a [u8], &'a [u8]), TpmError> {
    let Some((head, _)) = resp.split_first_chunk::<10>() else {
        return Err(malformed(
            command,
            format_args!("{} bytes, shorter than a header", resp.len()),
        ));
    };
    if resp.len() > MAX_RESPONSE {
        return Err(TpmError::ResponseTooLarge {
            command,
            len: resp.len(),
            max: MAX_RESPONSE,
        });
    }
    let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
    if size != resp.len() {
        return Err(malformed(
            command,
            format_args!("size field {size}, {} bytes", resp.len()),
        ));
    }
    let rc = u32::from_be_bytes([head[6], head[7], head[8], head[9]]);
    if rc != 0 {
        return Err(TpmError::from_rc(command, rc));
    }
    let view = TpmResponse::cast(resp).map_err(|e| malformed(command, format_args!("{e:?}")))?;
    view.validate(R::CC)
        .map_err(|e| malformed(command, format_args!("{e:?}")))?;
    let body = view.body();
    let (handles, rest) = body
        .split_at_checked(R::HANDLES * 4)
        .ok_or_else(|| malformed(command, "handle area truncated"))?;
    if view.tag().ok() != Some(TpmSt::Sessions) {
        return Ok((handles, rest));
    }
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| malformed(command, "parameter size missing"))?;
    let params = rest
        .get(..u32::from_be_bytes(*len) as usize)
        .ok_or_else(|| malformed(command, "parameter area truncated"))?;
    Ok((handles, params))
}

/// Check a response and unmarshal it whole.
pub fn decode<R: TpmUnmarshalBody>(command: &'static str, resp: &[u8]) -> Result<R, TpmError> {
    let (handles, params) = split::<R>(command, resp)?;
    R::unmarshal_body(handles, params).map_err(|e| malformed(command, format_args!("{e:?}")))
}

/// The object handle from a TPM2_CreatePrimary response.
pub fn parse_create_primary(resp: &[u8]) -> Result<u32, TpmError> {
    let r: TpmCreatePrimaryResponse = decode("TPM2_CreatePrimary", resp)?;
    Ok(r.handles[0].value())
}

/// The object handle from a TPM2_Load response.
pub fn parse_load(resp: &[u8]) -> Result<u32, TpmError> {
    let r: TpmLoadResponse = decode("TPM2_Load", resp)?;
    Ok(r.handles[0].value())
}

/// The public area (TPMT_PUBLIC bytes, exactly as sent) and the private
/// area (TPM2B_PRIVATE contents) from a TPM2_Create response.
pub fn parse_create(resp: &[u8]) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
    const C: &str = "TPM2_Create";
    // Whole-structure check first (creation data, ticket, no trailing bytes).
    let _: TpmCreateResponse = decode(C, resp)?;
    let (_, params) = split::<TpmCreateResponse>(C, resp)?;
    let (private, rest) = Tpm2b::<MAX_PRIVATE>::cast_prefix(params)
        .map_err(|e| malformed(C, format_args!("{e:?}")))?;
    let (public, _) =
        Tpm2bPublicWire::cast_prefix(rest).map_err(|e| malformed(C, format_args!("{e:?}")))?;
    let public = public.as_bytes().get(2..).unwrap_or_default();
    Ok((public.to_vec(), private.data().to_vec()))
}

/// The public area from a TPM2_ReadPublic response, parsed and checked.
pub fn parse_read_public(resp: &[u8]) -> Result<TpmtPublic, TpmError> {
    const C: &str = "TPM2_ReadPublic";
    let _: TpmReadPublicResponse = decode(C, resp)?;
    let (_, params) = split::<TpmReadPublicResponse>(C, resp)?;
    let (public, _) =
        Tpm2bPublicWire::cast_prefix(params).map_err(|e| malformed(C, format_args!("{e:?}")))?;
    let raw = public.as_bytes().get(2..).unwrap_or_default();
    super::public::parse_public(raw).map_err(|e: BlobError| malformed(C, e))
}

/// The DER-encoded ECDSA signature from a TPM2_Sign response.
pub fn parse_sign(resp: &[u8]) -> Result<Vec<u8>, TpmError> {
    const C: &str = "TPM2_Sign";
    let r: TpmSignResponse = decode(C, resp)?;
    let TpmuSignature::Ecdsa(sig) = r.signature.signature else {
        return Err(malformed(C, "not an ECDSA signature"));
    };
    if r.signature.sig_alg != TpmAlgId::Ecdsa || sig.hash != TpmAlgId::Sha256 {
        return Err(malformed(C, "not an ECDSA/SHA-256 signature"));
    }
    der::ecdsa_p256(&sig.signature_r, &sig.signature_s).map_err(|e| TpmError::Signature(e.what()))
}

/// The data from a TPM2_Unseal response, copied only into zeroizing memory.
pub fn parse_unseal(resp: &[u8]) -> Result<Zeroizing<Vec<u8>>, TpmError> {
    const C: &str = "TPM2_Unseal";
    let (_, params) = split::<TpmUnsealResponse>(C, resp)?;
    let (data, rest) = Tpm2b::<MAX_SENSITIVE_DATA>::cast_prefix(params)
        .map_err(|e| malformed(C, format_args!("{e:?}")))?;
    if !rest.is_empty() {
        return Err(malformed(C, "trailing bytes"));
    }
    Ok(Zeroizing::new(data.data().to_vec()))
}

/// The bytes from a TPM2_GetRandom response.
pub fn parse_get_random(resp: &[u8]) -> Result<Vec<u8>, TpmError> {
    let r: tpm2_protocol::frame::TpmGetRandomResponse = decode("TPM2_GetRandom", resp)?;
    Ok(r.random_bytes.to_vec())
}

/// The ECDSA/SHA-256 scheme and the null hash-check ticket that an
/// unrestricted key accepts for an externally computed digest.
pub fn sign_command(key: u32, digest: &[u8; 32]) -> tpm2_protocol::frame::TpmSignCommand {
    tpm2_protocol::frame::TpmSignCommand {
        handles: [TpmHandle::new(key)],
        digest: TpmBuffer::try_from(&digest[..]).unwrap_or_default(),
        in_scheme: TpmtSigScheme {
            scheme: TpmAlgId::Ecdsa,
            details: TpmuSigScheme::Hash(TpmsSchemeHash {
                hash_alg: TpmAlgId::Sha256,
            }),
        },
        validation: TpmtTkHashcheck {
            tag: TpmSt::HashCheck,
            hierarchy: TpmRh::Null,
            digest: Tpm2bDigest::default(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tpm::RcKind;
    use tpm2_protocol::frame::{TpmCommand, TpmCreateCommand};

    /// A TPM2_Sign response with a password-session area: ECDSA/SHA-256,
    /// a 31-byte r and an s with the high bit set.
    fn sign_fixture() -> Vec<u8> {
        let r = [0x42u8; 31];
        let s = [0x80u8; 32];
        let mut params = vec![0x00, 0x18, 0x00, 0x0B, 0x00, 31];
        params.extend_from_slice(&r);
        params.extend_from_slice(&[0x00, 32]);
        params.extend_from_slice(&s);
        let mut body = (params.len() as u32).to_be_bytes().to_vec();
        body.extend_from_slice(&params);
        body.extend_from_slice(&[0, 0, 0x01, 0, 0]); // nonce, attributes, hmac
        let mut resp = vec![0x80, 0x02];
        resp.extend_from_slice(&(10 + body.len() as u32).to_be_bytes());
        resp.extend_from_slice(&[0, 0, 0, 0]);
        resp.extend_from_slice(&body);
        resp
    }

    #[test]
    fn sign_response_fixture() {
        let resp = sign_fixture();
        assert_eq!(resp.len(), 90);
        let der = parse_sign(&resp).unwrap();
        assert_eq!(der, der::ecdsa_p256(&[0x42; 31], &[0x80; 32]).unwrap());
        assert_eq!(&der[..4], &[0x30, 68, 0x02, 31]);
    }

    #[test]
    fn error_and_malformed_responses() {
        let integrity = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0xDF];
        let e = parse_load(&integrity).unwrap_err();
        assert_eq!(e.rc_kind(), Some(RcKind::ForeignObject));
        let mut resp = sign_fixture();
        resp[5] += 1; // size field one more than the bytes
        assert!(matches!(parse_sign(&resp), Err(TpmError::Malformed { .. })));
        let mut resp = sign_fixture();
        resp[15] = 0x14; // RSASSA signature where ECDSA was asked for
        assert!(parse_sign(&resp).is_err());
        let resp = sign_fixture();
        assert!(matches!(
            parse_sign(&resp[..9]),
            Err(TpmError::Malformed { .. })
        ));
        // A different command's response shape.
        assert!(parse_unseal(&resp).is_err());
    }

    #[test]
    fn no_panic_on_damaged_responses() {
        let resp = sign_fixture();
        let parsers: [fn(&[u8]) -> bool; 7] = [
            |b| parse_sign(b).is_ok(),
            |b| parse_create_primary(b).is_ok(),
            |b| parse_load(b).is_ok(),
            |b| parse_create(b).is_ok(),
            |b| parse_read_public(b).is_ok(),
            |b| parse_unseal(b).is_ok(),
            |b| parse_get_random(b).is_ok(),
        ];
        for n in 0..=resp.len() {
            for p in &parsers {
                p(&resp[..n]);
            }
        }
        for i in 0..resp.len() {
            for v in [0x00, 0x01, 0x7F, 0x80, 0xFF] {
                let mut b = resp.clone();
                b[i] = v;
                for p in &parsers {
                    p(&b);
                }
            }
        }
    }

    #[test]
    fn create_command_fixture() {
        let cmd = Create {
            parent: 0x8000_0000,
            template: sealed_template(),
            data: b"abc",
        };
        let bytes = encode("TPM2_Create", &cmd, 1).unwrap();
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &[0x80, 0x02, 0, 0, 0, 58, 0, 0, 0x01, 0x53][..], // header
            &[0x80, 0, 0, 0],                                // parent
            &[0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 0x01, 0, 0],  // TPM_RS_PW
            &[0, 7, 0, 0, 0, 3, b'a', b'b', b'c'],           // sensitive
            &[0, 14, 0, 0x08, 0, 0x0B, 0, 0, 0x04, 0x52],    // KEYEDHASH, SHA256, attrs
            &[0, 0, 0, 0x10, 0, 0],                          // policy, NULL scheme, unique
            &[0, 0, 0, 0, 0, 0],                             // outsideInfo, creationPCR
        ]
        .concat();
        assert_eq!(&bytes[..], &want[..]);
        // tpm2-protocol's own parser reads back what was meant.
        let parsed: TpmCreateCommand = TpmCommand::cast(&bytes).unwrap().unmarshal().unwrap();
        assert_eq!(&parsed.in_sensitive.inner.data[..], b"abc");
        assert!(parsed.in_sensitive.inner.user_auth.is_empty());
        assert_eq!(parsed.in_public.inner, sealed_template());
        assert_eq!(parsed.handles[0].value(), 0x8000_0000);
    }

    #[test]
    fn templates_marshal() {
        for t in [srk_template(), signing_key_template(), sealed_template()] {
            let cmd = Create {
                parent: 0x8000_0000,
                template: t,
                data: &[],
            };
            let bytes = encode("TPM2_Create", &cmd, 1).unwrap();
            TpmCommand::cast(&bytes).unwrap().validate().unwrap();
        }
        let primary = encode("TPM2_CreatePrimary", &create_primary(), 1).unwrap();
        TpmCommand::cast(&primary).unwrap().validate().unwrap();
    }
}
