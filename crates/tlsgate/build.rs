//! Writes the man pages (clap_mangen) and the shell completions
//! (clap_complete) of the `tlsgate` command line, from the same clap
//! definitions the binary is built with (`src/cli.rs`), for the Debian
//! package: `cargo deb -p tlsgate` ships them from
//! `target/<profile>/tlsgate-doc/` (see `[package.metadata.deb]` in
//! Cargo.toml). A build step rather than a command of `tlsgate`, so the
//! appliance has no extra user-facing command and the pages can never
//! disagree with the binary they are packaged with.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

#[allow(dead_code)]
#[path = "src/cli.rs"]
mod cli;

fn main() -> std::io::Result<()> {
    println!("cargo::rerun-if-changed=src/cli.rs");
    println!("cargo::rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| missing("OUT_DIR"))?);
    let doc = profile_dir(&out_dir)?.join("tlsgate-doc");
    let man = doc.join("man");
    let completions = doc.join("completions");
    for dir in [&man, &completions] {
        // Pages of a command that was renamed or removed must not linger.
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
    }
    clap_mangen::generate_to(cli::Cli::command(), &man)?;
    write_main_page(&man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cli::Cli::command(), "tlsgate", &completions)?;
    }
    Ok(())
}

/// Rewrites `tlsgate.1` with the text after `--help` (environment, signals,
/// exit status) as sections of their own, kept as written: clap_mangen
/// would put it under one "EXTRA" heading and refill its aligned columns.
fn write_main_page(man_dir: &Path) -> std::io::Result<()> {
    let mut cmd = cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let page = clap_mangen::Man::new(cmd);
    let mut roff = Vec::new();
    page.render_title(&mut roff)?;
    page.render_name_section(&mut roff)?;
    page.render_synopsis_section(&mut roff)?;
    page.render_description_section(&mut roff)?;
    page.render_options_section(&mut roff)?;
    page.render_subcommands_section(&mut roff)?;
    for block in cli::AFTER_HELP.split("\n\n") {
        let (heading, body) = block.split_once(":\n").unwrap_or(("NOTES", block));
        roff.extend(format!(".SH \"{}\"\n.nf\n", heading.to_uppercase()).bytes());
        for line in body.lines() {
            roff.extend(preformatted(line).bytes());
            roff.push(b'\n');
        }
        roff.extend(b".fi\n");
    }
    roff.extend(FILES.bytes());
    page.render_version_section(&mut roff)?;
    std::fs::write(man_dir.join(page.get_filename()), roff)
}

/// Where the Debian package puts things (README, "Install on an appliance").
const FILES: &str = r#".SH FILES
.TP
.I /etc/tlsgate/tlsgate.toml
The configuration of the tlsgate service (a conffile; checked with
.B tlsgate check
before every start).
.TP
.I /etc/tlsgate/ca/
The interception CA (ca.pem, ca.key mode 0600), created at installation when absent.
.TP
.I /var/log/tlsgate/
The connection log (and the key log, if configured); owned by the tlsgate user.
.TP
.I /var/lib/tlsgate/
The decrypted capture, if configured; owned by the tlsgate user.
.TP
.I /run/tlsgate/control.sock
The control socket (tlsgate learned).
.TP
.I /lib/systemd/system/tlsgate.service
The unit: systemctl enable --now tlsgate; systemctl reload tlsgate sends SIGHUP.
"#;

/// `line` as literal roff text.
fn preformatted(line: &str) -> String {
    let escaped = line.replace('\\', "\\e");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// `target/<profile>` (or `target/<triple>/<profile>`): OUT_DIR is
/// `<that>/build/tlsgate-<hash>/out`. cargo-deb resolves an asset path
/// `target/release/...` to the directory of the profile it builds.
fn profile_dir(out_dir: &Path) -> std::io::Result<&Path> {
    out_dir
        .ancestors()
        .nth(3)
        .ok_or_else(|| std::io::Error::other(format!("unexpected OUT_DIR {}", out_dir.display())))
}

fn missing(variable: &str) -> std::io::Error {
    std::io::Error::other(format!("cargo did not set {variable}"))
}
