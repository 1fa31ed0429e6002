"""Text-to-speech back ends (Debian packages) and sox post-processing.

Training voices: espeak-ng (accents x variants), mbrola us1/us2/us3/en1 (through espeak-ng),
flite awb/rms/kal16, festival kal/ked/rab (diphone voices).
Held-out voices (never trained on): pico en-US/en-GB, every RHVoice English voice, the SLT
speaker (festival cmu_us_slt_arctic_hts, flite slt).

Every clip is converted by sox to 16 kHz (or the requested rate), mono, 16-bit PCM.
"""

import os
import random
import shutil
import subprocess
import tempfile

ESPEAK_ACCENTS = [
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
    "en-gb-x-gbclan", "en-gb-x-gbcwmd",
]
ESPEAK_VARIANTS = [
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt4", "Alex", "Andy", "Annie", "david", "linda", "max", "steph",
]
MBROLA = ["mb-us1", "mb-us2", "mb-us3", "mb-en1"]
FLITE_TRAIN = ["awb", "rms", "kal16"]
FESTIVAL_TRAIN = ["kal_diphone", "ked_diphone", "rab_diphone"]

RHVOICE_EN = ["alan", "bdl", "clb", "evgeniy-eng", "lyubov", "slt"]
HELDOUT = (
    [("pico", "en-US"), ("pico", "en-GB")]
    + [("rhvoice", v) for v in RHVOICE_EN]
    + [("festival", "cmu_us_slt_arctic_hts"), ("flite", "slt")]
)
TRAIN_ENGINES = ("espeak", "mbrola", "flite", "festival")


def check_tools(heldout=False):
    need = ["sox", "espeak-ng", "flite", "festival"]
    if heldout:
        need += ["pico2wave", "RHVoice-test"]
    missing = [t for t in need if shutil.which(t) is None]
    if missing:
        raise SystemExit(
            f"missing TTS tools {missing}: run training/data/install_tts.sh (needs contrib/non-free)"
        )


def _run(cmd, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {r.stderr.decode(errors='replace')[:400]}")
    return r


def sox_convert(src, dst, rate=16000, effects=()):
    """src -> dst as mono 16-bit PCM at `rate`, after the given sox effects. No dither (-D), so
    the output is a deterministic function of the input."""
    _run(["sox", "-q", "-D", src, "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer", dst,
          *effects])


def synth_raw(engine, voice, text, out, rate=None, pitch=None, stretch=None):
    """Synthesise `text` into the WAV file `out` at the engine's native rate."""
    if engine in ("espeak", "mbrola"):
        cmd = ["espeak-ng", "-v", voice, "-w", out]
        if rate is not None:
            cmd += ["-s", str(int(rate))]
        if pitch is not None:
            cmd += ["-p", str(int(pitch))]
        _run(cmd + [text])
    elif engine == "flite":
        cmd = ["flite", "-voice", voice, "-t", text, "-o", out]
        if stretch is not None:
            cmd[1:1] = ["--setf", f"duration_stretch={stretch:.3f}"]
        _run(cmd)
    elif engine == "festival":
        festival_batch(voice, [(text, out, stretch)])
    elif engine == "pico":
        _run(["pico2wave", "-l", voice, "-w", out, text])
    elif engine == "rhvoice":
        cmd = ["RHVoice-test", "-p", voice, "-o", out]
        if rate is not None:
            cmd += ["-r", str(int(rate))]
        if pitch is not None:
            cmd += ["-t", str(int(pitch))]
        _run(cmd, input=text.encode())
    else:
        raise ValueError(engine)
    if not os.path.exists(out) or os.path.getsize(out) < 100:
        raise RuntimeError(f"{engine}/{voice} produced no audio for {text!r}")


def festival_batch(voice, items):
    """items = [(text, out_wav, duration_stretch or None)], one festival process per call."""
    lines = [f"(voice_{voice})"]
    for text, out, stretch in items:
        t = text.replace("\\", " ").replace('"', " ")
        lines.append(f"(Parameter.set 'Duration_Stretch {stretch if stretch else 1.0:.3f})")
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{t}")) "{out}" \'riff)')
    with tempfile.NamedTemporaryFile("w", suffix=".scm", delete=False) as f:
        f.write("\n".join(lines) + "\n")
        scm = f.name
    try:
        _run(["festival", "-b", scm])
    finally:
        os.unlink(scm)
    for _, out, _ in items:
        if not os.path.exists(out) or os.path.getsize(out) < 100:
            raise RuntimeError(f"festival {voice} produced no audio for {out}")


def train_voice_draws(rng: random.Random, n_espeak=6):
    """One draw of training-voice configurations for one phrase: n_espeak random espeak-ng
    accent x variant x rate x pitch, plus every mbrola/flite/festival voice with random
    rate/pitch/duration stretch."""
    out = []
    for _ in range(n_espeak):
        acc = rng.choice(ESPEAK_ACCENTS)
        var = rng.choice(ESPEAK_VARIANTS)
        out.append(dict(engine="espeak", voice=f"{acc}+{var}", rate=rng.randint(130, 200),
                        pitch=rng.randint(25, 75)))
    for v in MBROLA:
        out.append(dict(engine="mbrola", voice=v, rate=rng.randint(130, 190),
                        pitch=rng.randint(30, 70)))
    for v in FLITE_TRAIN:
        out.append(dict(engine="flite", voice=v, stretch=rng.uniform(0.85, 1.2)))
    for v in FESTIVAL_TRAIN:
        out.append(dict(engine="festival", voice=v, stretch=rng.uniform(0.85, 1.2)))
    return out


def augment_effects(rng: random.Random):
    """Random sox effect chain: tempo 0.9-1.1, pitch +-250 cents, gain, optional light reverb,
    random leading silence. (Noise is mixed afterwards at a chosen SNR, see add_noise.)"""
    eff = ["tempo", f"{rng.uniform(0.9, 1.1):.3f}", "pitch", str(rng.randint(-250, 250))]
    if rng.random() < 0.4:
        eff += ["reverb", str(rng.randint(10, 40)), "50", str(rng.randint(20, 60))]
    eff += ["gain", f"{rng.uniform(-12, 0):.1f}"]
    eff += ["pad", f"{rng.uniform(0, 0.3):.3f}", "0"]
    return eff


def add_noise(path, snr_db, rng: random.Random, color="white"):
    """Mix sox-generated noise (white/pink/brown) into the 16-bit WAV `path` at `snr_db`
    (relative to the clip's RMS), in place."""
    import wave

    import numpy as np

    with wave.open(path, "rb") as w:
        sr = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
    dur = len(x) / sr
    with tempfile.NamedTemporaryFile(suffix=".wav", delete=False) as f:
        npath = f.name
    try:
        _run(["sox", "-q", "-R", "-n", "-r", str(sr), "-c", "1", "-b", "16", npath, "synth",
              f"{dur:.4f}", f"{color}noise", "vol", "0.5"])
        with wave.open(npath, "rb") as w:
            n = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
    finally:
        os.unlink(npath)
    n = np.resize(n, len(x))
    # random offset into the noise so clips with -R (repeatable) noise still differ
    n = np.roll(n, rng.randint(0, max(1, len(n) - 1)))
    rms_x = np.sqrt(np.mean(x**2)) + 1e-9
    rms_n = np.sqrt(np.mean(n**2)) + 1e-9
    y = x + n * (rms_x / rms_n) * 10 ** (-snr_db / 20)
    peak = np.max(np.abs(y))
    if peak > 0.99:
        y *= 0.99 / peak
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.round(y * 32767)).astype("<i2").tobytes())
