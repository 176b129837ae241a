//! Replays every committed fuzz input (`fuzz/corpus/<target>/` seeds and
//! `fuzz/regressions/<target>/` crashes once found) through the fuzz targets' own entry
//! points (`fuzz/entries.rs`), on the stable compiler and without libFuzzer, so a
//! fixed crash cannot come back unnoticed even where fuzzing itself is skipped.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/entries.rs"]
mod entries;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs `entry` on each input in its own unwinding scope, so one panic does not hide
/// the others; fails naming every input that panicked.
fn replay(target: &str, entry: entries::Entry, files: &[PathBuf]) -> Vec<String> {
    let mut failed = Vec::new();
    for path in files {
        let data = std::fs::read(path).unwrap();
        if std::panic::catch_unwind(|| entry(&data)).is_err() {
            failed.push(format!("{target}: {}", path.display()));
        }
    }
    failed
}

#[test]
fn every_corpus_and_regression_input_is_handled_without_panic() {
    let mut failed = Vec::new();
    for (target, entry) in entries::TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(target));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{target}/ has no seed inputs"
        );
        failed.extend(replay(target, entry, &corpus));
        let regressions = inputs(&fuzz_dir().join("regressions").join(target));
        failed.extend(replay(target, entry, &regressions));
    }
    assert!(
        failed.is_empty(),
        "inputs that panic:\n{}",
        failed.join("\n")
    );
}

/// Every directory under `fuzz/corpus/` and `fuzz/regressions/` belongs to a target
/// the replay knows, and every target is a fuzz binary: a new target cannot be left
/// out of the replay by accident.
#[test]
fn the_replay_knows_every_target() {
    let names: Vec<&str> = entries::TARGETS.iter().map(|(n, _)| *n).collect();
    for sub in ["corpus", "regressions"] {
        let Ok(dirs) = std::fs::read_dir(fuzz_dir().join(sub)) else {
            continue;
        };
        for d in dirs {
            let name = d.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                names.contains(&name.as_str()),
                "fuzz/{sub}/{name}: unknown target"
            );
        }
    }
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for name in &names {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} is not a [[bin]] in fuzz/Cargo.toml"
        );
        assert!(
            fuzz_dir().join(format!("fuzz_targets/{name}.rs")).is_file(),
            "fuzz/fuzz_targets/{name}.rs missing"
        );
    }
}
