//! One prompt pack: its `pack.toml` manifest, its phrases decoded and
//! G.711-encoded once at load.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{decode_wav, PromptError};
use crate::media::{g711, Phrase, FRAME_SAMPLES, G711, SAMPLE_RATE};

/// Longest pause accepted in pack.toml.
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// pack.toml as written by operators.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackToml {
    language: String,
    #[serde(default = "default_digit_pause")]
    digit_pause: String,
    #[serde(default = "default_group_pause")]
    group_pause: String,
    #[serde(default)]
    files: FilesToml,
}

fn default_digit_pause() -> String {
    "400ms".to_owned()
}

fn default_group_pause() -> String {
    "800ms".to_owned()
}

/// `[files]`: every key defaults to the conventional file name, so a pack of
/// conventionally named files needs only `language`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FilesToml {
    intro: String,
    repeat: String,
    outro: String,
    press_key: String,
    /// The `bind_digits` request. When absent, `bind.wav` is used where it exists;
    /// without one the pack cannot serve `bind_digits`.
    bind: Option<String>,
    pub(super) digits: Vec<String>,
    /// Final forms of the digits. When absent, `<d>-final.wav` is used where that file
    /// exists and the plain digit where it does not.
    digits_final: Option<Vec<String>>,
}

impl Default for FilesToml {
    fn default() -> Self {
        FilesToml {
            intro: "intro.wav".to_owned(),
            repeat: "repeat.wav".to_owned(),
            outro: "outro.wav".to_owned(),
            press_key: "press-key.wav".to_owned(),
            bind: None,
            digits: (0..10).map(|d| format!("{d}.wav")).collect(),
            digits_final: None,
        }
    }
}

/// One phrase, in every form the rest of the program asks for.
struct PhraseAudio {
    /// The file it was read from (named in `prompts check` problems).
    file: PathBuf,
    pcm: Vec<i16>,
    ulaw: Vec<[u8; FRAME_SAMPLES]>,
    alaw: Vec<[u8; FRAME_SAMPLES]>,
}

// By hand: a derived Debug would print every sample of every phrase into a log line.
impl std::fmt::Debug for PhraseAudio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhraseAudio")
            .field("samples", &self.pcm.len())
            .field("frames", &self.ulaw.len())
            .finish()
    }
}

impl PhraseAudio {
    fn new(pcm: Vec<i16>, file: PathBuf) -> PhraseAudio {
        let ulaw = encode_frames(G711::Ulaw, &pcm);
        let alaw = encode_frames(G711::Alaw, &pcm);
        PhraseAudio {
            file,
            pcm,
            ulaw,
            alaw,
        }
    }
}

/// Splits PCM into 20 ms frames; the last one is padded with the law's silence code.
fn encode_frames(codec: G711, pcm: &[i16]) -> Vec<[u8; FRAME_SAMPLES]> {
    pcm.chunks(FRAME_SAMPLES)
        .map(|chunk| {
            let mut frame = [codec.silence(); FRAME_SAMPLES];
            for (out, &s) in frame.iter_mut().zip(chunk) {
                *out = g711::encode_sample(codec, s);
            }
            frame
        })
        .collect()
}

/// One locale's prompts, ready to play.
#[derive(Debug)]
pub struct PromptPack {
    /// Its pack.toml (`<builtin>/prompts/<locale>/pack.toml` for a built-in pack).
    toml_path: PathBuf,
    locale: String,
    language: String,
    digit_pause: Duration,
    group_pause: Duration,
    /// Indexed by [`Phrase::index`]; always [`Phrase::ALL`]`.len()` entries.
    phrases: Vec<PhraseAudio>,
    /// Final forms of digits 0..=9; `None` where the pack has none (plain digit plays).
    finals: Vec<Option<PhraseAudio>>,
    /// [`Phrase::Bind`], when the pack has it.
    bind: Option<PhraseAudio>,
}

impl PromptPack {
    /// The locale (directory name), e.g. `nl`.
    pub fn locale(&self) -> &str {
        &self.locale
    }

    /// Human name of the language from pack.toml, e.g. `Nederlands`.
    pub fn language(&self) -> &str {
        &self.language
    }

    /// 8 kHz 16-bit mono samples of a phrase (empty for a digit above 9).
    pub fn pcm(&self, p: Phrase) -> &[i16] {
        self.audio(p).map_or(&[], |a| a.pcm.as_slice())
    }

    /// The phrase as 20 ms G.711 frames (empty for a digit above 9).
    pub fn frames(&self, p: Phrase, codec: G711) -> &[[u8; FRAME_SAMPLES]] {
        self.audio(p).map_or(&[], |a| match codec {
            G711::Ulaw => a.ulaw.as_slice(),
            G711::Alaw => a.alaw.as_slice(),
        })
    }

    /// The file a phrase was read from (None for a digit above 9); a final form the
    /// pack lacks is the plain digit's file.
    pub fn file(&self, p: Phrase) -> Option<&Path> {
        self.audio(p).map(|a| a.file.as_path())
    }

    /// Its pack.toml, which sets the pauses.
    pub fn toml_path(&self) -> &Path {
        &self.toml_path
    }

    /// Whether the pack has its own final form of digit `d` (else the plain one plays).
    pub fn has_final(&self, d: u8) -> bool {
        self.finals.get(usize::from(d)).is_some_and(|f| f.is_some())
    }

    /// Whether the pack has the optional [`Phrase::Bind`] (needed for `bind_digits`).
    pub fn has_bind(&self) -> bool {
        self.bind.is_some()
    }

    /// Every phrase the pack holds audio of: [`Phrase::ALL`], then the final forms it
    /// has, then [`Phrase::Bind`] if it has it.
    pub fn phrases(&self) -> impl Iterator<Item = Phrase> + '_ {
        Phrase::ALL
            .into_iter()
            .chain(
                Phrase::FINAL_DIGITS
                    .into_iter()
                    .filter(|p| p.digit().is_some_and(|d| self.has_final(d))),
            )
            .chain(self.bind.as_ref().map(|_| Phrase::Bind))
    }

    /// Playing time of a phrase (for `otpdial prompts check`).
    pub fn duration(&self, p: Phrase) -> Duration {
        let samples = self.pcm(p).len() as u64;
        Duration::from_micros(samples * 1_000_000 / u64::from(SAMPLE_RATE))
    }

    /// Silence between two digits of a group.
    pub fn digit_pause(&self) -> Duration {
        self.digit_pause
    }

    /// Silence between two groups of digits.
    pub fn group_pause(&self) -> Duration {
        self.group_pause
    }

    fn audio(&self, p: Phrase) -> Option<&PhraseAudio> {
        match p {
            Phrase::FinalDigit(d) => match self.finals.get(usize::from(d)) {
                Some(Some(f)) => Some(f),
                Some(None) => self.audio(Phrase::Digit(d)),
                None => None,
            },
            Phrase::Bind => self.bind.as_ref(),
            _ => p.index().and_then(|i| self.phrases.get(i)),
        }
    }

    /// Loads a pack from `pack.toml` text, fetching each named file through `read`.
    /// `origin` is the pack's directory (or a pseudo path for the embedded packs) and
    /// is used in error messages only.
    pub(super) fn parse(
        locale: &str,
        origin: &Path,
        toml_text: &str,
        read: &dyn Fn(&str) -> Result<Vec<u8>, PromptError>,
    ) -> Result<PromptPack, PromptError> {
        let toml_path = origin.join("pack.toml");
        let config_err = |message: String| PromptError::Config {
            path: toml_path.clone(),
            message,
        };
        let cfg: PackToml = toml::from_str(toml_text).map_err(|e| config_err(e.to_string()))?;
        if cfg.language.trim().is_empty() {
            return Err(config_err("`language` must not be empty".to_owned()));
        }
        let digit_pause = parse_pause("digit_pause", &cfg.digit_pause, &toml_path)?;
        let group_pause = parse_pause("group_pause", &cfg.group_pause, &toml_path)?;
        if cfg.files.digits.len() != 10 {
            return Err(config_err(format!(
                "`files.digits` must name 10 files (0 to 9), found {}",
                cfg.files.digits.len()
            )));
        }

        let mut phrases = Vec::with_capacity(Phrase::ALL.len());
        for p in Phrase::ALL {
            let name = match p {
                Phrase::Digit(d) => cfg.files.digits.get(usize::from(d)),
                Phrase::Intro => Some(&cfg.files.intro),
                Phrase::Repeat => Some(&cfg.files.repeat),
                Phrase::Outro => Some(&cfg.files.outro),
                Phrase::PressKey => Some(&cfg.files.press_key),
                Phrase::FinalDigit(_) | Phrase::Bind => None, // not in ALL
            };
            let Some(name) = name else {
                return Err(config_err(format!("no file named for {p:?}")));
            };
            check_file_name(name, &toml_path)?;
            let path = origin.join(name);
            let bytes = read(name)?;
            let pcm = decode_wav(&path, &bytes)?;
            phrases.push(PhraseAudio::new(pcm, path));
        }

        // Final forms: named in pack.toml (then required), or by convention (optional).
        let (final_names, required): (Vec<String>, bool) = match &cfg.files.digits_final {
            Some(names) if names.len() == 10 => (names.clone(), true),
            Some(names) => {
                return Err(config_err(format!(
                    "`files.digits_final` must name 10 files (0 to 9), found {}",
                    names.len()
                )))
            }
            None => ((0..10).map(|d| format!("{d}-final.wav")).collect(), false),
        };
        // An optional phrase: a missing file is fine unless pack.toml named it.
        let optional = |name: &str, required: bool| -> Result<Option<PhraseAudio>, PromptError> {
            check_file_name(name, &toml_path)?;
            let bytes = match read(name) {
                Ok(bytes) => bytes,
                Err(PromptError::Io { source, .. })
                    if !required && source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            let path = origin.join(name);
            let pcm = decode_wav(&path, &bytes)?;
            Ok(Some(PhraseAudio::new(pcm, path)))
        };
        let finals = final_names
            .iter()
            .map(|name| optional(name, required))
            .collect::<Result<Vec<_>, _>>()?;
        let bind = match &cfg.files.bind {
            Some(name) => optional(name, true)?,
            None => optional("bind.wav", false)?,
        };

        Ok(PromptPack {
            toml_path,
            locale: locale.to_owned(),
            language: cfg.language,
            digit_pause,
            group_pause,
            phrases,
            finals,
            bind,
        })
    }
}

/// A pause key of pack.toml (`toml_path` names the file in the error).
fn parse_pause(key: &str, text: &str, toml_path: &Path) -> Result<Duration, PromptError> {
    let config_err = |message: String| PromptError::Config {
        path: toml_path.to_path_buf(),
        message,
    };
    let d = humantime::parse_duration(text).map_err(|e| {
        config_err(format!(
            "`{key}` = {text:?} is not a duration ({e}); write e.g. \"400ms\""
        ))
    })?;
    if d > MAX_PAUSE {
        return Err(config_err(format!(
            "`{key}` = {text:?} is longer than {}s",
            MAX_PAUSE.as_secs()
        )));
    }
    Ok(d)
}

/// Pack files live in the pack directory; a path would let pack.toml read anything.
fn check_file_name(name: &str, toml_path: &Path) -> Result<(), PromptError> {
    let ok = !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..";
    if ok {
        Ok(())
    } else {
        Err(PromptError::Config {
            path: toml_path.to_path_buf(),
            message: format!("file name {name:?} must be a plain file name in the pack directory"),
        })
    }
}
