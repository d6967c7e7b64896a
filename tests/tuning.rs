//! tuning/: the sysctl file only names keys this kernel knows (or marks them optional with '-'),
//! every line is `key = value`, and the IRQ script runs (dry) against the loopback interface.

use std::process::Command;

#[test]
fn sysctl_file_is_well_formed() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tuning/99-siprec.conf"
    ))
    .unwrap();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line
            .split_once(" = ")
            .unwrap_or_else(|| panic!("not key = value: {line}"));
        assert!(!value.trim().is_empty(), "{line}");
        let optional = key.starts_with('-');
        let key = key.trim_start_matches('-');
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        assert!(key.chars().all(allowed), "{line}");
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        assert!(
            optional || std::path::Path::new(&path).exists(),
            "unknown sysctl {key}"
        );
    }
}

#[test]
fn irq_script_dry_run() {
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tuning/irq-affinity.sh"
        ))
        .args(["lo", "0", "--dry-run"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("irq-affinity: lo → cores 0 (mask 1)"),
        "{text}"
    );
    let bad = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tuning/irq-affinity.sh"
        ))
        .arg("no-such-iface0")
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
