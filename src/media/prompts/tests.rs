use super::pack::FilesToml;
use super::*;
use crate::media::{g711, Phrase, FRAME_SAMPLES, G711};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[test]
fn builtin_loads_en_and_nl() {
    let lib = PromptLibrary::builtin();
    assert_eq!(lib.locales(), vec!["en".to_owned(), "nl".to_owned()]);
    let en = lib.get("en").unwrap();
    assert_eq!(en.locale(), "en");
    assert_eq!(en.language(), "English");
    assert_eq!(lib.get("nl").unwrap().language(), "Nederlands");
    assert_eq!(en.digit_pause(), Duration::from_millis(350));
    assert_eq!(en.group_pause(), Duration::from_millis(800));
    for p in Phrase::ALL {
        assert!(en.pcm(p).len() > 800, "{p:?} too short");
    }
    assert!(en.pcm(Phrase::Digit(10)).is_empty());
    let intro = en.duration(Phrase::Intro);
    assert!(intro > Duration::from_millis(500) && intro < Duration::from_secs(5));
    assert!(en.frames(Phrase::Digit(10), G711::Ulaw).is_empty());
}

#[test]
fn load_dir_reads_the_shipped_packs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
    let lib = PromptLibrary::load_dir(&dir).unwrap();
    assert_eq!(lib.locales(), vec!["en".to_owned(), "nl".to_owned()]);
    let builtin = PromptLibrary::builtin();
    assert_eq!(
        lib.get("nl").unwrap().pcm(Phrase::Intro),
        builtin.get("nl").unwrap().pcm(Phrase::Intro)
    );
}

#[test]
fn frames_are_160_bytes_with_silence_padding() {
    let lib = PromptLibrary::builtin();
    let pack = lib.get("en").unwrap();
    for codec in [G711::Ulaw, G711::Alaw] {
        for p in Phrase::ALL {
            let pcm = pack.pcm(p);
            let frames = pack.frames(p, codec);
            assert_eq!(frames.len(), pcm.len().div_ceil(FRAME_SAMPLES));
            let flat: Vec<u8> = frames.iter().flatten().copied().collect();
            assert_eq!(&flat[..pcm.len()], g711::encode(codec, pcm).as_slice());
            assert!(flat[pcm.len()..].iter().all(|&b| b == codec.silence()));
        }
    }
}

// --- error cases: each message names the file -------------------------------

fn write_wav(path: &Path, channels: u16, bits: u16, rate: u32, n: usize) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..n * usize::from(channels) {
        let v = ((i as f64 * 0.3).sin() * 60.0) as i32;
        if bits == 8 {
            w.write_sample(v as i8).unwrap();
        } else {
            w.write_sample((v * 100) as i16).unwrap();
        }
    }
    w.finalize().unwrap();
}

/// A complete valid pack in `<tmp>/xx`.
fn make_pack() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("xx");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("pack.toml"), "language = \"Test\"\n").unwrap();
    for name in FilesToml::default().digits.iter().chain(
        ["intro.wav", "repeat.wav", "outro.wav", "press-key.wav"]
            .map(String::from)
            .iter(),
    ) {
        write_wav(&dir.join(name), 1, 16, 8000, 1000);
    }
    (tmp, dir)
}

fn load_err(tmp: &tempfile::TempDir) -> String {
    PromptLibrary::load_dir(tmp.path()).unwrap_err().to_string()
}

#[test]
fn minimal_pack_loads_with_defaults() {
    let (tmp, _) = make_pack();
    let lib = PromptLibrary::load_dir(tmp.path()).unwrap();
    let pack = lib.get("xx").unwrap();
    assert_eq!(pack.language(), "Test");
    assert_eq!(pack.digit_pause(), Duration::from_millis(400));
    assert_eq!(pack.pcm(Phrase::Digit(7)).len(), 1000);
    assert_eq!(pack.frames(Phrase::Digit(7), G711::Alaw).len(), 7);
}

#[test]
fn missing_file_is_named() {
    let (tmp, dir) = make_pack();
    std::fs::remove_file(dir.join("7.wav")).unwrap();
    let msg = load_err(&tmp);
    assert!(
        msg.contains("xx/7.wav") && msg.contains("cannot read"),
        "{msg}"
    );
}

#[test]
fn stereo_wav_is_rejected_by_name() {
    let (tmp, dir) = make_pack();
    write_wav(&dir.join("intro.wav"), 2, 16, 8000, 1000);
    let msg = load_err(&tmp);
    assert!(
        msg.contains("xx/intro.wav") && msg.contains("mono"),
        "{msg}"
    );
}

#[test]
fn eight_bit_wav_is_rejected_by_name() {
    let (tmp, dir) = make_pack();
    write_wav(&dir.join("3.wav"), 1, 8, 8000, 1000);
    let msg = load_err(&tmp);
    assert!(msg.contains("xx/3.wav") && msg.contains("8-bit"), "{msg}");
}

#[test]
fn other_rates_are_resampled_to_8k() {
    let (tmp, dir) = make_pack();
    // 0.5 s of a 440 Hz tone at 44.1 kHz.
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 44_100,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(dir.join("outro.wav"), spec).unwrap();
    for i in 0..22_050 {
        let v = (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / 44_100.0).sin();
        w.write_sample((v * 10_000.0) as i16).unwrap();
    }
    w.finalize().unwrap();
    let lib = PromptLibrary::load_dir(tmp.path()).unwrap();
    let pcm = lib.get("xx").unwrap().pcm(Phrase::Outro).to_vec();
    assert!((3990..=4010).contains(&pcm.len()), "{}", pcm.len());
    // Same tone at 8 kHz, normalised from 10000 to the -3 dBFS peak. (Trimming may
    // shift the start by the resampler's ramp-in, so compare level and frequency,
    // not samples.)
    let mid = &pcm[1000..3000];
    let peak = mid.iter().map(|s| i32::from(*s).abs()).max().unwrap();
    assert!((22_500..=23_300).contains(&peak), "peak {peak}");
    let crossings = mid.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    // 440 Hz over 0.25 s: 220 zero crossings.
    assert!(
        (218..=222).contains(&crossings),
        "{crossings} zero crossings"
    );
}

/// Writes a G.711 WAV by hand (format tag 6 = A-law, 7 = µ-law).
fn write_g711_wav(path: &Path, tag: u16, channels: u16, data: &[u8]) {
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(4 + 26 + 8 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&18u32.to_le_bytes());
    b.extend_from_slice(&tag.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&8000u32.to_le_bytes());
    b.extend_from_slice(&(8000 * u32::from(channels)).to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&8u16.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

#[test]
fn g711_wavs_are_read() {
    let (tmp, dir) = make_pack();
    // Peak at -3 dBFS already: loaded without a gain, so bit-exact.
    let pcm: Vec<i16> = (0..800).map(|i| ((i % 50) * 900 - 22_500) as i16).collect();
    write_g711_wav(&dir.join("1.wav"), 7, 1, &g711::encode(G711::Ulaw, &pcm));
    write_g711_wav(&dir.join("2.wav"), 6, 1, &g711::encode(G711::Alaw, &pcm));
    let lib = PromptLibrary::load_dir(tmp.path()).unwrap();
    let pack = lib.get("xx").unwrap();
    let u = pack.pcm(Phrase::Digit(1));
    assert_eq!(u, g711::decode(G711::Ulaw, &g711::encode(G711::Ulaw, &pcm)));
    // Re-encoding in the same law gives back the file's bytes exactly.
    assert_eq!(
        pack.frames(Phrase::Digit(1), G711::Ulaw)[0][..],
        g711::encode(G711::Ulaw, &pcm)[..160]
    );
    assert_eq!(pack.pcm(Phrase::Digit(2)).len(), 800);

    write_g711_wav(&dir.join("2.wav"), 6, 2, &g711::encode(G711::Alaw, &pcm));
    let msg = load_err(&tmp);
    assert!(msg.contains("xx/2.wav") && msg.contains("mono"), "{msg}");
}

#[test]
fn not_a_wav_is_rejected_by_name() {
    let (tmp, dir) = make_pack();
    std::fs::write(dir.join("repeat.wav"), b"hello").unwrap();
    let msg = load_err(&tmp);
    assert!(
        msg.contains("xx/repeat.wav") && msg.contains("WAV"),
        "{msg}"
    );
}

#[test]
fn bad_pack_toml_is_named() {
    for (text, needle) in [
        ("language = ", "pack.toml"),
        ("langauge = \"x\"", "langauge"),
        ("language = \"x\"\ndigit_pause = \"soon\"", "digit_pause"),
        (
            "language = \"x\"\n[files]\ndigits = [\"0.wav\"]",
            "files.digits",
        ),
        (
            "language = \"x\"\n[files]\nintro = \"../../etc/passwd\"",
            "plain file name",
        ),
    ] {
        let (tmp, dir) = make_pack();
        std::fs::write(dir.join("pack.toml"), text).unwrap();
        let msg = load_err(&tmp);
        assert!(
            msg.contains("xx/pack.toml") && msg.contains(needle),
            "{text}: {msg}"
        );
    }
}

fn write_pcm(path: &Path, pcm: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in pcm {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

#[test]
fn silence_is_trimmed_and_level_normalised() {
    let (tmp, dir) = make_pack();
    // 0.5 s of hiss, 0.2 s of a quiet tone (-24 dBFS), 0.3 s of hiss.
    let hiss = |i: usize| ((i * 7919) % 41) as i16 - 20;
    let mut pcm: Vec<i16> = (0..4000).map(hiss).collect();
    pcm.extend((0..1600).map(|i| ((i as f32 * 0.5).sin() * 2000.0) as i16));
    pcm.extend((0..2400).map(hiss));
    write_pcm(&dir.join("5.wav"), &pcm);
    let lib = PromptLibrary::load_dir(tmp.path()).unwrap();
    let got = lib.get("xx").unwrap().pcm(Phrase::Digit(5)).to_vec();
    // The tone and 20 ms either side (plus up to a 10 ms window of rounding).
    assert!(
        (1600 + 2 * 160..=1600 + 2 * 160 + 2 * 80).contains(&got.len()),
        "{}",
        got.len()
    );
    let peak = got.iter().map(|s| i32::from(*s).abs()).max().unwrap();
    assert!((23_000..=23_400).contains(&peak), "peak {peak}");
}

#[test]
fn a_silent_file_is_rejected_by_name() {
    let (tmp, dir) = make_pack();
    write_pcm(&dir.join("intro.wav"), &[3; 4000]);
    let msg = load_err(&tmp);
    assert!(
        msg.contains("xx/intro.wav") && msg.contains("silent"),
        "{msg}"
    );
}

#[test]
fn builtin_packs_pass_the_check_and_report_every_phrase() {
    let lib = PromptLibrary::builtin_checked().unwrap();
    let report = lib.report();
    assert!(report.contains("en (English)"), "{report}");
    assert!(report.contains("nl (Nederlands)"), "{report}");
    assert_eq!(report.matches(" press-key ").count(), 2, "{report}");
    // "digit 9" and "digit 9 final", in both packs.
    assert_eq!(report.matches(" digit 9 ").count(), 4, "{report}");
    assert_eq!(report.matches(" digit 9 final ").count(), 2, "{report}");
    assert_eq!(
        report
            .matches("final forms of the digits: 10 of 10")
            .count(),
        2
    );
    // The shipped packs are what `prompts check` asks of a pack.
    assert_eq!(lib.problems(), Vec::<String>::new(), "{report}");
    assert_eq!(report.matches("0 problems found").count(), 2, "{report}");
}

#[test]
fn problems_name_the_file_to_fix() {
    let (tmp, dir) = make_pack();
    // A tone from the first sample to the last: a cut recording.
    let tone: Vec<i16> = (0..4000)
        .map(|n| (8000.0 * (f64::from(n) * 440.0 / 8000.0 * std::f64::consts::TAU).sin()) as i16)
        .collect();
    write_pcm(&dir.join("7.wav"), &tone);
    let lib = PromptLibrary::load_dir(tmp.path()).unwrap();
    let problems = lib.problems();
    let want = format!("{}: digit 7: clipped onset", dir.join("7.wav").display());
    assert!(
        problems.iter().any(|p| p.starts_with(&want)),
        "{problems:?}"
    );
    // make_pack's short test tones have problems of their own, each under its file.
    let intro = format!("{}: intro: short", dir.join("intro.wav").display());
    assert!(
        problems.iter().any(|p| p.starts_with(&intro)),
        "{problems:?}"
    );
}

#[test]
fn a_single_pack_folder_loads_alone() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/nl");
    let lib = PromptLibrary::load_dir(&dir).unwrap();
    assert_eq!(lib.locales(), vec!["nl".to_owned()]);
    // `prompts/nl/.` names the same folder.
    let lib = PromptLibrary::load_dir(&dir.join(".")).unwrap();
    assert_eq!(lib.locales(), vec!["nl".to_owned()]);
}

#[test]
fn final_forms_are_optional_and_fall_back_to_the_plain_digit() {
    let (tmp, dir) = make_pack();
    // 4-final.wav by convention; no other final form.
    write_wav(&dir.join("4-final.wav"), 1, 16, 8000, 1200);
    let lib = PromptLibrary::load_dir(tmp.path()).unwrap();
    let pack = lib.get("xx").unwrap();
    assert!(pack.has_final(4) && !pack.has_final(5));
    assert_eq!(pack.pcm(Phrase::FinalDigit(4)).len(), 1200);
    assert_eq!(
        pack.pcm(Phrase::FinalDigit(5)),
        pack.pcm(Phrase::Digit(5)),
        "missing final form plays the plain digit"
    );
    assert!(pack.pcm(Phrase::FinalDigit(10)).is_empty());
    assert!(lib.report().contains("final forms of the digits: 1 of 10"));

    // Named in pack.toml: then all ten must be there.
    let names: Vec<String> = (0..10).map(|d| format!("\"{d}-final.wav\"")).collect();
    std::fs::write(
        dir.join("pack.toml"),
        format!(
            "language = \"Test\"\n[files]\ndigits_final = [{}]\n",
            names.join(", ")
        ),
    )
    .unwrap();
    let msg = load_err(&tmp);
    assert!(
        msg.contains("xx/0-final.wav") && msg.contains("cannot read"),
        "{msg}"
    );
    std::fs::write(
        dir.join("pack.toml"),
        "language = \"Test\"\n[files]\ndigits_final = [\"4-final.wav\"]\n",
    )
    .unwrap();
    assert!(load_err(&tmp).contains("files.digits_final"));
}

#[test]
fn the_check_finds_what_a_listener_would_suffer_from() {
    let tone = |n: usize, amp: f32| -> Vec<i16> {
        (0..n)
            // 1.27 kHz: mid-band.
            .map(|i| ((i as f32).sin() * amp) as i16)
            .collect()
    };
    let quiet = vec![0i16; 160];
    // A clean digit: 20 ms silence, 400 ms of sound, 20 ms silence.
    let mut clean = quiet.clone();
    clean.extend(tone(3200, 4_000.0));
    clean.extend(&quiet);
    let c = check_phrase(Phrase::Digit(5), &clean);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    // Starts and ends mid-sound.
    let cut = tone(3200, 4_000.0);
    let p = check_phrase(Phrase::Digit(5), &cut).problems.join("; ");
    assert!(
        p.contains("clipped onset") && p.contains("clipped tail"),
        "{p}"
    );
    // Half a second of silence inside a digit, and too long.
    let mut gap = clean.clone();
    gap.extend(vec![0i16; 4000]);
    gap.extend(&clean);
    let p = check_phrase(Phrase::FinalDigit(5), &gap)
        .problems
        .join("; ");
    assert!(p.contains("silence inside") && p.contains("long"), "{p}");
    // Too short.
    let mut short = quiet.clone();
    short.extend(tone(800, 4_000.0));
    short.extend(&quiet);
    assert!(check_phrase(Phrase::Digit(1), &short).problems[0].contains("short"));
    // A click sets the peak, the speech is far below it.
    let mut clicky = clean.clone();
    for s in &mut clicky {
        *s /= 10;
    }
    clicky[1000] = 23_000;
    let p = check_phrase(Phrase::Digit(5), &clicky).problems.join("; ");
    assert!(p.contains("quiet"), "{p}");
    // Flat tops.
    let mut clipped = quiet.clone();
    clipped.extend(
        tone(3200, 60_000.0)
            .iter()
            .map(|&s| s.clamp(-20_000, 20_000)),
    );
    clipped.extend(&quiet);
    let p = check_phrase(Phrase::Digit(5), &clipped).problems.join("; ");
    assert!(p.contains("clipping"), "{p}");
    // A hum: nearly all energy at 100 Hz.
    let mut hum = quiet.clone();
    hum.extend((0..3200).map(|i| {
        ((i as f32 * 2.0 * std::f32::consts::PI * 100.0 / 8000.0).sin() * 20_000.0) as i16
    }));
    hum.extend(&quiet);
    let p = check_phrase(Phrase::Digit(5), &hum).problems.join("; ");
    assert!(p.contains("muffled"), "{p}");
}

/// The fuzzer's inputs (`fuzz/regressions/wav_phrase/`): G.711 WAVs declaring
/// 4,294,967,291 Hz (the resampler asked for 17 GB and aborted) and 1,230,118,720 Hz
/// (it ran past the fuzzer's timeout); 1 Hz took seconds.
#[test]
fn absurd_sample_rates_are_refused_not_resampled() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/wav_phrase");
    for name in [
        "g711-rate-4294967291.wav",
        "g711-rate-1230118720-timeout.wav",
        "pcm-rate-1.wav",
    ] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let e = decode_wav(Path::new(name), &bytes).unwrap_err().to_string();
        assert!(e.contains("sample rate") && e.contains(name), "{e}");
    }
}

#[test]
fn empty_dir_has_no_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let msg = load_err(&tmp);
    assert!(msg.contains("no prompt pack"), "{msg}");
}
