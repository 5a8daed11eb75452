#![no_main]
//! TPM response parsing: the simulator framing, every response parser the
//! TPM backend uses, the key/sealed blob files and the DER signature
//! encoder, on arbitrary bytes. None may panic; blobs that parse must
//! serialize back to the same bytes.
use libfuzzer_sys::fuzz_target;
use voxgate::identity::tpm::{KeyBlob, SealedBlob, commands, der, transport};

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = transport::read_sim_reply(&mut &data[..], "fuzz", transport::MAX_RESPONSE) {
        assert!(resp.len() <= transport::MAX_RESPONSE);
    }
    let _ = commands::parse_create_primary(data);
    let _ = commands::parse_load(data);
    let _ = commands::parse_create(data);
    let _ = commands::parse_read_public(data);
    let _ = commands::parse_get_random(data);
    if let Ok(sig) = commands::parse_sign(data) {
        assert!(sig.len() <= 72 && sig[0] == 0x30);
    }
    if let Ok(out) = commands::parse_unseal(data) {
        assert!(out.len() <= data.len());
    }
    if let Ok(k) = KeyBlob::from_bytes(data) {
        assert_eq!(k.to_bytes(), data);
        assert_eq!(k.public_key()[0], 4);
    }
    if let Ok(s) = SealedBlob::from_bytes(data) {
        assert_eq!(s.to_bytes(), data);
    }
    let (r, s) = data.split_at(data.len() / 2);
    if let Ok(sig) = der::ecdsa_p256(r, s) {
        assert!(sig.len() <= 72);
    }
});
