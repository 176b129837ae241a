#!/usr/bin/env python3
"""Cuts words out of one synthesised utterance, for prompts/build.sh.

    cut.py [--trim-db DB] [--fade-in-ms MS] [--fade-out-ms MS] IN.wav WORDS OUT1.wav[=K] [OUT2.wav=K ...]

IN.wav is mono 16-bit PCM holding WORDS words separated by pauses (a list such as
"five, five, five."). The WORDS-1 longest silent gaps are taken as the word boundaries
(so a stop closure inside a word, shorter than the pause after a comma, is not one);
word K (1-based) is written to its OUT file, from the middle of the gap before it to
the middle of the gap after it, then trimmed of silence with a low threshold (by
default 55 dB below the utterance's peak; --trim-db) and a 15 ms margin, so that weak
onsets and tails (the "f" of "five", the "s" of "six", the release of "eight") are
kept whole. Phrases use a higher threshold (40 dB), a 10 ms fade-in (espeak-ng starts
a vowel with a click) and a 30 ms fade-out: a breathy trail after "Goodbye" is heard
by recognisers as another word, and the fade lets the "z" of "is" end instead of
stopping dead. Digits get 2 ms fades, only against clicks.

Fails (exit 1) when the utterance does not have WORDS words, so a voice that swallows
a pause breaks the build instead of shipping a clipped prompt. Python standard library
only.
"""

import array
import math
import sys
import wave

WINDOW_MS = 5
SILENCE_DB = 45.0  # gap detection: windows this far below the peak window are silence
TRIM_DB = 55.0  # trimming: samples this far below the peak are silence
MARGIN_MS = 15
MIN_GAP_MS = 40
MIN_SOUND_MS = 20


def read(path):
    with wave.open(path, "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            sys.exit(f"cut.py: {path}: need mono 16-bit PCM")
        rate = w.getframerate()
        data = array.array("h", w.readframes(w.getnframes()))
    if sys.byteorder == "big":
        data.byteswap()
    return rate, data


def write(path, rate, samples):
    out = array.array("h", samples)
    if sys.byteorder == "big":
        out.byteswap()
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(out.tobytes())


def runs(flags):
    """(start, end) of each run of True."""
    out, i = [], 0
    while i < len(flags):
        if flags[i]:
            j = i
            while j < len(flags) and flags[j]:
                j += 1
            out.append((i, j))
            i = j
        else:
            i += 1
    return out


def sound_windows(levels, below_top_db):
    """Windows louder than the peak window minus below_top_db, ignoring blips: a run of
    sound shorter than MIN_SOUND_MS (a click, a breath of noise between words) counts
    as silence."""
    top = max(levels)
    loud = [lv >= top - below_top_db for lv in levels]
    keep = [False] * len(levels)
    for a, b in runs(loud):
        if (b - a) * WINDOW_MS >= MIN_SOUND_MS:
            keep[a:b] = [True] * (b - a)
    return keep


def main():
    global TRIM_DB
    fade_in_ms = fade_out_ms = 2.0
    while len(sys.argv) > 2 and sys.argv[1] in ("--trim-db", "--fade-in-ms", "--fade-out-ms"):
        if sys.argv[1] == "--trim-db":
            TRIM_DB = float(sys.argv[2])
        elif sys.argv[1] == "--fade-in-ms":
            fade_in_ms = float(sys.argv[2])
        else:
            fade_out_ms = float(sys.argv[2])
        del sys.argv[1:3]
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    rate, x = read(sys.argv[1])
    words = int(sys.argv[2])
    win = max(1, rate * WINDOW_MS // 1000)
    levels = []
    for i in range(0, len(x), win):
        chunk = x[i : i + win]
        p = sum(s * s for s in chunk) / max(1, len(chunk))
        levels.append(10 * math.log10(max(p, 1e-3)))
    sound = sound_windows(levels, SILENCE_DB)
    spans = runs(sound)
    if not spans:
        sys.exit(f"cut.py: {sys.argv[1]}: silent")
    # Gaps between sounds, longest first; the words-1 longest are the word boundaries.
    gaps = sorted(((s2 - e1, e1, s2) for (_, e1), (s2, _) in zip(spans, spans[1:])), reverse=True)
    gaps = [g for g in gaps if g[0] * WINDOW_MS >= MIN_GAP_MS]
    if len(gaps) < words - 1:
        sys.exit(f"cut.py: {sys.argv[1]}: found {len(gaps) + 1} words, expected {words}")
    bounds = gaps[: words - 1]
    if words > 1 and len(gaps) >= words and gaps[words - 1][0] * 2 > bounds[-1][0]:
        # The shortest boundary is not clearly longer than the longest pause inside a
        # word: the split would be a guess.
        sys.exit(f"cut.py: {sys.argv[1]}: pauses between words are not clear")
    cuts = [0] + sorted((s + e) // 2 * win for _, s, e in bounds) + [len(x)]

    trim = sound_windows(levels, TRIM_DB)
    margin = rate * MARGIN_MS // 1000
    for arg in sys.argv[3:]:
        path, _, k = arg.partition("=")
        k = int(k or 1)
        if not 1 <= k <= words:
            sys.exit(f"cut.py: word {k} of {words}?")
        lo, hi = cuts[k - 1], cuts[k]
        inside = [w for w in range(lo // win, min(len(trim), (hi + win - 1) // win)) if trim[w]]
        if not inside:
            sys.exit(f"cut.py: {sys.argv[1]}: word {k} is silent")
        a = max(lo, inside[0] * win - margin)
        b = min(hi, (inside[-1] + 1) * win + margin)
        out = list(x[a:b])
        fade_in = max(1, int(rate * fade_in_ms / 1000))
        for n in range(min(fade_in, len(out) // 2)):
            out[n] = int(out[n] * n / fade_in)
        fade_out = max(1, int(rate * fade_out_ms / 1000))
        for n in range(min(fade_out, len(out) // 2)):
            out[-1 - n] = int(out[-1 - n] * n / fade_out)
        write(path, rate, out)


if __name__ == "__main__":
    main()
