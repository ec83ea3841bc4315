//! ALSA devices backed by files (fixtures/alsa/test.conf.in), shared by the
//! device tests. Each test binary that uses them holds a single test: ALSA
//! reads its configuration from the environment once per process.

use std::path::{Path, PathBuf};

/// The test devices' configuration template (`@DIR@` to be replaced).
pub const TEMPLATE: &str = include_str!("../../fixtures/alsa/test.conf.in");

/// Writes the test devices' configuration for files in `dir`; returns the
/// value for `ALSA_CONFIG_PATH` (ALSA's own configuration, then ours) and
/// the file, which a test may extend.
pub fn file_devices(dir: &Path) -> (String, PathBuf) {
    let conf = dir.join("test.conf");
    std::fs::write(&conf, TEMPLATE.replace("@DIR@", dir.to_str().unwrap())).unwrap();
    (
        format!("/usr/share/alsa/alsa.conf:{}", conf.display()),
        conf,
    )
}

/// Makes a FIFO at `path`: a device file that a test feeds or drains.
pub fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
}
