//! `otpdial prompts check [DIR]`: the real binary on the shipped packs, on the
//! built-in ones and on a broken pack.

use std::process::Command;

fn otpdial(args: &[&str]) -> (bool, String, String) {
    let (code, out, err) = otpdial_status(args);
    (code == Some(0), out, err)
}

/// Exit code (None if killed by a signal), stdout, stderr.
fn otpdial_status(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_otpdial"))
        .args(args)
        .output()
        .expect("otpdial runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A folder of packs holding `xx`, a copy of the shipped English pack.
fn copy_of_english_pack() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let pack = tmp.path().join("xx");
    std::fs::create_dir(&pack).unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/en");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), pack.join(entry.file_name())).unwrap();
    }
    (tmp, pack)
}

#[test]
fn prompts_check_prints_every_phrase_of_the_shipped_packs() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/prompts");
    for args in [vec!["prompts", "check"], vec!["prompts", "check", dir]] {
        let (ok, out, err) = otpdial(&args);
        assert!(ok, "{args:?}: {err}");
        assert!(
            out.contains("en (English)") && out.contains("nl (Nederlands)"),
            "{out}"
        );
        assert_eq!(out.matches("press-key").count(), 2, "{out}");
        assert!(out.contains("2 pack(s) OK"), "{out}");
    }
}

#[test]
fn prompts_check_fails_naming_the_broken_file() {
    let (tmp, pack) = copy_of_english_pack();
    std::fs::write(pack.join("7.wav"), b"not audio").unwrap();
    let (ok, _, err) = otpdial(&["prompts", "check", tmp.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("xx/7.wav") && err.contains("WAV"), "{err}");
}

/// A missing digit WAV: exit status 1 and the missing file named, whether the
/// argument is the folder of packs or the pack's own folder.
#[test]
fn prompts_check_fails_on_a_missing_digit_wav() {
    let (tmp, pack) = copy_of_english_pack();
    std::fs::remove_file(pack.join("7.wav")).unwrap();
    for dir in [tmp.path(), pack.as_path()] {
        let (code, out, err) = otpdial_status(&["prompts", "check", dir.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{dir:?}: {out}{err}");
        assert!(err.contains("xx/7.wav"), "{dir:?}: {err}");
        assert!(!out.contains("OK"), "{dir:?}: {out}");
    }
}

/// A pack that loads but has a phrase a listener would suffer from (here a tone
/// that starts and ends mid-sound, as a cut recording does): the report marks it,
/// and the command fails naming the file instead of saying OK.
#[test]
fn prompts_check_fails_on_a_phrase_with_a_problem() {
    let (tmp, pack) = copy_of_english_pack();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = hound::WavWriter::create(pack.join("7.wav"), spec).unwrap();
    for n in 0..4000u32 {
        let t = f64::from(n) / 8000.0;
        let sample = (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16;
        wav.write_sample(sample).unwrap();
    }
    wav.finalize().unwrap();
    let (code, out, err) = otpdial_status(&["prompts", "check", tmp.path().to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("xx/7.wav: digit 7: clipped onset"),
        "problem names the file: {err}"
    );
    assert!(err.contains("problem(s) in 1 pack(s)"), "{err}");
    assert!(!out.contains("pack(s) OK"), "{out}");
    assert!(
        out.contains("! digit 7"),
        "the report marks the line: {out}"
    );
}
