//! The shipped unit file is valid for this systemd and as locked down as a
//! service that needs sound devices, network and real-time threads can be.

use std::path::Path;
use std::process::Command;

/// The unit with its ExecStart pointed at the binary under test, as
/// `systemd-analyze verify` checks that the executable exists.
fn unit_for_test(dir: &Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/kiosk-gateway.service"),
    )
    .unwrap();
    let path = dir.join("kiosk-gateway.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/bin/kiosk-gateway",
            env!("CARGO_BIN_EXE_kiosk-gateway"),
        ),
    )
    .unwrap();
    path
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit_for_test(dir.path()))
        .output()
        .expect("systemd-analyze is installed (package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("kiosk-gateway.service:"),
        "warnings: {stderr}"
    );
}

#[test]
fn unit_exposure_is_at_most_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit_for_test(dir.path()))
        .output()
        .expect("systemd-analyze is installed (package systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for kiosk-gateway.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{text}");
    for kept in ["DeviceAllow=", "RestrictRealtime=", "PrivateNetwork="] {
        assert!(
            text.lines().any(|l| l.contains('✗') && l.contains(kept)),
            "{kept} should stay open for audio, realtime and network"
        );
    }
}
