//! Standard Webhooks signatures, sans-IO.
//!
//! A message is signed as `HMAC-SHA256(key, "{id}.{timestamp}.{body}")`,
//! sent as `v1,<base64>` in `webhook-signature`; several signatures (one
//! per secret while a secret rotates) are separated by spaces. The key is
//! the base64-decoded part of a `whsec_` secret. The secret is never
//! formatted: [`WebhookSecret`]'s `Debug` prints `[redacted]` and its bytes
//! are zeroized on drop.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::hmac;
use zeroize::Zeroizing;

/// The prefix of a secret's text form.
pub const PREFIX: &str = "whsec_";
/// Bytes of a secret this relay makes (the spec asks for 24 to 64).
pub const SECRET_LEN: usize = 32;
/// Longest key accepted from a `whsec_` text (bytes).
const MAX_KEY: usize = 64;
/// Longest `webhook-signature` header value [`parse_signatures`] reads.
pub const MAX_HEADER: usize = 4096;

/// One endpoint's signing key.
pub struct WebhookSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

/// A `whsec_` text that is not a usable secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No `whsec_` prefix.
    #[error("a webhook secret starts with `whsec_`")]
    Prefix,
    /// The rest is not base64.
    #[error("the part after `whsec_` is not base64")]
    Base64,
    /// Too short or too long.
    #[error("a webhook secret holds 24 to 64 bytes")]
    Length,
    /// The system's random generator failed.
    #[error("the system random generator failed")]
    Random,
}

impl WebhookSecret {
    /// A fresh random secret.
    pub fn generate() -> Result<Self, SecretError> {
        use ring::rand::SecureRandom;
        let mut raw = Zeroizing::new(vec![0u8; SECRET_LEN]);
        ring::rand::SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| SecretError::Random)?;
        Ok(WebhookSecret(raw))
    }

    /// A secret from its key bytes (24 to 64).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        if !(24..=MAX_KEY).contains(&bytes.len()) {
            return Err(SecretError::Length);
        }
        Ok(WebhookSecret(Zeroizing::new(bytes.to_vec())))
    }

    /// Parse `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let b64 = text.strip_prefix(PREFIX).ok_or(SecretError::Prefix)?;
        if b64.len() > MAX_KEY * 2 {
            return Err(SecretError::Length);
        }
        let raw = Zeroizing::new(B64.decode(b64).map_err(|_| SecretError::Base64)?);
        Self::from_bytes(&raw)
    }

    /// The text form, `whsec_<base64>`: shown to the operator once.
    pub fn reveal(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{PREFIX}{}", B64.encode(&*self.0)))
    }

    /// The key bytes (for sealing).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The raw signature of one message.
    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> hmac::Tag {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        ctx.sign()
    }

    /// `v1,<base64>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", B64.encode(self.mac(id, timestamp, body).as_ref()))
    }

    /// Whether one of `header`'s `v1` signatures is this secret's over the
    /// message (constant-time per comparison).
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let mut msg = Vec::with_capacity(id.len() + body.len() + 24);
        msg.extend_from_slice(id.as_bytes());
        msg.push(b'.');
        msg.extend_from_slice(timestamp.to_string().as_bytes());
        msg.push(b'.');
        msg.extend_from_slice(body);
        parse_signatures(header)
            .into_iter()
            .any(|sig| hmac::verify(&key, &msg, &sig).is_ok())
    }
}

/// The `webhook-signature` value for a message under every secret given:
/// one `v1,` entry per secret, space-separated (the current secret first).
pub fn signature_header(
    secrets: &[WebhookSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The decoded `v1` signatures of a `webhook-signature` value; other
/// versions, malformed entries and anything past [`MAX_HEADER`] bytes
/// are skipped (never a panic).
pub fn parse_signatures(header: &str) -> Vec<Vec<u8>> {
    let end = header.len().min(MAX_HEADER);
    let header = header.get(..end).unwrap_or("");
    header
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter(|b64| b64.len() <= 88)
        .filter_map(|b64| B64.decode(b64).ok())
        .filter(|sig| sig.len() == 32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks reference libraries' test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_spec_test_vector() {
        let s = WebhookSecret::parse(SECRET).unwrap();
        assert_eq!(s.sign(ID, TS, BODY), SIG);
        assert!(s.verify(ID, TS, BODY, SIG));
        assert!(!s.verify(ID, TS + 1, BODY, SIG));
        assert!(!s.verify("msg_other", TS, BODY, SIG));
        assert!(!s.verify(ID, TS, b"{}", SIG));
        assert_eq!(s.reveal().as_str(), SECRET);
    }

    #[test]
    fn rotation_sends_one_signature_per_secret() {
        let old = WebhookSecret::parse(SECRET).unwrap();
        let new = WebhookSecret::generate().unwrap();
        let header = signature_header(&[new, old], ID, TS, BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1], SIG);
        assert!(
            WebhookSecret::parse(SECRET)
                .unwrap()
                .verify(ID, TS, BODY, &header)
        );
        assert_eq!(parse_signatures(&header).len(), 2);
    }

    #[test]
    fn bad_secrets_and_headers_are_refused_without_panic() {
        assert_eq!(
            WebhookSecret::parse("MfKQ").unwrap_err(),
            SecretError::Prefix
        );
        assert_eq!(
            WebhookSecret::parse("whsec_!!").unwrap_err(),
            SecretError::Base64
        );
        assert_eq!(
            WebhookSecret::parse("whsec_AAAA").unwrap_err(),
            SecretError::Length
        );
        for h in [
            "",
            "v1,",
            "v1,!!!",
            "v2,abc",
            " v1,AAAA ",
            "v1,,",
            "\u{e9}v1",
        ] {
            assert!(parse_signatures(h).is_empty(), "{h}");
        }
        assert!(!format!("{:?}", WebhookSecret::parse(SECRET).unwrap()).contains("MfKQ"));
    }
}
