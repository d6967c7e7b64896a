//! The Debian package (systemd/deb.sh, cargo-deb): built from the suite's binaries, installed
//! with dpkg into a throwaway root (maintainer scripts run there, chrootless, never on the
//! host), upgraded in place, removed and purged; what it installs is checked at each step.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run .ci/deps.sh)"));
    assert!(
        out.status.success(),
        "{cmd:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// dpkg acting on the throwaway root: its database and files under `root`, maintainer scripts
/// run on the host's tools with DPKG_ROOT set (our scripts then touch nothing else).
fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
        ]);
    cmd
}

/// A root holding just what dpkg and useradd need: an empty package database and the base
/// account files.
fn throwaway_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let db = root.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(db.join(d)).unwrap();
    }
    std::fs::write(db.join("status"), "").unwrap();
    std::fs::write(db.join("available"), "").unwrap();
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    for (file, line) in [
        ("passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("group", "root:x:0:\n"),
        ("shadow", "root:*:20000:0:99999:7:::\n"),
        ("gshadow", "root:*::\n"),
    ] {
        std::fs::write(etc.join(file), line).unwrap();
    }
    root
}

/// `user`'s uid in the root's passwd.
fn uid_of(root: &Path, user: &str) -> Option<u32> {
    std::fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == user)
        .map(|f| f[2].parse().unwrap())
}

#[test]
fn deb_installs_upgrades_and_purges_in_a_throwaway_root() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let is_root = run(Command::new("id").arg("-u")).stdout.starts_with(b"0\n");
    assert!(
        is_root,
        "dpkg installs into the throwaway root as root (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("deb");
    run(Command::new(manifest().join("systemd/deb.sh"))
        .arg("--dev")
        .arg(&out));
    let deb = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");

    let info = text(&run(Command::new("dpkg-deb").arg("--info").arg(&deb)));
    assert!(info.contains("Package: siprec"), "{info}");
    let depends = info
        .lines()
        .find(|l| l.trim_start().starts_with("Depends:"));
    let depends = depends.unwrap_or_else(|| panic!("no Depends: {info}"));
    for dep in ["libopus0", "libssl3", "adduser"] {
        assert!(depends.contains(dep), "{depends}");
    }
    for script in ["postinst", "prerm", "postrm"] {
        assert!(info.contains(script), "{script} missing: {info}");
    }

    let root = throwaway_root(dir.path());
    run(dpkg(&root).arg("-i").arg(&deb));
    let status = text(&run(dpkg(&root).args(["-s", "siprec"])));
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(
        status.contains("/etc/siprec/siprec.toml"),
        "a conffile: {status}"
    );

    // The files.
    for (path, mode) in [
        ("usr/bin/siprec", 0o755),
        ("usr/bin/siprecctl", 0o755),
        ("usr/bin/siprec-bench", 0o755),
        ("lib/systemd/system/siprec.service", 0o644),
        ("etc/siprec/siprec.toml", 0o644),
        ("usr/lib/sysctl.d/99-siprec.conf", 0o644),
        ("usr/share/siprec/irq-affinity.sh", 0o755),
        ("usr/share/bash-completion/completions/siprecctl", 0o644),
        ("usr/share/doc/siprec/docs/operations.md", 0o644),
        ("usr/share/doc/siprec/sipp/uac_basic.xml", 0o644),
    ] {
        let meta = std::fs::metadata(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{path}");
    }
    for man in [
        "usr/share/man/man1/siprecctl.1",
        "usr/share/man/man8/siprec.8",
    ] {
        let plain = root.join(man);
        let gz = root.join(format!("{man}.gz"));
        assert!(plain.exists() || gz.exists(), "{man}");
    }
    let version = text(&run(
        Command::new(root.join("usr/bin/siprec")).arg("--version")
    ));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    // The packaged configuration is valid as shipped.
    let checked = run(Command::new(root.join("usr/bin/siprec"))
        .args(["config", "validate"])
        .arg(root.join("etc/siprec/siprec.toml")));
    assert!(
        text(&checked).contains("/var/lib/siprec/recordings"),
        "{}",
        text(&checked)
    );

    // The user and the state directory from postinst.
    let uid = uid_of(&root, "siprec").expect("postinst created the siprec user");
    assert!(uid > 0 && uid < 1000, "a system uid: {uid}");
    for d in [
        "var/lib/siprec",
        "var/lib/siprec/recordings",
        "var/lib/siprec/models",
    ] {
        let meta = std::fs::metadata(root.join(d)).unwrap_or_else(|e| panic!("{d}: {e}"));
        assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o750), "{d}");
    }

    // The installed unit verifies (ExecStart pointed at the installed binary).
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/siprec.service"))
        .unwrap()
        .replace(
            "/usr/bin/siprec",
            &root.join("usr/bin/siprec").display().to_string(),
        );
    assert!(unit.contains("User=siprec") && unit.contains("Type=notify"));
    let unit_path = dir.path().join("siprec.service");
    std::fs::write(&unit_path, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
        .unwrap();
    let verify = text(&verify);
    let ours: Vec<&str> = verify
        .lines()
        .filter(|l| l.contains("siprec.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{verify}");

    // Upgrade in place: an operator's edit of the conffile and the recordings survive, the
    // user is not created twice.
    let conf = root.join("etc/siprec/siprec.toml");
    let edited = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("format = \"wav\"", "format = \"flac\"");
    std::fs::write(&conf, &edited).unwrap();
    let recording = root.join("var/lib/siprec/recordings/2026-11-29/call_1/mixed.wav");
    std::fs::create_dir_all(recording.parent().unwrap()).unwrap();
    std::fs::write(&recording, b"RIFF").unwrap();
    run(dpkg(&root).args(["--force-confold", "-i"]).arg(&deb));
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), edited);
    assert_eq!(uid_of(&root, "siprec"), Some(uid));
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let entries = passwd.lines().filter(|l| l.starts_with("siprec:")).count();
    assert_eq!(entries, 1, "{passwd}");

    // Remove keeps the configuration; purge removes it; recordings are never deleted.
    run(dpkg(&root).args(["-r", "siprec"]));
    assert!(!root.join("usr/bin/siprec").exists());
    assert!(conf.exists(), "remove keeps conffiles");
    run(dpkg(&root).args(["-P", "siprec"]));
    assert!(!conf.exists(), "purge removes conffiles");
    assert!(recording.exists(), "purge keeps the recordings");
    let status = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["-s", "siprec"])
        .output()
        .unwrap();
    assert!(!status.status.success(), "purged: {}", text(&status));
}
