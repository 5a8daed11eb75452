//! `voxgate keys status`: what a technician needs to know about this box's
//! identity, and nothing secret: the backend, the device id, the
//! certificate's serial and validity (with the time left), the last renewal
//! (the record `voxgate setup` leaves in the state directory), and whether
//! the TPM answers and still holds the key.
//!
//! Exits non-zero when the device is not enrolled, its certificate has
//! expired, or its key cannot be used.

use super::backend::{self, KeyFileKind};
use super::keys::RENEWAL_FILE;
use super::setup::probe_tpm;
use super::tpm::{KeyBlob, TpmKey};
use super::{IdentityBackend, IdentityConfig};
use anyhow::{Context, Result, bail};
use std::path::Path;

/// The message for a box whose config file is missing.
pub fn not_enrolled(config: &Path) -> String {
    format!(
        "not enrolled: {} does not exist; enroll this device with `voxgate setup --relay HOST:PORT --ca-fingerprint SHA256:... --device-id ID --token-file FILE`",
        config.display()
    )
}

/// Print the status of `device_id`'s identity `id`, read from the config
/// file `config`.
pub fn run(config: &Path, device_id: &str, id: &IdentityConfig) -> Result<()> {
    if !id.cert.exists() {
        bail!(
            "not enrolled: no device certificate at {} (key `identity.cert` of {}); enroll this device with `voxgate setup`",
            id.cert.display(),
            config.display()
        );
    }
    let mut problems = Vec::new();
    println!("device:        {}", device_id);

    // Which backend holds the key, and where.
    let file_kind = match id.backend {
        IdentityBackend::Tpm | IdentityBackend::Auto | IdentityBackend::SealedFile => {
            match std::fs::read(&id.key) {
                Ok(b) => backend::key_file_kind(&b).map(|k| (k, b)),
                Err(e) => {
                    problems.push(format!(
                        "cannot read the key file {}: {e}; if it is lost, re-enroll this device (`voxgate setup` with a new token)",
                        id.key.display()
                    ));
                    None
                }
            }
        }
        _ => None,
    };
    let effective = match (id.backend, &file_kind) {
        (IdentityBackend::Auto, Some((KeyFileKind::TpmBlob, _))) => "auto: tpm".to_string(),
        (IdentityBackend::Auto, Some((KeyFileKind::Sealed, _))) => "auto: sealed-file".into(),
        (b, _) => b.to_string(),
    };
    println!("backend:       {effective}");
    match id.backend {
        IdentityBackend::SystemdCreds => {
            let where_ = match backend::credential_path(&id.credential) {
                Ok(p) if p.exists() => format!("{} (present)", p.display()),
                Ok(p) => {
                    problems.push(format!("the credential {} is missing", p.display()));
                    format!("{} (MISSING)", p.display())
                }
                Err(_) => "delivered by systemd when the service starts (CREDENTIALS_DIRECTORY is not set here)".into(),
            };
            println!(
                "key:           systemd credential `{}`: {where_}",
                id.credential
            );
        }
        _ => println!("key:           {}", id.key.display()),
    }

    // A software key: does it open here and match the certificate?
    let software = match (id.backend, &file_kind) {
        (IdentityBackend::SealedFile | IdentityBackend::DevFile, _)
        | (IdentityBackend::Auto, Some((KeyFileKind::Sealed, _))) => true,
        (IdentityBackend::SystemdCreds, _) => backend::credential_path(&id.credential).is_ok(),
        _ => false,
    };
    if software {
        match backend::load(device_id, id) {
            Ok(_) => println!("key usable:    yes (opens here and matches the certificate)"),
            Err(e) => {
                println!("key usable:    NO");
                problems.push(e.to_string());
            }
        }
    }

    // The certificate.
    let chain = crate::pki::files::read_certs(&id.cert)?;
    let (_, x) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|_| anyhow::anyhow!("{}: not a readable certificate", id.cert.display()))?;
    let serial = x
        .tbs_certificate
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let not_before = x.validity().not_before.timestamp();
    let not_after = x.validity().not_after.timestamp();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    println!("certificate:   {}", id.cert.display());
    println!("  serial:      {serial}");
    println!("  not before:  {}", when(not_before));
    let left = not_after - now;
    if left > 0 {
        let issued = super::renew::issued_at(&id.cert, not_before, not_after);
        let renew_at = super::renew::due_at(issued, not_after);
        println!("  not after:   {} ({} left)", when(not_after), span(left));
        if id.backend == IdentityBackend::DevFile {
            println!("  renewal:     none (development certificates are not renewed)");
        } else {
            println!(
                "  renewal due: {} (two thirds of the lifetime; `voxgate run` renews over its connection)",
                when(renew_at)
            );
        }
    } else {
        println!(
            "  not after:   {} (EXPIRED {} ago)",
            when(not_after),
            span(-left)
        );
        problems.push(
            "the certificate has expired: re-enroll this device (`voxgate setup` with a new token)"
                .into(),
        );
    }

    // The renewal record beside the certificate.
    let record = id
        .cert
        .parent()
        .map(|d| d.join(RENEWAL_FILE))
        .and_then(|p| std::fs::read_to_string(p).ok());
    match record.as_deref().and_then(parse_record) {
        Some((t, event)) => println!("last renewal:  {} ({event})", when(t)),
        None => println!("last renewal:  none recorded (no {RENEWAL_FILE} beside the certificate)"),
    }

    // The TPM.
    let uses_tpm = matches!(
        (id.backend, &file_kind),
        (IdentityBackend::Tpm, _) | (IdentityBackend::Auto, Some((KeyFileKind::TpmBlob, _)))
    );
    let tpm_line = match probe_tpm(&id.tpm) {
        Err(e) if uses_tpm => {
            problems.push(format!(
                "the TPM at {} does not answer, so the key cannot sign: {e}",
                id.tpm
            ));
            format!("{}: UNREACHABLE ({e})", id.tpm)
        }
        Err(e) => format!("{}: not reachable ({e}); not used by this backend", id.tpm),
        Ok(tpm) if uses_tpm => match file_kind.as_ref().map(|(_, b)| KeyBlob::from_bytes(b)) {
            Some(Ok(blob)) => {
                let key = TpmKey::new(tpm, blob);
                match backend::verify_tpm_key(&key) {
                    Ok(()) => format!("{}: reachable; holds the device key", id.tpm),
                    Err(e) => {
                        problems.push(e.to_string());
                        format!("{}: reachable, but the key does not load", id.tpm)
                    }
                }
            }
            Some(Err(e)) => {
                problems.push(format!("{}: {e}", id.key.display()));
                format!("{}: reachable; the key blob is damaged", id.tpm)
            }
            None => format!("{}: reachable", id.tpm),
        },
        Ok(_) => format!("{}: reachable; not used by this backend", id.tpm),
    };
    println!("TPM:           {tpm_line}");

    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        eprintln!("problem: {p}");
    }
    Err(anyhow::anyhow!("{}", problems.join("; "))).context("the device identity is not usable")
}

/// Whether the device key is held by the TPM: the `tpm` backend, or
/// `auto` whose key file is a TPM blob (`voxgate check`'s `tpm` check
/// fails only then).
pub fn key_in_tpm(id: &IdentityConfig) -> bool {
    match id.backend {
        IdentityBackend::Tpm => true,
        IdentityBackend::Auto => std::fs::read(&id.key)
            .ok()
            .and_then(|b| backend::key_file_kind(&b))
            .is_some_and(|k| k == KeyFileKind::TpmBlob),
        _ => false,
    }
}

/// The device certificate's validity, `(not_before, not_after)` in Unix
/// seconds, and the time its renewal is due (two thirds of its lifetime).
pub fn cert_validity(cert: &Path) -> Result<(i64, i64, i64)> {
    let chain = crate::pki::files::read_certs(cert)?;
    let first = chain
        .first()
        .with_context(|| format!("{}: no certificate in the file", cert.display()))?;
    let (_, x) = x509_parser::parse_x509_certificate(first)
        .map_err(|_| anyhow::anyhow!("{}: not a readable certificate", cert.display()))?;
    let not_before = x.validity().not_before.timestamp();
    let not_after = x.validity().not_after.timestamp();
    let issued = super::renew::issued_at(cert, not_before, not_after);
    Ok((
        not_before,
        not_after,
        super::renew::due_at(issued, not_after),
    ))
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn when(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|x| {
            format!(
                "{} {:02}:{:02}:{:02} UTC",
                x.date(),
                x.hour(),
                x.minute(),
                x.second()
            )
        })
        .unwrap_or_else(|_| t.to_string())
}

/// A duration in seconds as `3 d 4 h`, `2 h 5 min` or `7 min`.
pub fn span(s: i64) -> String {
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3_600, (s % 3_600) / 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else {
        format!("{m} min")
    }
}

fn parse_record(text: &str) -> Option<(i64, String)> {
    let mut last = None;
    let mut event = String::from("unknown");
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("last = ") {
            last = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("event = ") {
            event = v.trim().trim_matches('"').to_string();
        }
    }
    last.map(|t| (t, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_spans() {
        assert_eq!(
            parse_record("# x\nlast = 1700000000\nevent = \"enrolled\"\nnot_after = 1\n"),
            Some((1_700_000_000, "enrolled".into()))
        );
        assert_eq!(parse_record("event = \"x\"\n"), None);
        assert_eq!(span(90_000), "1 d 1 h");
        assert_eq!(span(3_660), "1 h 1 min");
        assert_eq!(span(59), "0 min");
        assert_eq!(when(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
