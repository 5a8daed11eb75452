#!/usr/bin/env python3
"""Score a degraded speech recording against its reference.

Usage: score.py REF DEG [--json] [--raw-rate HZ] [--no-nb] [--max-offset-ms MS]

REF and DEG may each be a WAV file (any rate, any channel count: channels are
averaged) or raw signed 16-bit little-endian mono PCM (`.raw`, `.s16`, `.pcm`)
at --raw-rate (default 48000 Hz).

Both signals are resampled to 16 kHz (scipy.signal.resample_poly). DEG is
aligned to REF by cross-correlation (the gateway path adds a delay, and the
recording may carry leading/trailing silence or be longer than REF); both are
then trimmed to their overlap and scored with PESQ (ITU-T P.862.2 wideband,
and P.862 narrowband unless --no-nb) and STOI.

Prints a human-readable summary, or with --json one JSON object:
  {"pesq_wb": .., "pesq_nb": .. | null, "stoi": .., "offset_ms": ..,
   "ref_duration_s": .., "deg_duration_s": .., "overlap_s": ..,
   "ref_rms_dbfs": .., "deg_rms_dbfs": .., "ref": "...", "deg": "..."}
(levels are RMS over the scored overlap, in dB relative to full scale).
offset_ms > 0 means DEG lags REF (the usual case: DEG = REF delayed).

Exit codes: 0 ok; 2 bad usage or unreadable input; 3 overlap shorter than
1 s after alignment; 4 PESQ/STOI could not score the pair; 5 REF or DEG is
digital silence over the overlap (PESQ is undefined there: it would fail).
"""

import argparse
import json
import math
import os
import sys

try:
    import numpy as np
    from scipy.signal import correlate, resample_poly
    import soundfile as sf
    from pesq import pesq
    from pystoi import stoi
except ImportError as e:  # pragma: no cover - environment problem
    sys.stderr.write(
        f"score.py: missing Python module ({e}); run scripts/deps and use "
        f"$REPO/.venv/bin/python\n")
    sys.exit(2)

FS = 16000
RAW_EXTS = (".raw", ".s16", ".pcm")
MIN_OVERLAP_S = 1.0
SILENCE_DBFS = -100.0


def rms_dbfs(x):
    r = float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0
    return 20 * math.log10(r) if r > 0 else -math.inf


class InputError(Exception):
    pass


def load(path, raw_rate):
    """Return (mono float64 samples in [-1, 1), sample rate)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    if path.lower().endswith(RAW_EXTS):
        size = os.path.getsize(path)
        if size % 2:
            raise InputError(f"{path}: raw S16LE file has an odd byte count ({size})")
        try:
            x = np.fromfile(path, dtype="<i2").astype(np.float64) / 32768.0
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: cannot read raw PCM: {e}")
        return x, raw_rate
    try:
        x, rate = sf.read(path, dtype="float64", always_2d=True)
    except Exception as e:  # soundfile raises its own LibsndfileError/RuntimeError
        raise InputError(f"{path}: cannot read as audio file: {e} "
                         f"(raw S16LE must be named .raw/.s16/.pcm)")
    return x.mean(axis=1), int(rate)


def to_rate(x, rate, target):
    if rate == target:
        return x
    g = math.gcd(int(rate), int(target))
    return resample_poly(x, target // g, rate // g)


def find_offset(ref, deg, max_lag=None):
    """Lag (in samples) of deg relative to ref: deg[n + lag] ~ ref[n]."""
    if not ref.any() or not deg.any():
        return 0
    c = correlate(deg, ref, mode="full", method="fft")
    lags = np.arange(-(len(ref) - 1), len(deg))
    if max_lag is not None:
        keep = np.abs(lags) <= max_lag
        c, lags = c[keep], lags[keep]
    return int(lags[int(np.argmax(c))])


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ref")
    ap.add_argument("deg")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--raw-rate", type=int, default=48000,
                    help="sample rate of .raw/.s16/.pcm inputs (default 48000)")
    ap.add_argument("--no-nb", action="store_true", help="skip narrowband PESQ")
    ap.add_argument("--max-offset-ms", type=float, default=None,
                    help="only search alignment lags up to this many ms either way")
    a = ap.parse_args(argv)

    try:
        ref, ref_rate = load(a.ref, a.raw_rate)
        deg, deg_rate = load(a.deg, a.raw_rate)
    except InputError as e:
        sys.stderr.write(f"score.py: {e}\n")
        return 2
    ref_dur = len(ref) / ref_rate
    deg_dur = len(deg) / deg_rate

    ref16 = to_rate(ref, ref_rate, FS)
    deg16 = to_rate(deg, deg_rate, FS)
    max_lag = None if a.max_offset_ms is None else int(a.max_offset_ms * FS / 1000)
    lag = find_offset(ref16, deg16, max_lag)
    if lag >= 0:
        r, d = ref16, deg16[lag:]
    else:
        r, d = ref16[-lag:], deg16
    n = min(len(r), len(d))
    r, d = r[:n], d[:n]
    overlap = n / FS
    if overlap < MIN_OVERLAP_S:
        sys.stderr.write(
            f"score.py: overlap after alignment is {overlap:.3f} s (< {MIN_OVERLAP_S} s): "
            f"offset {lag * 1000 / FS:.1f} ms, ref {ref_dur:.3f} s, deg {deg_dur:.3f} s\n")
        return 3

    ref_db, deg_db = rms_dbfs(r), rms_dbfs(d)
    for name, db in (("reference", ref_db), ("degraded", deg_db)):
        if db < SILENCE_DBFS:
            sys.stderr.write(
                f"score.py: {name} signal is silent over the scored overlap "
                f"(RMS {db:.1f} dBFS, {overlap:.3f} s at offset {lag * 1000 / FS:.1f} ms): "
                f"nothing to score\n")
            return 5

    try:
        wb = float(pesq(FS, r, d, "wb"))
        nb = None if a.no_nb else float(pesq(FS, r, d, "nb"))
        st = float(stoi(r, d, FS, extended=False))
    except Exception as e:
        sys.stderr.write(f"score.py: scoring failed: {type(e).__name__}: {e}\n")
        return 4

    out = {
        "pesq_wb": round(wb, 4),
        "pesq_nb": None if nb is None else round(nb, 4),
        "stoi": round(st, 4),
        "offset_ms": round(lag * 1000.0 / FS, 3),
        "ref_duration_s": round(ref_dur, 4),
        "deg_duration_s": round(deg_dur, 4),
        "overlap_s": round(overlap, 4),
        "ref_rms_dbfs": round(ref_db, 2),
        "deg_rms_dbfs": round(deg_db, 2),
        "ref": a.ref,
        "deg": a.deg,
    }
    if a.json:
        print(json.dumps(out))
    else:
        print(f"PESQ-WB:  {wb:.3f}")
        if nb is not None:
            print(f"PESQ-NB:  {nb:.3f}")
        print(f"STOI:     {st:.4f}")
        print(f"offset:   {out['offset_ms']:.3f} ms (positive: degraded lags reference)")
        print(f"ref:      {ref_dur:.3f} s  {a.ref}")
        print(f"deg:      {deg_dur:.3f} s  {a.deg}")
        print(f"overlap:  {overlap:.3f} s")
        print(f"levels:   ref {ref_db:.1f} dBFS, deg {deg_db:.1f} dBFS (RMS over the overlap)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
