//! `voxgate relay init` (the two-tier fleet CA) and `voxgate relay ca
//! {status,rotate-issuing,rotate-root,recover,export-root}`.

use super::passphrase::{PassphraseArgs, Purpose};
use crate::config::RelayConfig;
use crate::relay::authority::{self, RootKeyIn, RootKeyOut};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Where `relay init` puts the root's key.
#[derive(Debug, Args)]
pub(super) struct RootKeyArgs {
    /// Write the root CA key to this new file, encrypted under a passphrase
    /// (from --passphrase-file, --passphrase-stdin or the terminal), and
    /// keep it off this machine: it is needed only to make the next
    /// issuing CA.
    #[arg(long, value_name = "FILE", conflicts_with = "keep_root")]
    root_key_out: Option<PathBuf>,
    /// Keep the root CA key on this machine, sealed like the relay's other
    /// keys: for labs and demos, where this machine is the whole fleet.
    #[arg(long)]
    keep_root: bool,
    /// Make the issuing CA's key inside this TPM (`device:/dev/tpmrm0`, or
    /// `swtpm:HOST:PORT`) instead of sealing it to the machine: it never
    /// leaves the TPM, and later issuing CAs follow it there.
    #[arg(long, value_name = "SPEC", conflicts_with = "issuing_key_creds")]
    issuing_key_tpm: Option<String>,
    /// Keep the issuing CA's key as a systemd credential
    /// (`creds-issuing/issuing-*.key.cred`, encrypted by `systemd-creds` to
    /// this machine's TPM or host key): only voxgate-signer.service is given
    /// it (`LoadCredentialEncrypted=`). Needs root.
    #[arg(long)]
    issuing_key_creds: bool,
    /// Make the relay's TLS key inside this TPM: every handshake signs
    /// through it, and renewals make the next key there.
    #[arg(long, value_name = "SPEC", conflicts_with = "tls_key_creds")]
    tls_key_tpm: Option<String>,
    /// Keep the relay's TLS key as a systemd credential
    /// (`creds-tls/relay.key.cred`): voxgate-relay.service is given it
    /// at start, and renews its certificate for the same key (`relay ca
    /// recover`, as root, makes a new one). Needs root.
    #[arg(long)]
    tls_key_creds: bool,
    #[command(flatten)]
    passphrase: PassphraseArgs,
}

#[derive(Debug, Subcommand)]
pub(super) enum CaCommand {
    /// The root, the issuing CAs (which one signs, when the others' certificates
    /// stop being accepted) and where the root's key is.
    Status {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
    },
    /// Make a new issuing CA under the root; it signs from now on (the running
    /// relay takes it within a second and asks every device to renew onto it),
    /// and the old one's certificates are refused after --retire-after.
    RotateIssuing {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// The root key file `relay init --root-key-out` wrote (omit when the
        /// root key is kept on this machine).
        #[arg(long, value_name = "FILE")]
        root_key: Option<PathBuf>,
        /// How long devices have to renew onto the new issuing CA before the
        /// old one's certificates are refused: seconds, or with a unit
        /// (`30m`, `12h`, `7d`). A leaked issuing key: short.
        #[arg(long, default_value = "7d")]
        retire_after: String,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Make a new root, vouched for by the old one (a cross certificate), and a
    /// new issuing CA under it. Until --retire-after the relay serves a chain
    /// that leads to either root and tells every connected device of the new
    /// root (a device takes it only if the old root signed it); then the old
    /// root and its issuing CAs are refused, and devices drop the old root.
    RotateRoot {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// The current root's key file (omit when it is kept on this machine);
        /// its passphrase from --passphrase-file, --passphrase-stdin or the
        /// terminal.
        #[arg(long, value_name = "FILE")]
        root_key: Option<PathBuf>,
        /// Write the new root's key to this new file, encrypted under a
        /// passphrase (--new-passphrase-file, or the terminal).
        #[arg(long, value_name = "FILE", conflicts_with = "keep_root")]
        new_root_key_out: Option<PathBuf>,
        /// The new root key file's passphrase: the first line of this 0600
        /// file.
        #[arg(long, value_name = "PATH", requires = "new_root_key_out")]
        new_passphrase_file: Option<PathBuf>,
        /// Keep the new root's key on this machine, sealed (labs and demos).
        #[arg(long)]
        keep_root: bool,
        /// How long the old root stays trusted beside the new one: every
        /// device must connect within it to learn the new root (`12h`, `30d`).
        #[arg(long, default_value = "30d")]
        retire_after: String,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// After a compromised relay or a restore without keys: from the offline
    /// root, a new issuing CA and a new relay key and certificate; every
    /// earlier issuing CA's certificates are refused after --retire-after
    /// (devices renew onto the new CA when they connect).
    Recover {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// The root key file `relay init --root-key-out` wrote (omit when the
        /// root key is kept on this machine).
        #[arg(long, value_name = "FILE")]
        root_key: Option<PathBuf>,
        /// How long devices have to move before the earlier issuing CAs'
        /// certificates are refused (`30m`, `12h`, `7d`).
        #[arg(long, default_value = "1h")]
        retire_after: String,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Move a root key kept on this machine (`relay init --keep-root`, or a
    /// fleet migrated from a single-tier CA) into a file encrypted under a
    /// passphrase, and remove it from the relay.
    ExportRoot {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// The new file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
}

/// `30`, `30s`, `45m`, `12h`, `7d` as seconds.
fn seconds(text: &str) -> Result<i64> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: i64 = num
        .parse()
        .with_context(|| format!("`{text}` is not a duration (e.g. 3600, 30m, 12h, 7d)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("`{text}`: the unit must be s, m, h or d"),
    };
    Ok(n.saturating_mul(mult))
}

/// The passphrase of the root key file, when one is given (none: the root
/// key is kept on this machine).
fn root_passphrase(
    root_key: &Option<PathBuf>,
    args: &PassphraseArgs,
) -> Result<Option<crate::pki::passphrase::Passphrase>> {
    Ok(match root_key {
        Some(_) => Some(args.read(Purpose::Existing, "the root CA key file")?),
        None => None,
    })
}

/// What every command that uses the root key reads first: the config, the
/// retire date `retire_after` from now, the registry (with its audit key),
/// and the root key file's passphrase.
fn root_op(
    config: &std::path::Path,
    retire_after: &str,
    root_key: &Option<PathBuf>,
    passphrase: &PassphraseArgs,
) -> Result<(
    RelayConfig,
    i64,
    crate::relay::registry::Registry,
    Option<crate::pki::passphrase::Passphrase>,
)> {
    let cfg = RelayConfig::load(config)?;
    let retire_at = crate::relay::registry::now() + seconds(retire_after)?;
    let reg = super::open_registry(&cfg)?;
    let pass = root_passphrase(root_key, passphrase)?;
    Ok((cfg, retire_at, reg, pass))
}

/// Where the root key comes from: the file with its passphrase, or this
/// machine.
fn root_key_in<'a>(
    root_key: &'a Option<PathBuf>,
    pass: &'a Option<crate::pki::passphrase::Passphrase>,
) -> RootKeyIn<'a> {
    match (root_key, pass) {
        (Some(path), Some(p)) => RootKeyIn::File(path, p),
        _ => RootKeyIn::Machine,
    }
}

fn when(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|x| x.date().to_string() + " " + &x.time().to_string()[..8] + " UTC")
        .unwrap_or_default()
}

pub(super) fn init(config: PathBuf, root: RootKeyArgs) -> Result<()> {
    let cfg = RelayConfig::load(&config)?;
    let pass;
    let out = match (&root.root_key_out, root.keep_root) {
        (Some(path), false) => {
            pass = root.passphrase.read(Purpose::New, "the root CA key file")?;
            RootKeyOut::Export(path, &pass)
        }
        (None, true) => RootKeyOut::Keep,
        _ => anyhow::bail!(
            "the root CA key must go somewhere: --root-key-out FILE (encrypted under a passphrase; keep the file off this machine) or --keep-root (labs and demos: sealed on this machine)"
        ),
    };
    let store = |spec: &Option<String>, flag: &str| -> Result<crate::relay::ca_key::KeyStore> {
        Ok(match spec {
            Some(spec) => crate::relay::ca_key::KeyStore::Tpm(
                spec.parse().with_context(|| format!("{flag} `{spec}`"))?,
            ),
            None => crate::relay::ca_key::KeyStore::Sealed,
        })
    };
    let issuing_store = if root.issuing_key_creds {
        crate::relay::ca_key::KeyStore::Creds
    } else {
        store(&root.issuing_key_tpm, "--issuing-key-tpm")?
    };
    let tls_store = if root.tls_key_creds {
        crate::relay::ca_key::KeyStore::Creds
    } else {
        store(&root.tls_key_tpm, "--tls-key-tpm")?
    };
    let (fp, file) = crate::relay::ca::init_in(
        &cfg.state_dir,
        &cfg.server_name,
        &cfg.ca_binding,
        cfg.relay_cert_lifetime,
        out,
        (&issuing_store, &tls_store),
    )?;
    settle_owners(&cfg)?;
    println!("fleet CA created in {}", cfg.state_dir.display());
    println!("CA fingerprint: {fp}");
    match file {
        Some(path) => eprintln!(
            "the root CA key is in {} (encrypted); keep it and its passphrase off this machine: it is needed only for `voxgate relay ca rotate-issuing`",
            path.display()
        ),
        None => eprintln!(
            "the root CA key stays on this machine (sealed): fine for a lab or a demo; for a fleet, move it off with `voxgate relay ca export-root --out FILE`"
        ),
    }
    Ok(())
}

pub(super) fn run(cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Status { config } => {
            let cfg = RelayConfig::load(&config)?;
            let reg = super::open_registry(&cfg)?;
            let state = &cfg.state_dir;
            let at = crate::relay::registry::now();
            let rows = reg.roots()?;
            if rows.is_empty() {
                for r in authority::roots(state)? {
                    println!("root     {}", crate::pki::name::fingerprint(&r));
                }
            }
            for r in rows {
                let state = match (r.current, r.retire_at) {
                    (true, _) => "current".to_string(),
                    (false, Some(t)) if t <= at => format!("retired {}", when(t)),
                    (false, Some(t)) => format!("trusted until {}", when(t)),
                    (false, None) => "trusted".to_string(),
                };
                println!("root     {}  {state}", r.fingerprint);
            }
            let key_here = state.join(authority::ROOT_KEY_SEALED).exists()
                || state.join(crate::relay::ca::CA_KEY_SEALED).exists();
            println!(
                "root key {}",
                if key_here {
                    "ON THIS MACHINE (sealed): move it off with `voxgate relay ca export-root`"
                } else {
                    "off this machine"
                }
            );
            let issuers = reg.issuers()?;
            if issuers.is_empty() {
                println!(
                    "issuing  none yet: the single-tier CA signs; the relay makes an issuing CA at its next start"
                );
            }
            for i in issuers {
                let state = match (i.current, i.retire_at) {
                    (true, _) => "signing".to_string(),
                    (false, Some(r)) if r <= at => format!("retired {}", when(r)),
                    (false, Some(r)) => format!("accepted until {}", when(r)),
                    (false, None) => "accepted".to_string(),
                };
                println!("issuing  {}  {state}", i.fingerprint);
            }
            Ok(())
        }
        CaCommand::RotateIssuing {
            config,
            root_key,
            retire_after,
            passphrase,
        } => {
            let (cfg, retire_at, reg, pass) =
                root_op(&config, &retire_after, &root_key, &passphrase)?;
            let root = root_key_in(&root_key, &pass);
            let ca =
                authority::rotate_issuing(&cfg.state_dir, &cfg.ca_binding, &reg, root, retire_at)?;
            settle_owners(&cfg)?;
            println!("issuing CA {} signs from now on", ca.fingerprint());
            restart_signer_unit(&cfg, ca.fingerprint());
            eprintln!(
                "the running relay takes it within a second, renews its own certificate from it and asks every connected device to renew; certificates of the previous issuing CA are refused from {} (see `voxgate relay ca status`, and `voxgate relay audit` for the renewals)",
                when(retire_at)
            );
            Ok(())
        }
        CaCommand::RotateRoot {
            config,
            root_key,
            new_root_key_out,
            new_passphrase_file,
            keep_root,
            retire_after,
            passphrase,
        } => {
            let (cfg, retire_at, reg, pass) =
                root_op(&config, &retire_after, &root_key, &passphrase)?;
            let old = root_key_in(&root_key, &pass);
            let new_pass;
            let out = match (&new_root_key_out, keep_root) {
                (Some(path), false) => {
                    new_pass = PassphraseArgs {
                        passphrase_file: new_passphrase_file,
                        passphrase_stdin: false,
                    }
                    .read(Purpose::New, "the new root CA key file")?;
                    RootKeyOut::Export(path, &new_pass)
                }
                (None, true) => RootKeyOut::Keep,
                _ => anyhow::bail!(
                    "the new root CA key must go somewhere: --new-root-key-out FILE (encrypted under a passphrase; keep the file off this machine) or --keep-root (labs and demos: sealed on this machine)"
                ),
            };
            let r = crate::relay::roots::rotate_root(
                &cfg.state_dir,
                &cfg.ca_binding,
                &reg,
                old,
                out,
                retire_at,
            )?;
            settle_owners(&cfg)?;
            restart_signer_unit(&cfg, &r.issuing);
            println!("new root CA fingerprint: {}", r.root);
            println!("issuing CA {} signs from now on", r.issuing);
            if let Some(path) = &r.key_out {
                eprintln!(
                    "the new root CA key is in {} (encrypted); keep it and its passphrase off this machine. The old root's key is no longer needed.",
                    path.display()
                );
            }
            eprintln!(
                "the running relay takes the new root within a second: connected devices learn it (each checks the old root's signature) and renew onto the new issuing CA. The old root and its certificates are refused from {}: every device must connect before then. Enroll new devices with the new fingerprint.",
                when(retire_at)
            );
            Ok(())
        }
        CaCommand::Recover {
            config,
            root_key,
            retire_after,
            passphrase,
        } => {
            let (cfg, retire_at, reg, pass) =
                root_op(&config, &retire_after, &root_key, &passphrase)?;
            let root = root_key_in(&root_key, &pass);
            let fp = authority::recover(
                &cfg.state_dir,
                &cfg.ca_binding,
                &reg,
                root,
                retire_at,
                &cfg.server_name,
                cfg.relay_cert_lifetime,
            )?;
            settle_owners(&cfg)?;
            println!("issuing CA {fp} signs from now on; the relay has a new key and certificate");
            eprintln!(
                "start the relay; devices reconnect (same root) and renew onto the new issuing CA; earlier issuing CAs' certificates are refused from {}",
                when(retire_at)
            );
            Ok(())
        }
        CaCommand::ExportRoot {
            config,
            out,
            passphrase,
        } => {
            let cfg = RelayConfig::load(&config)?;
            let pass = passphrase.read(Purpose::New, "the root CA key file")?;
            authority::export_root(&cfg.state_dir, &cfg.ca_binding, &out, &pass)?;
            let reg = super::open_registry(&cfg)?;
            reg.audit("root_key_exported", "", "", "")?;
            println!(
                "the root CA key is in {} (encrypted) and no longer on this machine",
                out.display()
            );
            Ok(())
        }
    }
}

/// Run as root, give the state directory's files to their accounts: the
/// relay's (`[privilege] user`, or the state directory's owner) for everything, then the issuing CA keys to
/// the signer's (`[signer] user`) and a root key kept here to root, so that
/// the relay's account reads neither. Not root: the files stay the
/// caller's (the unit file's `runuser -u voxgate` way), and a configured
/// signer account is warned about.
pub(super) fn settle_owners(cfg: &RelayConfig) -> Result<()> {
    use nix::unistd::{Uid, User};
    let account = |name: &str, key: &str| -> Result<(u32, u32)> {
        let u = User::from_name(name).ok().flatten().with_context(|| {
            format!(
                "{}: {key} `{name}` is not in /etc/passwd",
                cfg.file.display()
            )
        })?;
        Ok((u.uid.as_raw(), u.gid.as_raw()))
    };
    if !Uid::effective().is_root() {
        if cfg.signer.user.is_some() {
            eprintln!(
                "not root: the issuing CA keys belong to this user, not to [signer] user; rerun as root, or chown them (`issuing-*.key.*` in {}) to the signer's account",
                cfg.state_dir.display()
            );
        }
        return Ok(());
    }
    let relay = Some(crate::relay::signer::process::relay_account(cfg)?);
    let signer = match &cfg.signer.user {
        Some(u) => Some(account(u, "[signer] user")?),
        None => None,
    };
    let dir = &cfg.state_dir;
    let chown = |p: &std::path::Path, (uid, gid): (u32, u32)| {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))
            .with_context(|| format!("cannot give {} to uid {uid}", p.display()))
    };
    if let Some(owner) = relay {
        chown(dir, owner)?;
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            continue;
        }
        let issuing_key = name.starts_with("issuing-") && name.contains(".key.");
        let root_key = name == crate::relay::authority::ROOT_KEY_SEALED
            || name == crate::relay::ca::CA_KEY_SEALED;
        let owner = match (issuing_key, root_key, signer) {
            (true, _, Some(s)) => Some(s),
            (_, true, Some(_)) => Some((0, 0)),
            _ => relay,
        };
        if let Some(owner) = owner {
            chown(&path, owner)?;
        }
    }
    Ok(())
}

/// After a rotation to a key kept as a systemd credential: restart the
/// signer unit, which is given its credentials only at start.
fn restart_signer_unit(cfg: &RelayConfig, fp: &str) {
    let cred = crate::relay::ca_key::key_path(&cfg.state_dir, fp, "cred");
    if !cred.exists() {
        return;
    }
    let restarted = std::path::Path::new("/run/systemd/system").exists()
        && std::process::Command::new("systemctl")
            .args(["try-restart", "voxgate-signer.service"])
            .status()
            .is_ok_and(|s| s.success());
    if restarted {
        eprintln!(
            "voxgate-signer.service restarted: it loads the new key (a systemd credential) at start"
        );
    } else {
        eprintln!(
            "the new key is a systemd credential: restart the signer so that it is given it (`systemctl restart voxgate-signer`)"
        );
    }
}
