//! Certificate and key files: PEM certificates and PKCS#8 keys read with
//! rustls-pki-types' own PEM parser, private key files refused when others
//! can read them, and new key files created exclusively with their mode.
//!
//! State files are replaced, never rewritten in place ([`write_file`],
//! [`replace_file`]): the new content goes to a temporary file in the same
//! directory, created with `O_CREAT|O_EXCL|O_NOFOLLOW` and its final mode,
//! synced, then renamed over the old name, and the directory is synced. A
//! link planted at either name is never followed, a crash leaves the old
//! file or the new one, and a reader never sees half a file.
//!
//! Errors name the file and never carry its contents.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A certificate or key file could not be used.
#[derive(Debug, Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A file that is never overwritten already exists.
    #[error(
        "{0} already exists; the fleet CA is never overwritten (move it away to start a new fleet)"
    )]
    Exists(PathBuf),
    /// A PEM file holds nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        what: &'static str,
    },
    /// The new file could not be given the owner of the file it replaces.
    #[error(
        "{path} belongs to uid {uid} (gid {gid}), which its new version must keep so that the service can still read it, but: {source}; run this as root or as that user"
    )]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
        /// The OS error.
        source: std::io::Error,
    },
    /// A private key file others can read (as ssh, such a key is refused).
    #[error(
        "{path} is readable by others (mode {mode:04o}); a private key must be 0600: run `chmod 600 {path}`"
    )]
    KeyExposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Read every certificate in a PEM file; a file with none is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let pem = std::fs::read(path).map_err(|source| FileError::Read {
        path: path.into(),
        source,
    })?;
    parse_certs(&pem).map_err(|what| FileError::Pem {
        path: path.into(),
        what,
    })
}

/// Every certificate in PEM text.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, &'static str> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| "not a PEM certificate file")?;
    if certs.is_empty() {
        return Err("holds no certificate");
    }
    Ok(certs)
}

/// Refuse key files that the group or others can read or write.
pub fn check_key_mode(path: &Path) -> Result<(), FileError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| FileError::Read {
        path: path.into(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(FileError::KeyExposed {
            path: path.into(),
            mode,
        });
    }
    Ok(())
}

/// Read a private key from a PEM file, refusing files others can read. The
/// file is read into zeroizing memory.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    check_key_mode(path)?;
    let pem = zeroize::Zeroizing::new(std::fs::read(path).map_err(|source| FileError::Read {
        path: path.into(),
        source,
    })?);
    parse_key(&pem).ok_or_else(|| FileError::Pem {
        path: path.into(),
        what: "holds no PEM private key",
    })
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in PEM text.
pub fn parse_key(pem: &[u8]) -> Option<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).ok()
}

/// Write `data` to a new file with `mode` and sync it; an existing file is
/// never replaced ([`FileError::Exists`]).
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), FileError> {
    let write = |source| FileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                FileError::Exists(path.to_path_buf())
            } else {
                write(e)
            }
        })?;
    f.write_all(data).map_err(write)?;
    f.sync_all().map_err(write)
}

/// Replace `path` with `data` (mode `mode`), atomically; the new file
/// keeps the owner of the one it replaces (see [`replace_file`]).
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), FileError> {
    use std::os::unix::fs::MetadataExt;
    let owner = match std::fs::symlink_metadata(path) {
        Ok(m) => Some((m.uid(), m.gid())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(FileError::Write {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    replace_file(path, data, mode, owner)
}

/// Replace `path` with `data`: a temporary file beside it, created
/// `O_EXCL|O_NOFOLLOW` with `mode` (exactly, whatever the umask) and owned
/// by `owner` when given, written and synced, renamed over `path`; then
/// the directory is synced. On error the temporary file is removed and
/// `path` is untouched.
pub fn replace_file(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), FileError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FileError::Write { path, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // A unique name, and O_EXCL in case something sits there anyway.
    let (tmp, mut f) = loop {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => continue,
            Err(e) => return Err(fail(&tmp)(e)),
        }
    };
    let result = (|| {
        let meta = f.metadata().map_err(fail(&tmp))?;
        if meta.permissions().mode() & 0o7777 != mode {
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(fail(&tmp))?;
        }
        if let Some((uid, gid)) = owner
            && (meta.uid(), meta.gid()) != (uid, gid)
        {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(|source| {
                FileError::Owner {
                    path: path.to_path_buf(),
                    uid,
                    gid,
                    source,
                }
            })?;
        }
        f.write_all(data).map_err(fail(&tmp))?;
        f.sync_all().map_err(fail(&tmp))?;
        std::fs::rename(&tmp, path).map_err(fail(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // The rename should reach the disk; the new file is in place already.
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

/// PEM text of one DER object under `label` (64 base64 characters a line).
pub fn pem(der: &[u8], label: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("voxgate-pki-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn keys_others_can_read_are_refused() {
        let d = tmp("mode");
        let key = rcgen::KeyPair::generate().unwrap();
        let p = d.join("k.pem");
        write_new(&p, key.serialize_pem().as_bytes(), 0o644).unwrap();
        let e = read_key(&p).unwrap_err();
        assert!(
            matches!(e, FileError::KeyExposed { mode: 0o644, .. }),
            "{e}"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(read_key(&p).unwrap(), PrivateKeyDer::Pkcs8(_)));
        assert!(matches!(
            write_new(&p, b"x", 0o600),
            Err(FileError::Exists(_))
        ));
    }

    #[test]
    fn pem_round_trips() {
        let der: Vec<u8> = (0..=255).collect();
        let text = pem(&der, "CERTIFICATE");
        assert!(text.lines().all(|l| l.len() <= 64));
        assert_eq!(parse_certs(text.as_bytes()).unwrap()[0].as_ref(), &der[..]);
    }

    #[test]
    fn pem_errors_never_echo_the_file() {
        assert_eq!(parse_certs(b"secret-ish junk"), Err("holds no certificate"));
        // A key header over junk (the label built at run time: no key-like
        // text in the repository).
        let junk = format!("-----BEGIN {} KEY-----\nnot base64!\n", "PRIVATE");
        assert!(parse_key(junk.as_bytes()).is_none());
        let d = tmp("pem");
        let p = d.join("c.pem");
        std::fs::write(&p, "hunter2").unwrap();
        let e = read_certs(&p).unwrap_err().to_string();
        assert!(
            !e.contains("hunter2") && e.contains("holds no certificate"),
            "{e}"
        );
    }

    #[test]
    fn state_files_are_replaced_never_written_through_links() {
        use std::os::unix::fs::MetadataExt;
        let d = tmp("replace");
        let outside = d.join("outside");
        std::fs::write(&outside, "keep").unwrap();
        // A link at the file's own name is replaced, not followed.
        let p = d.join("renewal.state");
        std::os::unix::fs::symlink(&outside, &p).unwrap();
        write_file(&p, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&p).unwrap().is_symlink());
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        // Links planted at every temporary name this process could use
        // next are skipped (O_EXCL), not followed.
        for n in 0..64 {
            let t = d.join(format!(".renewal.state.{}-{n}.tmp", std::process::id()));
            let _ = std::os::unix::fs::symlink(&outside, t);
        }
        write_file(&p, b"newer", 0o640).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert_eq!(std::fs::read(&p).unwrap(), b"newer");
        // The exact mode, whatever the umask; the owner kept.
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o640);
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        write_file(&p, b"third", 0o600).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        // Nothing but the planted links and the two files is left.
        let mut left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !std::fs::symlink_metadata(d.join(n)).unwrap().is_symlink())
            .collect();
        left.sort();
        assert_eq!(left, ["outside", "renewal.state"]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
