//! Intelligibility of the prompt packs: random codes rendered exactly as a call plays
//! them, through G.711, transcribed by two offline speech recognisers (issue 12).
//!
//! ```text
//! scripts/intelligibility.sh                               # installs the recognisers, then the line below
//! cargo bench --bench intelligibility                      # 20 codes, en+nl, A-law+µ-law, both recognisers
//! cargo bench --bench intelligibility -- --n 50 --locale en --law alaw
//! cargo bench --bench intelligibility -- --pack-dir /path/to/studio/nl   # a pack of your own
//! cargo bench --bench intelligibility -- --render-only     # only write the WAVs (listen to them)
//! ```
//!
//! For each locale, `--n` random 6-digit codes (seeded: `--seed`, so runs compare) are
//! turned into the call script by [`CallScript::build`] with the pack, as `src/call.rs`
//! does (intro, the digits in groups with the pack's pauses and final forms, "I repeat",
//! the second reading, "Goodbye"), and each item becomes the very 20 ms G.711 frames the
//! pacer sends ([`PromptPack::frames`]; silence frames for pauses). Those bytes are
//! decoded as the phone would and written as 8 kHz WAVs with a `manifest.tsv`; then
//! `scripts/intelligibility.py` transcribes them with faster-whisper (Whisper base) and
//! pocketsphinx (US English model, word-loop grammar) and prints codes right / N per
//! recogniser, pack and law, and the digit confusions. Results: BENCHMARKS.md.
//!
//! Not a test: it needs Python packages (scripts/intelligibility-requirements.txt) and
//! takes minutes. CI only builds it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use otpdial::media::{g711, CallScript, PromptLibrary, PromptPack, ScriptItem, G711};
use rand::{Rng, SeedableRng};

struct Args {
    n: usize,
    seed: u64,
    digits: usize,
    repeat: u32,
    locales: Vec<String>,
    laws: Vec<G711>,
    pack_dir: PathBuf,
    out: PathBuf,
    render_only: bool,
    recognisers: String,
    verbose: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!("intelligibility: {msg}");
    eprintln!(
        "options: --n N --seed S --digits D --repeat R --locale en,nl --law alaw,ulaw \
         --pack-dir DIR --out DIR --recognisers whisper,sphinx --render-only --verbose"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("target"));
    let mut args = Args {
        n: 20,
        seed: 12,
        digits: 6,
        repeat: 2,
        locales: Vec::new(),
        laws: vec![G711::Alaw, G711::Ulaw],
        pack_dir: manifest.join("prompts"),
        out: target.join("intelligibility"),
        render_only: false,
        recognisers: "whisper,sphinx".to_owned(),
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        let number = |name: &str, v: String| -> u64 {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{name} {v:?} is not a number")))
        };
        match a.as_str() {
            "--n" => args.n = number("--n", value("--n")) as usize,
            "--seed" => args.seed = number("--seed", value("--seed")),
            "--digits" => args.digits = number("--digits", value("--digits")) as usize,
            "--repeat" => args.repeat = number("--repeat", value("--repeat")) as u32,
            "--locale" => {
                args.locales = value("--locale")
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .collect()
            }
            "--law" => {
                args.laws = value("--law")
                    .split(',')
                    .map(|s| match s.trim() {
                        "alaw" | "pcma" | "a" => G711::Alaw,
                        "ulaw" | "pcmu" | "u" | "mulaw" => G711::Ulaw,
                        other => usage(&format!("unknown law {other:?}")),
                    })
                    .collect()
            }
            "--pack-dir" => args.pack_dir = PathBuf::from(value("--pack-dir")),
            "--out" => args.out = PathBuf::from(value("--out")),
            "--recognisers" => args.recognisers = value("--recognisers"),
            "--render-only" => args.render_only = true,
            "--verbose" => args.verbose = true,
            "--bench" => {} // added by `cargo bench`
            other => usage(&format!("unknown option {other:?}")),
        }
    }
    if args.digits == 0 || args.digits > 10 {
        usage("--digits must be 1 to 10");
    }
    args
}

/// The bytes the pacer sends for a script, in order (RTP payloads back to back).
fn play(pack: &PromptPack, script: &CallScript, law: G711) -> Vec<u8> {
    script.payload(pack, law)
}

/// Seconds from the start of the first reading to its end (the code, with its pauses).
fn reading_seconds(pack: &PromptPack, script: &CallScript) -> f64 {
    let items = &script.items;
    let start = items.iter().position(|i| *i == ScriptItem::CodeStart);
    let end = items.iter().position(|i| *i == ScriptItem::CodeEnd);
    let (Some(start), Some(end)) = (start, end) else {
        return 0.0;
    };
    let reading = CallScript {
        items: items[start..end].to_vec(),
    };
    reading.duration(pack).as_secs_f64()
}

fn write_wav(path: &Path, pcm: &[i16]) -> Result<(), String> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let err = |e: hound::Error| format!("{}: {e}", path.display());
    let mut w = hound::WavWriter::create(path, spec).map_err(err)?;
    for &s in pcm {
        w.write_sample(s).map_err(err)?;
    }
    w.finalize().map_err(err)
}

fn law_name(law: G711) -> &'static str {
    match law {
        G711::Alaw => "alaw",
        G711::Ulaw => "ulaw",
    }
}

fn run() -> Result<i32, String> {
    let args = parse_args();
    let lib = PromptLibrary::load_dir(&args.pack_dir).map_err(|e| e.to_string())?;
    let locales = if args.locales.is_empty() {
        lib.locales()
    } else {
        args.locales.clone()
    };
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let manifest_path = args.out.join("manifest.tsv");
    let mut manifest = std::fs::File::create(&manifest_path)
        .map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    let _ = writeln!(manifest, "# locale\tlaw\tcode\trepeat\twav");

    println!(
        "intelligibility: {} codes of {} digits per pack, read {} times, packs from {}",
        args.n,
        args.digits,
        args.repeat,
        args.pack_dir.display()
    );
    for locale in &locales {
        let pack = lib
            .get(locale)
            .ok_or_else(|| format!("no pack {locale:?} in {}", args.pack_dir.display()))?;
        // Same codes for every pack and law: the seed and the locale's position do not
        // mix, so `--locale nl` alone renders the codes a full run renders for nl.
        let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
        let mut longest: f64 = 0.0;
        let mut readings = 0.0;
        let mut call_secs = 0.0;
        for i in 0..args.n {
            let code: Vec<u8> = (0..args.digits).map(|_| rng.random_range(0..10)).collect();
            let text: String = code.iter().map(|d| char::from(b'0' + d)).collect();
            let script = CallScript::build(&pack, &code, args.repeat);
            let reading = reading_seconds(&pack, &script);
            longest = longest.max(reading);
            readings += reading;
            call_secs += script.duration(&pack).as_secs_f64();
            for &law in &args.laws {
                let pcm = g711::decode(law, &play(&pack, &script, law));
                let name = format!("{locale}-{}-{i:03}-{text}.wav", law_name(law));
                write_wav(&args.out.join(&name), &pcm)?;
                let _ = writeln!(
                    manifest,
                    "{locale}\t{}\t{text}\t{}\t{name}",
                    law_name(law),
                    args.repeat
                );
            }
        }
        let n = args.n.max(1) as f64;
        println!(
            "  {locale}: reading of the code {:.2} s on average, {longest:.2} s at most; call {:.1} s on average",
            readings / n,
            call_secs / n
        );
    }
    drop(manifest);
    println!("  WAVs and manifest in {}", args.out.display());
    if args.render_only {
        return Ok(0);
    }

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/intelligibility.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg(&args.out)
        .args(["--recognisers", &args.recognisers]);
    if args.verbose {
        cmd.arg("--verbose");
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {python} {}: {e}", script.display()))?;
    Ok(status.code().unwrap_or(1))
}

fn main() {
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("intelligibility: {e}");
            std::process::exit(1)
        }
    }
}
