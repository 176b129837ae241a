//! Prompt packs: one locale's phrases, decoded and G.711-encoded once at load.
//!
//! A pack is a directory `prompts/<locale>/` with `pack.toml` and one WAV per phrase
//! (SPEC §5), plus optional final forms of the digits (`5-final.wav`: the digit as said
//! at the end of a group, with falling intonation; `5.wav` is the form said inside a
//! group). A missing final form falls back to the plain digit. See docs/prompts.md. Everything a call needs later is precomputed here, so the pacer only
//! copies 160-byte frames that already exist (DESIGN principle 7). Each phrase is
//! resampled to 8 kHz, trimmed of leading and trailing silence (keeping weak consonants
//! and 20 ms either side) and brought to a -3 dBFS peak at load, so an operator can drop in studio recordings as they come.
//!
//! Depends on hound (PCM WAV; G.711 WAV is read here), rubato (resampling to 8 kHz),
//! toml/serde (pack.toml), humantime (durations).

mod check;
mod pack;
mod wav;

pub use check::{check_phrase, PhraseCheck};
pub use pack::PromptPack;
pub use wav::{decode_wav, WavDefect};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a prompt pack could not be loaded. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// A file or directory could not be read. The OS error is the source, so it is
    /// not repeated in the message (`{e:#}` prints both once).
    #[error("{}: cannot read", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// pack.toml is malformed or has a bad value.
    #[error("{}: {message}", path.display())]
    Config {
        /// The pack.toml file.
        path: PathBuf,
        /// What is wrong, naming the key where there is one.
        message: String,
    },
    /// A WAV file is unreadable or in a format we do not take.
    #[error("{}: {defect}", path.display())]
    Wav {
        /// The WAV file.
        path: PathBuf,
        /// What is wrong with it.
        defect: wav::WavDefect,
    },
    /// The directory has no subdirectory with a pack.toml.
    #[error("{}: no prompt pack found (expected <locale>/pack.toml below it)", dir.display())]
    NoPacks {
        /// The directory searched.
        dir: PathBuf,
    },
}

/// All loaded packs, by locale.
#[derive(Debug, Clone, Default)]
pub struct PromptLibrary {
    packs: BTreeMap<String, Arc<PromptPack>>,
}

/// The packs shipped in `prompts/`, compiled into the binary.
macro_rules! embedded_pack {
    ($locale:literal) => {
        (
            $locale,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/prompts/", $locale, "/pack.toml")),
            embedded_pack!(@files $locale, "0.wav", "1.wav", "2.wav", "3.wav", "4.wav", "5.wav",
                "6.wav", "7.wav", "8.wav", "9.wav", "intro.wav", "repeat.wav", "outro.wav",
                "press-key.wav", "bind.wav", "0-final.wav", "1-final.wav", "2-final.wav", "3-final.wav",
                "4-final.wav", "5-final.wav", "6-final.wav", "7-final.wav", "8-final.wav",
                "9-final.wav"),
        )
    };
    (@files $locale:literal, $($file:literal),*) => {
        &[$(($file, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/prompts/", $locale, "/", $file)) as &[u8])),*]
    };
}

type EmbeddedPack = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static [u8])],
);

const EMBEDDED: [EmbeddedPack; 2] = [embedded_pack!("en"), embedded_pack!("nl")];

impl PromptLibrary {
    /// Loads every subdirectory of `dir` that has a `pack.toml`; the subdirectory's
    /// name is the locale. Any broken pack fails the whole load (start-up error).
    ///
    /// `dir` may also be one pack's own directory (it has a `pack.toml`, e.g.
    /// `prompts/nl`): then that pack alone is loaded, its directory name the locale.
    pub fn load_dir(dir: &Path) -> Result<PromptLibrary, PromptError> {
        let io_err = |path: &Path, source| PromptError::Io {
            path: path.to_path_buf(),
            source,
        };
        let load_one = |sub: &Path, name: &std::ffi::OsStr| {
            let toml_path = sub.join("pack.toml");
            let Some(locale) = name.to_str().map(str::to_owned) else {
                return Err(PromptError::Config {
                    path: toml_path,
                    message: "the pack directory name (the locale) is not UTF-8".to_owned(),
                });
            };
            let text = std::fs::read_to_string(&toml_path).map_err(|e| io_err(&toml_path, e))?;
            let read = |name: &str| {
                let path = sub.join(name);
                std::fs::read(&path).map_err(|e| io_err(&path, e))
            };
            let pack = PromptPack::parse(&locale, sub, &text, &read)?;
            Ok((locale, Arc::new(pack)))
        };
        let mut packs = BTreeMap::new();
        if dir.join("pack.toml").is_file() {
            // One pack's folder. Its name: the last component, also for `prompts/nl/.`.
            let canonical = dir.canonicalize().map_err(|e| io_err(dir, e))?;
            let name = canonical.file_name().unwrap_or(canonical.as_os_str());
            let (locale, pack) = load_one(dir, name)?;
            packs.insert(locale, pack);
            return Ok(PromptLibrary { packs });
        }
        for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let entry = entry.map_err(|e| io_err(dir, e))?;
            let sub = entry.path();
            if !sub.is_dir() || !sub.join("pack.toml").is_file() {
                continue;
            }
            let (locale, pack) = load_one(&sub, &entry.file_name())?;
            packs.insert(locale, pack);
        }
        if packs.is_empty() {
            return Err(PromptError::NoPacks {
                dir: dir.to_path_buf(),
            });
        }
        Ok(PromptLibrary { packs })
    }

    /// The `en` and `nl` packs embedded in the binary, so `otpdial demo` works from any
    /// directory. A unit test proves both load; should one ever not, it is logged and
    /// left out rather than taking the process down.
    pub fn builtin() -> PromptLibrary {
        let mut packs = BTreeMap::new();
        for (locale, result) in Self::parse_embedded() {
            match result {
                Ok(pack) => {
                    packs.insert(locale.to_owned(), Arc::new(pack));
                }
                Err(e) => tracing::error!(error = %e, "built-in prompt pack is broken"),
            }
        }
        PromptLibrary { packs }
    }

    /// The built-in packs, failing on the first broken one (for `prompts check`).
    pub fn builtin_checked() -> Result<PromptLibrary, PromptError> {
        let mut packs = BTreeMap::new();
        for (locale, result) in Self::parse_embedded() {
            packs.insert(locale.to_owned(), Arc::new(result?));
        }
        Ok(PromptLibrary { packs })
    }

    fn parse_embedded() -> Vec<(&'static str, Result<PromptPack, PromptError>)> {
        let mut out = Vec::new();
        for (locale, toml_text, files) in EMBEDDED {
            let origin = PathBuf::from(format!("<builtin>/prompts/{locale}"));
            let read = |name: &str| {
                files
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, bytes)| bytes.to_vec())
                    .ok_or_else(|| PromptError::Io {
                        path: origin.join(name),
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "not embedded in the binary",
                        ),
                    })
            };
            out.push((locale, PromptPack::parse(locale, &origin, toml_text, &read)));
        }
        out
    }

    /// The pack of a locale.
    pub fn get(&self, locale: &str) -> Option<Arc<PromptPack>> {
        self.packs.get(locale).cloned()
    }

    /// Installed locales, sorted.
    pub fn locales(&self) -> Vec<String> {
        self.packs.keys().cloned().collect()
    }

    /// All packs, sorted by locale.
    pub fn packs(&self) -> impl Iterator<Item = &Arc<PromptPack>> {
        self.packs.values()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests;
