use std::time::Duration;

use super::SyncSettings;

fn settings(url: &str, token: &str, kiosk: &str) -> SyncSettings {
    SyncSettings {
        url: url.parse().unwrap(),
        token: token.to_string().into(),
        kiosk_id: kiosk.into(),
        batch_size: 500,
        interval: Duration::from_secs(60),
        timeout: Duration::from_secs(30),
        retention: Duration::from_secs(86_400),
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(300),
        max_attempts: None,
    }
}

/// The fingerprint is stored in the database and compared after upgrades:
/// a known answer (computed with Python's hashlib) pins it, whatever the
/// compiler or platform.
#[test]
fn the_settings_fingerprint_is_a_fixed_function_of_the_settings() {
    let s = settings("https://up.example/v1/batches", "token-1", "lobby-1");
    assert_eq!(
        s.fingerprint(),
        "be65742383e4f55bf00813504ea7d25a128752517b0d909ac413333d770b3ec2"
    );
    assert_eq!(s.fingerprint().len(), 64);
    // Timing settings do not matter; where, who and as whom do.
    let mut same = s.clone();
    same.interval = Duration::from_secs(5);
    same.batch_size = 10;
    assert_eq!(same.fingerprint(), s.fingerprint());
    for other in [
        settings("https://up.example/v1/batchez", "token-1", "lobby-1"),
        settings("https://up.example/v1/batches", "token-2", "lobby-1"),
        settings("https://up.example/v1/batches", "token-1", "lobby-2"),
        // Fields are length-prefixed: moving a character across a boundary
        // is another input.
        settings("https://up.example/v1/batches", "token-1l", "obby-1"),
    ] {
        assert_ne!(other.fingerprint(), s.fingerprint());
    }
}
