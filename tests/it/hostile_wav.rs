//! Hostile WAV files (a technician's `--input`, a configured prompt, a
//! `wav:` device): random bytes, and RIFF headers with random format
//! fields and truncated data, are read or refused with an error, never a
//! panic. Cases: 256 by default, `PROPTEST_CASES=100000` for the full run.

use proptest::prelude::*;

/// A RIFF/WAVE header with the given `fmt ` fields, then `data`.
fn wav_bytes(
    format: u16,
    channels: u16,
    rate: u32,
    bits: u16,
    block: u16,
    data: &[u8],
    lie: u32,
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).wrapping_add(lie).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&format.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&rate.wrapping_mul(u32::from(block)).to_le_bytes());
    b.extend_from_slice(&block.to_le_bytes());
    b.extend_from_slice(&bits.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).wrapping_add(lie).to_le_bytes());
    b.extend_from_slice(data);
    b
}

fn read_both(bytes: &[u8]) {
    let dir = std::env::temp_dir().join(format!("kiosk-hostile-wav-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("in.wav");
    std::fs::write(&path, bytes).unwrap();
    let _ = kiosk_gateway::audio::read_wav(&path);
    let _ = kiosk_gateway::audio::read_wav_bytes(bytes);
    // As a configured failure prompt: checked at start-up, then played.
    let settings = kiosk_gateway::audio::AudioSettings::default();
    if let Ok(prompt) = kiosk_gateway::audio::Prompt::open(&path, &settings) {
        let packets = prompt.packets().unwrap();
        for packet in packets {
            packet.unwrap();
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_are_refused_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        read_both(&bytes);
    }

    #[test]
    fn headers_with_any_format_fields_are_read_or_refused(
        format in prop_oneof![Just(1u16), Just(3u16), Just(0xFFFEu16), any::<u16>()],
        channels in prop_oneof![0u16..3, any::<u16>()],
        rate in prop_oneof![Just(16_000u32), Just(48_000u32), Just(0u32), any::<u32>()],
        bits in prop_oneof![Just(8u16), Just(16u16), Just(24u16), Just(32u16), any::<u16>()],
        block in any::<u16>(),
        data in prop::collection::vec(any::<u8>(), 0..256),
        lie in prop_oneof![Just(0u32), any::<u32>()],
    ) {
        read_both(&wav_bytes(format, channels, rate, bits, block, &data, lie));
    }
}
