//! `voxgate-docgen OUTDIR`: writes voxgate's man pages (`voxgate.1`, one
//! per subcommand) and its
//! shell completions (`voxgate.bash`, `_voxgate`, `voxgate.fish`) from the
//! command line's clap definition, for `scripts/package-deb`.
//!
//! The pages describe the binary built with the same features as this
//! program: `cargo run -p voxgate-docgen` for the default build (the
//! relay's, with the operator API), `cargo run -p voxgate-docgen
//! --no-default-features` for the box's (`relay api-tls` and `relay
//! webhook` absent). scripts/package-deb picks the one that matches each
//! package's binary.
//!
//! A separate program rather than a hidden subcommand: clap_mangen and
//! clap_complete would otherwise add their code to every box's binary,
//! whose size is a tracked figure (docs/BENCHMARKS.md).

use clap::CommandFactory;
use clap_complete::Shell;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: voxgate-docgen OUTDIR");
        return ExitCode::from(2);
    };
    match generate(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxgate-docgen: {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

fn generate(out: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let cmd = voxgate::cli::Cli::command();
    // voxgate.1 and one page per visible subcommand (voxgate-relay-run.1
    // ...), which the top page's SUBCOMMANDS section names.
    clap_mangen::generate_to(cmd.clone(), out)?;
    for (shell, name) in [
        (Shell::Bash, "voxgate.bash"),
        (Shell::Zsh, "_voxgate"),
        (Shell::Fish, "voxgate.fish"),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "voxgate", &mut text);
        std::fs::write(out.join(name), text)?;
    }
    Ok(())
}
