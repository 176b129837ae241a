//! `otpdial prompts check [DIR]`: the real binary on the shipped packs, on the
//! built-in ones and on a broken pack.

use std::process::Command;

fn otpdial(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_otpdial"))
        .args(args)
        .output()
        .expect("otpdial runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
    let tmp = tempfile::tempdir().unwrap();
    let pack = tmp.path().join("xx");
    std::fs::create_dir(&pack).unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/en");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), pack.join(entry.file_name())).unwrap();
    }
    std::fs::write(pack.join("7.wav"), b"not audio").unwrap();
    let (ok, _, err) = otpdial(&["prompts", "check", tmp.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("xx/7.wav") && err.contains("WAV"), "{err}");
}
