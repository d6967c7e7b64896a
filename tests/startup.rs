//! The binary's command line and configuration errors: `--version`, `config validate`, and a
//! bad value stopping start-up with a message naming the key, the value and what is allowed.

use std::process::Command;

fn siprec() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_siprec"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

/// `--version` prints the crate version; `--help` names the environment variables.
#[test]
fn version_and_help() {
    let out = siprec().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = siprec().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("RECORDING_DIR") && help.contains("--config"),
        "{help}"
    );
}

/// A valid file validates (exit 0) and prints the effective configuration; a bad one exits 2
/// naming the key and value; an unknown key is refused.
#[test]
fn config_validate() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[sip]\nports = [5070]\n[media]\nrtp_port_min = 12000\n",
    )
    .unwrap();
    let out = siprec()
        .args(["config", "validate"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("12000"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[media]\nrtp_port_min = 12001\n").unwrap();
    let out = siprec()
        .args(["config", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RTP_PORT_MIN") && err.contains("12001") && err.contains("even"),
        "{err}"
    );

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[sip]\nprots = [5060]\n").unwrap();
    let out = siprec()
        .args(["config", "validate"])
        .arg(&typo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prots"));
}

/// A bad environment value stops the server before it binds anything.
#[test]
fn bad_env_value_stops_startup() {
    let out = siprec().env("HTTP_PORT", "eighty").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP_PORT") && err.contains("eighty") && err.contains("port"),
        "{err}"
    );
}
