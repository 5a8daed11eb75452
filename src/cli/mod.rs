//! Command line: `run`, `setup`, `check`, `status`, `keys status`, `phones`, `relay {run,init,ca,seal-ca,token,api-key,devices,ext,revoke,dev-cert,audit,webhook,backup,restore}`, `demo`.

mod api_keys;
#[cfg(feature = "api")]
mod api_tls;
mod audit;
mod extensions;
mod fleet_ca;
pub mod passphrase;
mod phones;
mod setup;
mod tokens;
#[cfg(feature = "api")]
mod webhooks;

use tokens::TokenCommand;

use crate::config::{GatewayConfig, RelayConfig};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// voxgate: edge voice gateway.
#[derive(Debug, Parser)]
#[command(name = "voxgate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the appliance daemon: microphone to relay, relay to speaker.
    Run(RunArgs),
    /// The cloud relay.
    #[command(subcommand)]
    Relay(RelayCommand),
    /// Start a relay and a gateway on loopback and stream for a while.
    Demo(crate::demo::DemoArgs),
    /// Enroll this device with a relay using a one-time token.
    Setup(Box<crate::identity::setup::SetupArgs>),
    /// Desk phones allowed to register at this box.
    #[command(subcommand)]
    Phones(phones::PhonesCommand),
    /// The device key and certificate.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check this box: config, identity, TPM, certificate, clock, DNS, the
    /// relay (UDP, QUIC, round trip), audio devices, SIP, the service, its
    /// sandbox and disk. Exit code: 0 all ok, 1 warnings, 2 failures.
    Check(crate::diagnose::check::CheckArgs),
    /// The running daemon on one screen: relay connection, round trip,
    /// loss, frames, phones, calls, certificate, uptime. Exit code 3 when it
    /// does not run.
    Status(crate::diagnose::status::StatusArgs),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Backend, device id, certificate serial and expiry, last renewal and
    /// TPM reachability (no secrets). Exits non-zero when the device is not
    /// enrolled or its identity is unusable.
    Status {
        /// Gateway config file.
        #[arg(long, short, default_value = "/etc/voxgate/voxgate.toml")]
        config: PathBuf,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Gateway config file.
    #[arg(long, short, default_value = "/etc/voxgate/voxgate.toml")]
    config: PathBuf,
    /// List capture and playback devices and exit.
    #[arg(long)]
    list_devices: bool,
}

#[derive(Debug, Subcommand)]
enum RelayCommand {
    /// Serve devices.
    Run {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
    },
    /// The signer process that holds the issuing CA key (`relay run` starts
    /// it; not for use by hand).
    #[command(hide = true)]
    Signer {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// Serve the relay on standard input (a socket): as `relay run`'s child.
        #[arg(long, required_unless_present = "listen", conflicts_with = "listen")]
        stdio: bool,
        /// Serve the relay's account on `[signer] socket`: as its own unit
        /// (voxgate-signer.service), under its own account.
        #[arg(long)]
        listen: bool,
    },
    /// Create the fleet CA and the relay certificate in the state directory.
    Init {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        #[command(flatten)]
        root: fleet_ca::RootKeyArgs,
    },
    /// The two-tier fleet CA: status, issuing CA rotation, the root key.
    #[command(subcommand)]
    Ca(fleet_ca::CaCommand),
    /// Seal the plaintext fleet CA and relay TLS keys of an older release
    /// (`ca.key`, `relay.key`) to this machine: writes `*.key.sealed` and
    /// removes the plaintext.
    SealCa {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
    },
    /// Enrollment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Keys of the operator HTTP API (`[api]`).
    #[command(subcommand)]
    ApiKey(api_keys::ApiKeyCommand),
    /// The operator API's TLS key (in a TPM, a systemd credential or sealed)
    /// and its certificate request.
    #[cfg(feature = "api")]
    #[command(subcommand)]
    ApiTls(api_tls::ApiTlsCommand),
    /// List enrolled devices, their certificate expiry and revocation.
    Devices {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
    },
    /// Extensions and the device that owns each.
    #[command(subcommand)]
    Ext(extensions::ExtCommand),
    /// Revoke a device: its live connection closes within a second and its
    /// next handshake is refused.
    Revoke {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// Device id.
        device: String,
    },
    /// The audit log (enrollments, renewals, refusals, revocations,
    /// tokens), or `--verify` its hash chain.
    Audit(audit::AuditArgs),
    /// Signed webhooks: endpoints, secrets, deliveries.
    #[cfg(feature = "api")]
    #[command(subcommand)]
    Webhook(webhooks::WebhookCommand),
    /// Back up the relay's state, while it runs, into one new file (0600):
    /// the registry as of one moment, the CA and relay certificates, and
    /// with --with-keys the keys encrypted to a passphrase.
    Backup {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// The backup file to create (never overwritten).
        file: PathBuf,
        /// Include the fleet CA key and the relay's TLS key, encrypted to a
        /// passphrase (asked on the terminal, twice, unless
        /// --passphrase-file or --passphrase-stdin). Without it the backup
        /// holds no key: a restore then needs a new fleet CA.
        #[arg(long)]
        with_keys: bool,
        #[command(flatten)]
        passphrase: passphrase::PassphraseArgs,
    },
    /// Restore a backup into an empty state directory (this machine's
    /// `state_dir`); keys are sealed to this machine's `[ca]` binding.
    Restore {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// The backup file.
        file: PathBuf,
        /// Restore the registry and certificates but not the keys, although
        /// the backup holds them (the passphrase is lost): a new fleet CA
        /// follows.
        #[arg(long, conflicts_with_all = ["passphrase_file", "passphrase_stdin"])]
        without_keys: bool,
        #[command(flatten)]
        passphrase: passphrase::PassphraseArgs,
    },
    /// Issue a development device certificate (plaintext key: for labs only).
    DevCert {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// Device id to name in the certificate.
        #[arg(long)]
        device_id: String,
        /// Directory to write device.pem, device.key and ca.pem into.
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 30)]
        days: i64,
    },
}

/// Entry point: parse, run, print errors with their causes.
pub fn main() -> ExitCode {
    // Before anything reads a key: no core dump may carry it to disk.
    match crate::privilege::dumps::forbid() {
        Ok(crate::privilege::dumps::CoreLimit::Refused) => eprintln!(
            "voxgate: warning: RLIMIT_CORE could not be set to 0; the process is non-dumpable, which also prevents core dumps"
        ),
        Ok(_) => {}
        Err(e) => {
            eprintln!("voxgate: error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    let cli = Cli::parse();
    // These two exit with their own codes (the worst check; not running).
    let cli = match cli.command {
        Command::Check(args) => {
            crate::telemetry::init("off");
            return crate::diagnose::check::run(args);
        }
        Command::Status(args) => {
            crate::telemetry::init("off");
            return crate::diagnose::status::run(args);
        }
        command => Cli { command },
    };
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn open_registry(cfg: &RelayConfig) -> Result<crate::relay::registry::Registry> {
    let path = cfg.state_dir.join(crate::relay::ca::REGISTRY);
    if !path.exists() {
        anyhow::bail!(
            "no device registry at {}; run `voxgate relay init --config {}` first",
            path.display(),
            cfg.file.display()
        );
    }
    // With the audit log's key: every command may append (and the first
    // one after an upgrade chains the log).
    Ok(crate::relay::audit_key::open_registry(
        &cfg.state_dir,
        &cfg.ca_binding,
    )?)
}

fn runtime(workers: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The relay's runtime: one worker per CPU the process may run on (its
/// affinity mask and cgroup quota). On one CPU that is the current-thread
/// scheduler: the relay's tasks wake each other on every datagram (endpoint,
/// connection, session), and two workers sharing one CPU would hand those
/// wake-ups between threads with futex calls and context switches.
fn relay_runtime() -> Result<tokio::runtime::Runtime> {
    match std::thread::available_parallelism().map_or(1, |n| n.get()) {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime"),
        n => runtime(n),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => {
            if args.list_devices {
                for dir in [
                    crate::audio::device::Dir::Capture,
                    crate::audio::device::Dir::Playback,
                ] {
                    println!("{dir} devices:");
                    for (id, desc) in crate::audio::device::list(dir) {
                        println!("  {id:<32} {desc}");
                    }
                }
                return Ok(());
            }
            let cfg = GatewayConfig::load(&args.config)?;
            crate::telemetry::init(&cfg.telemetry.log);
            let plan = crate::privilege::plan(&cfg.privilege, &cfg.file)?;
            let mut dirs: Vec<&std::path::Path> = [&cfg.identity.cert, &cfg.identity.key]
                .into_iter()
                .filter_map(|f| f.parent())
                .filter(|d| !d.as_os_str().is_empty())
                .collect();
            if let Some(sip) = &cfg.sip {
                dirs.push(crate::bridge::phone_store::store_dir(&sip.phones));
            }
            plan.check_state_dirs(&dirs)?;
            let mut prepared = crate::gateway::prepare(cfg)?;
            let plan = plan.with_read(prepared.sandbox_read_paths());
            let devices = prepared.sandbox_paths();
            let state: Vec<&std::path::Path> = devices.iter().map(|p| p.as_path()).collect();
            let report = crate::privilege::apply(&plan, &state, &prepared.cfg.file)?;
            report.log();
            prepared.record_sandbox(&report);
            prepared.verify_identity()?;
            runtime(1)?.block_on(crate::gateway::run(prepared, shutdown_signal()))
        }
        Command::Relay(RelayCommand::Run { config }) => {
            let cfg = RelayConfig::load(&config)?;
            crate::telemetry::init(&cfg.telemetry.log);
            let plan = crate::privilege::plan(&cfg.privilege, &cfg.file)?;
            plan.check_state_dirs(&[&cfg.state_dir, &cfg.recordings])?;
            let prepared = crate::relay::prepare(cfg)?;
            // The TLS key systemd gave the unit, read again at renewals.
            let plan = plan.with_read(std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from));
            // A TPM device that holds the relay's TLS key stays writable.
            let tpm = match crate::relay::ca_key::KeyStore::of_relay(&prepared.cfg.state_dir)? {
                crate::relay::ca_key::KeyStore::Tpm(crate::identity::tpm::TpmSpec::Device(p)) => {
                    Some(p)
                }
                _ => None,
            };
            let mut state = vec![
                prepared.cfg.state_dir.as_path(),
                prepared.cfg.recordings.as_path(),
            ];
            state.extend(tpm.as_deref());
            let report = crate::privilege::apply(&plan, &state, &prepared.cfg.file)?;
            report.log();
            relay_runtime()?.block_on(crate::relay::run(prepared, shutdown_signal()))
        }
        Command::Relay(RelayCommand::Signer { config, stdio, .. }) => {
            let cfg = RelayConfig::load(&config)?;
            crate::telemetry::init(&cfg.telemetry.log);
            if stdio {
                crate::relay::signer::process::run(cfg)
            } else {
                crate::relay::signer::process::listen(cfg)
            }
        }
        Command::Relay(RelayCommand::Init { config, root }) => fleet_ca::init(config, root),
        Command::Relay(RelayCommand::Ca(cmd)) => fleet_ca::run(cmd),
        Command::Relay(RelayCommand::SealCa { config }) => {
            let cfg = RelayConfig::load(&config)?;
            for path in crate::relay::ca::seal_legacy_keys(&cfg.state_dir, &cfg.ca_binding)? {
                println!(
                    "sealed to this machine: {} (the plaintext key is removed)",
                    path.display()
                );
            }
            Ok(())
        }
        Command::Relay(RelayCommand::DevCert {
            config,
            device_id,
            out,
            days,
        }) => {
            let cfg = RelayConfig::load(&config)?;
            crate::relay::ca::issue_dev_cert(
                &cfg.state_dir,
                &cfg.ca_binding,
                &device_id,
                days,
                &out,
            )?;
            println!(
                "development certificate for `{device_id}` written to {} (device.pem, device.key, ca.pem)",
                out.display()
            );
            println!(
                "warning: device.key is a plaintext key for lab use; production devices use sealed keys"
            );
            Ok(())
        }
        Command::Relay(RelayCommand::Devices { config }) => {
            let cfg = RelayConfig::load(&config)?;
            let reg = open_registry(&cfg)?;
            let rows = reg.devices()?;
            if rows.is_empty() {
                println!("no devices enrolled");
            }
            println!(
                "{:<24} {:<22} {:<22} status",
                "device", "enrolled", "certificate expires"
            );
            for d in rows {
                let when = |t: i64| {
                    time::OffsetDateTime::from_unix_timestamp(t)
                        .map(|x| x.date().to_string() + " " + &x.time().to_string()[..8])
                        .unwrap_or_default()
                };
                let status = match d.revoked {
                    Some(t) => format!("REVOKED {}", when(t)),
                    None => "active".into(),
                };
                // The issuing CA by the start of its fingerprint, as
                // `voxgate relay ca status` lists it.
                let issuer = d
                    .issuer
                    .as_deref()
                    .map(|i| i.chars().take(7 + 16).collect::<String>())
                    .unwrap_or_else(|| "the single-tier CA".into());
                let status = format!(
                    "{status} (certificate {}, issued by {issuer})",
                    d.serial.as_deref().unwrap_or("-")
                );
                println!(
                    "{:<24} {:<22} {:<22} {status}",
                    d.id,
                    when(d.enrolled),
                    d.cert_expires.map(when).unwrap_or_else(|| "-".into())
                );
            }
            Ok(())
        }
        Command::Relay(RelayCommand::Revoke { config, device }) => {
            let cfg = RelayConfig::load(&config)?;
            let reg = open_registry(&cfg)?;
            if crate::relay::webhooks::revoke_device(&reg, &device)? {
                println!(
                    "revoked `{device}`: a running relay closes its connection within a second and refuses it from now on"
                );
            } else {
                println!("`{device}` was already revoked");
            }
            Ok(())
        }
        Command::Relay(RelayCommand::Audit(args)) => audit::run(args),
        #[cfg(feature = "api")]
        Command::Relay(RelayCommand::Webhook(cmd)) => webhooks::run(cmd),
        Command::Relay(RelayCommand::Backup {
            config,
            file,
            with_keys,
            passphrase,
        }) => backup(&config, &file, with_keys, &passphrase),
        Command::Relay(RelayCommand::Restore {
            config,
            file,
            without_keys,
            passphrase,
        }) => restore(&config, &file, without_keys, &passphrase),
        Command::Demo(args) => crate::demo::run(args),
        Command::Phones(cmd) => {
            crate::telemetry::init("warn");
            phones::run(cmd)
        }
        Command::Keys(KeysCommand::Status { config }) => {
            crate::telemetry::init("error");
            if !config.exists() {
                anyhow::bail!(crate::identity::status::not_enrolled(&config));
            }
            let cfg = GatewayConfig::load(&config)?;
            crate::identity::status::run(&config, &cfg.device_id, &cfg.identity)
        }
        Command::Setup(args) => {
            crate::telemetry::init("warn");
            setup::run(*args)
        }
        Command::Relay(RelayCommand::Token(cmd)) => tokens::run(cmd),
        Command::Relay(RelayCommand::ApiKey(cmd)) => api_keys::run(cmd),
        #[cfg(feature = "api")]
        Command::Relay(RelayCommand::ApiTls(cmd)) => api_tls::run(cmd),
        Command::Check(_) | Command::Status(_) => unreachable!("handled in main"),
        Command::Relay(RelayCommand::Ext(cmd)) => extensions::run(cmd),
    }
}

fn backup(
    config: &std::path::Path,
    file: &std::path::Path,
    with_keys: bool,
    pass: &passphrase::PassphraseArgs,
) -> Result<()> {
    use crate::relay::backup;
    let cfg = RelayConfig::load(config)?;
    if pass.given() && !with_keys {
        anyhow::bail!(
            "a passphrase protects the keys only: add --with-keys, or drop the passphrase option"
        );
    }
    // Refused before the passphrase is asked for (backup() checks again).
    if file.symlink_metadata().is_ok() {
        return Err(backup::BackupError::Exists(file.to_path_buf()).into());
    }
    let key = if with_keys {
        // Keys that do not open here fail before the passphrase is asked.
        drop(crate::relay::backup::unseal_keys(
            &cfg.state_dir,
            &cfg.ca_binding,
        )?);
        Some(pass.read(passphrase::Purpose::New, "the backup's keys")?)
    } else {
        None
    };
    let report = backup::backup(&cfg.state_dir, &cfg.ca_binding, file, key.as_ref())?;
    let m = &report.meta;
    println!(
        "backup written to {} ({} bytes, mode 0600): registry schema {} with {} devices, the CA and relay certificates, CA {}",
        file.display(),
        report.bytes,
        m.schema_version,
        m.devices,
        m.ca_fingerprint
    );
    if m.with_keys {
        println!(
            "the fleet CA key and the relay TLS key are in it, encrypted to the passphrase: keep the passphrase apart from the file"
        );
    } else {
        println!(
            "no key is in it: a restore from it needs a new fleet CA and every device re-enrolled (--with-keys includes the keys, encrypted to a passphrase)"
        );
    }
    Ok(())
}

fn restore(
    config: &std::path::Path,
    file: &std::path::Path,
    without_keys: bool,
    pass: &passphrase::PassphraseArgs,
) -> Result<()> {
    use crate::relay::backup::{self, KeysChoice};
    let cfg = RelayConfig::load(config)?;
    let archive = backup::read_archive(file)?;
    let key = match (&archive.keys, without_keys) {
        (Some(_), false) => Some(pass.read(passphrase::Purpose::Existing, "the backup's keys")?),
        (None, false) if pass.given() => {
            anyhow::bail!(
                "{} holds no keys (made without --with-keys); drop the passphrase option to restore it without",
                file.display()
            );
        }
        _ => None,
    };
    let choice = match &key {
        Some(k) => KeysChoice::Passphrase(k),
        None => KeysChoice::Without,
    };
    let report = backup::restore(&archive, &cfg.state_dir, &cfg.ca_binding, choice)?;
    let m = &report.meta;
    println!(
        "restored into {} the backup of {} made {} by voxgate {}: registry with {} devices (schema {}), CA {}",
        cfg.state_dir.display(),
        if m.source_host.is_empty() {
            "?"
        } else {
            &m.source_host
        },
        m.created_utc,
        m.voxgate_version,
        report.registry.devices,
        report.registry.schema_version,
        m.ca_fingerprint
    );
    if report.next == backup::AfterRestore::Ready {
        println!(
            "the keys are sealed to this machine ([ca] in {})",
            cfg.file.display()
        );
    }
    println!(
        "next: {}",
        report.next.instructions(&cfg.file, &cfg.state_dir)
    );
    fleet_ca::settle_owners(&cfg)?;
    if !nix::unistd::Uid::effective().is_root() {
        println!(
            "the files belong to the user that ran this; if the relay runs as another (the unit's `voxgate`): rerun as root, which gives them to [privilege] user (and the issuing keys to [signer] user)"
        );
    }
    Ok(())
}
