//! G.711 μ-law (PCMU), the codec every SIP peer has: the fallback when a
//! peer does not take Opus. A table-free encoder and decoder after ITU-T
//! G.711; at 8 kHz, 160 samples (20 ms) make one RTP payload.

const BIAS: i32 = 0x84;
const CLIP: i32 = 32_635;

/// One 16-bit linear sample to μ-law.
pub fn encode(sample: i16) -> u8 {
    let mut value = i32::from(sample);
    let sign = if value < 0 {
        value = -value;
        0x80
    } else {
        0
    };
    value = value.min(CLIP) + BIAS;
    // The segment is the position of the highest set bit above bit 7.
    let exponent = (31 - (value as u32).leading_zeros())
        .saturating_sub(7)
        .min(7) as i32;
    let mantissa = (value >> (exponent + 3)) & 0x0F;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// One μ-law byte back to a 16-bit linear sample.
pub fn decode(byte: u8) -> i16 {
    let byte = !byte;
    let exponent = i32::from((byte >> 4) & 0x07);
    let mantissa = i32::from(byte & 0x0F);
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    if byte & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_code_points() {
        // Silence is 0xFF; full scale positive and negative saturate.
        assert_eq!(encode(0), 0xFF);
        assert_eq!(decode(0xFF), 0);
        assert_eq!(encode(i16::MAX), 0x80);
        assert_eq!(encode(i16::MIN), 0x00);
        assert_eq!(decode(0x80), 32_124);
        assert_eq!(decode(0x00), -32_124);
    }

    #[test]
    fn round_trip_error_stays_within_the_segment_step() {
        for s in (i16::MIN..=i16::MAX).step_by(7) {
            let back = decode(encode(s));
            let error = (i32::from(s) - i32::from(back)).abs();
            // The quantisation step doubles each segment; the largest is 1024.
            let allowed = (i32::from(s).abs() / 16).max(8) + 8;
            assert!(error <= allowed.min(1100), "{s} -> {back}");
        }
    }
}
