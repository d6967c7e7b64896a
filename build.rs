//! Records the git commit and build date for `/status` (empty when not built from git), and
//! generates `siprecctl`'s shell completions and man page from its clap definition into
//! OUT_DIR (the binary prints them: `siprecctl completions bash`, `siprecctl man`).

#[allow(dead_code)]
#[path = "src/bin/siprecctl/cli.rs"]
mod cli;

fn main() {
    let hash = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("cargo:rustc-env=SIPREC_GIT_HASH={hash}");
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("cargo:rustc-env=SIPREC_BUILD_DATE={date}");
    siprecctl_docs();
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}

fn siprecctl_docs() {
    use clap::CommandFactory;
    use clap_complete::Shell;
    println!("cargo:rerun-if-changed=src/bin/siprecctl/cli.rs");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut cmd = cli::Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "siprecctl", &out)
            .expect("write a completion script to OUT_DIR");
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut page)
        .expect("render the man page");
    std::fs::write(out.join("siprecctl.1"), page).expect("write the man page to OUT_DIR");
}
