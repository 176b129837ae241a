//! G.711 sample helpers (ITU-T G.711 µ-law and A-law) over `audio-codec-algorithms`.
//!
//! Used at load time (prompt encoding) and by the test phone (decoding); never per packet.

use super::G711;

/// µ-law code of digital silence (encodes 0).
pub const ULAW_SILENCE: u8 = 0xFF;
/// A-law code of digital silence (encodes 0; 0xD5 is the even-bit-inverted zero).
pub const ALAW_SILENCE: u8 = 0xD5;

/// Encodes one linear 16-bit sample.
pub fn encode_sample(codec: G711, sample: i16) -> u8 {
    match codec {
        G711::Ulaw => audio_codec_algorithms::encode_ulaw(sample),
        G711::Alaw => audio_codec_algorithms::encode_alaw(sample),
    }
}

/// Decodes one G.711 byte to a linear 16-bit sample.
pub fn decode_sample(codec: G711, byte: u8) -> i16 {
    match codec {
        G711::Ulaw => audio_codec_algorithms::decode_ulaw(byte),
        G711::Alaw => audio_codec_algorithms::decode_alaw(byte),
    }
}

/// Encodes a slice of samples.
pub fn encode(codec: G711, samples: &[i16]) -> Vec<u8> {
    samples.iter().map(|&s| encode_sample(codec, s)).collect()
}

/// Decodes a slice of G.711 bytes.
pub fn decode(codec: G711, bytes: &[u8]) -> Vec<i16> {
    bytes.iter().map(|&b| decode_sample(codec, b)).collect()
}

/// Decodes into an existing buffer (same length as `bytes`; extra output is untouched).
pub fn decode_into(codec: G711, bytes: &[u8], out: &mut [i16]) {
    for (o, &b) in out.iter_mut().zip(bytes) {
        *o = decode_sample(codec, b);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn silence_bytes_encode_zero_and_decode_to_zero() {
        for codec in [G711::Ulaw, G711::Alaw] {
            assert_eq!(encode_sample(codec, 0), codec.silence());
            assert!(decode_sample(codec, codec.silence()).abs() <= 8);
        }
    }

    #[test]
    fn round_trip_is_close() {
        for codec in [G711::Ulaw, G711::Alaw] {
            let pcm: Vec<i16> = (-32000..32000).step_by(97).map(|x| x as i16).collect();
            let back = decode(codec, &encode(codec, &pcm));
            for (a, b) in pcm.iter().zip(&back) {
                let err = (i32::from(*a) - i32::from(*b)).abs();
                // G.711 keeps about 4 % relative precision (plus a small floor near zero).
                assert!(err <= i32::from(a.unsigned_abs() / 16) + 16, "{a} -> {b}");
            }
        }
    }
}
