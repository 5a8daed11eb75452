//! `voxgate phones {add,list,remove,rotate}`: the desk phones allowed to
//! register at this box, in the sealed store the bridge reads
//! ([`crate::bridge::phone_store`]; a running bridge takes up every change
//! within a second).
//!
//! Passwords are printed once, to stdout, and nowhere else: not to the log
//! (which names only extensions), not to the store (only their digests).

use crate::bridge::phone_store::{PhoneStore, StoreLock};
use crate::config::GatewayConfig;
use crate::pki::sealed::Material;
use crate::sip::SipConfig;
use std::path::{Path, PathBuf};

/// `voxgate phones ...`: the desk phones allowed to register at this box.
#[derive(Debug, clap::Subcommand)]
pub enum PhonesCommand {
    /// Give extension EXT a new strong password (printed once, never stored).
    Add {
        /// Extension: 2-8 digits, not starting with 9.
        ext: String,
        /// Gateway config file.
        #[arg(long, short, default_value = "/etc/voxgate/voxgate.toml")]
        config: PathBuf,
    },
    /// List the extensions (no secrets).
    List {
        /// Gateway config file.
        #[arg(long, short, default_value = "/etc/voxgate/voxgate.toml")]
        config: PathBuf,
    },
    /// Remove extension EXT; its phone can no longer register.
    Remove {
        /// Extension.
        ext: String,
        /// Gateway config file.
        #[arg(long, short, default_value = "/etc/voxgate/voxgate.toml")]
        config: PathBuf,
    },
    /// Give extension EXT, or every extension (--all), a new strong
    /// password, printed once as `EXT<TAB>PASSWORD` lines. The old password
    /// stops working, also on a running box, which drops the phone's
    /// registration: enter the new one in the phone.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["ext", "all"])))]
    Rotate {
        /// Extension (or --all).
        ext: Option<String>,
        /// Every extension in the store.
        #[arg(long)]
        all: bool,
        /// Gateway config file.
        #[arg(long, short, default_value = "/etc/voxgate/voxgate.toml")]
        config: PathBuf,
    },
}

fn open(config: &Path) -> anyhow::Result<(SipConfig, Material)> {
    let cfg = GatewayConfig::load(config)?;
    let sip = cfg.sip.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: the phone bridge is off; set `[sip] enabled = true` first",
            config.display()
        )
    })?;
    crate::privilege::check_state_dirs_for(
        &cfg.privilege,
        &[crate::bridge::phone_store::store_dir(&sip.phones)],
    )?;
    let material =
        crate::pki::sealed::material(&cfg.identity.machine_id, cfg.identity.serial.as_deref())?;
    Ok((sip, material))
}

/// A phone account just created: what to enter in the phone.
pub(super) struct Added {
    /// The extension (the SIP user).
    pub ext: String,
    /// Where the phone registers.
    pub registrar: String,
    /// Its password: shown once, never stored.
    pub password: crate::telemetry::Secret<String>,
    /// The digest realm.
    pub realm: String,
}

/// Give extension `ext` of the box configured by `config` a new strong
/// password (the store keeps only its digests).
pub(super) fn add(config: &Path, ext: &str) -> anyhow::Result<Added> {
    let (sip, m) = open(config)?;
    let _lock = StoreLock::acquire(&sip.phones)?;
    let mut store = PhoneStore::load(&sip.phones, &m, &sip.realm)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let password = store.add(ext, now)?;
    store.save(&sip.phones, &m)?;
    Ok(Added {
        ext: ext.to_string(),
        registrar: sip.advertise.map_or_else(
            || sip.listen.to_string(),
            |a| format!("{a}:{}", sip.listen.port()),
        ),
        password: crate::telemetry::Secret::new(password.as_str().to_string()),
        realm: sip.realm,
    })
}

/// The account's lines for the technician (stdout only: the password
/// appears nowhere else).
pub(super) fn print_account(a: &Added) {
    println!("  registrar:  {} (UDP or TCP)", a.registrar);
    println!("  user:       {}", a.ext);
    println!("  password:   {}", a.password.expose());
    println!("  realm:      {}", a.realm);
}

/// Run a `phones` command; output is for a technician at a terminal.
pub fn run(cmd: PhonesCommand) -> anyhow::Result<()> {
    match cmd {
        PhonesCommand::Add { ext, config } => {
            let a = add(&config, &ext)?;
            println!("extension {ext} added; configure the phone with:");
            print_account(&a);
            println!("The password is shown only now; it is not stored (only its digests are).");
            Ok(())
        }
        PhonesCommand::List { config } => {
            let (sip, m) = open(&config)?;
            let store = PhoneStore::load(&sip.phones, &m, &sip.realm)?;
            if store.is_empty() {
                println!("no phones; add one with `voxgate phones add EXT`");
            }
            for (ext, e) in store.iter() {
                let added = time::OffsetDateTime::from_unix_timestamp(e.created as i64)
                    .map(|x| format!("{} {} UTC", x.date(), &x.time().to_string()[..8]))
                    .unwrap_or_default();
                println!("{ext}\tadded {added}");
            }
            Ok(())
        }
        PhonesCommand::Remove { ext, config } => {
            let (sip, m) = open(&config)?;
            let _lock = StoreLock::acquire(&sip.phones)?;
            let mut store = PhoneStore::load(&sip.phones, &m, &sip.realm)?;
            store.remove(&ext)?;
            store.save(&sip.phones, &m)?;
            println!(
                "extension {ext} removed (a running box drops its registrations within a second)"
            );
            Ok(())
        }
        PhonesCommand::Rotate { ext, all, config } => rotate(ext.as_deref(), all, &config),
    }
}

/// `voxgate phones rotate EXT | --all`: new passwords for one or every
/// extension, in one atomic rewrite of the store (an unknown extension
/// leaves it untouched). The passwords go to stdout only, each once; the
/// log and the notes (stderr) name only the extensions.
fn rotate(ext: Option<&str>, all: bool, config: &Path) -> anyhow::Result<()> {
    let (sip, m) = open(config)?;
    let _lock = StoreLock::acquire(&sip.phones)?;
    let mut store = PhoneStore::load(&sip.phones, &m, &sip.realm)?;
    let rotated = match (ext, all) {
        (Some(ext), false) => vec![(ext.to_string(), store.rotate(ext)?)],
        (None, true) => store.rotate_all()?,
        // clap's group already refuses both and neither.
        _ => anyhow::bail!("give either an extension or --all, not both"),
    };
    if rotated.is_empty() {
        eprintln!("no phones to rotate; add one with `voxgate phones add EXT`");
        return Ok(());
    }
    store.save(&sip.phones, &m)?;
    let exts: Vec<&str> = rotated.iter().map(|(e, _)| e.as_str()).collect();
    tracing::info!(target: "audit", extensions = ?exts, "phone passwords rotated");
    // The stored digests are replaced: print each new password once.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for (ext, password) in &rotated {
            writeln!(out, "{ext}\t{}", password.as_str())?;
        }
        out.flush()?;
    }
    eprintln!(
        "{} new password(s) for realm {}, shown only now (only their digests are stored).",
        rotated.len(),
        sip.realm
    );
    eprintln!(
        "The old passwords no longer work: a running box drops these phones' registrations within a second; enter the new password in each phone."
    );
    Ok(())
}
