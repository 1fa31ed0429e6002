#!/usr/bin/env python3
"""Render docs/models.md (the model cards) from training/results/*.json.

    python training/make_cards.py

Every figure in the cards comes from the results files written by training/train.py; targets
that are not reached are printed as misses. The "CI card check" table is parsed by
models/tests/model_cards.rs.
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RES = os.path.join(HERE, "results")
OUT = os.path.join(REPO, "docs", "models.md")


def load(name):
    p = os.path.join(RES, f"{name}.json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def pct(x):
    return "–" if x is None else f"{100 * x:.2f} %"


def kib(b):
    return f"{b / 1024:.1f} KiB"


def minutes(s):
    return f"{s / 60:.1f} min"


def status(ok):
    return "**met**" if ok else "**MISSED**"


def size_line(r):
    return (f"File {kib(r['file_bytes'])} ({r['file_bytes']} bytes); the same parameters in fp32 "
            f"would take {kib(r['fp32_equivalent_bytes'])}: **{r['compression_vs_fp32']:.1f}x** "
            f"smaller (3-bit packed shift weights; the fp32 stem/classifier, per-channel scales and "
            f"biases stay f32).")


def group_table(title, a, b, a_name, b_name, key_a, key_b):
    rows = [f"| {title} | clips | {a_name} | {b_name} |", "|---|---|---|---|"]
    for g in sorted(a[key_a]):
        rows.append(f"| {g} | {a[key_a][g]['n']} | {pct(a[key_a][g]['acc'])} | "
                    f"{pct(b[key_b][g]['acc'])} |")
    return "\n".join(rows)


def spec_block(spec):
    return "\n\n```json\n" + json.dumps(spec) + "\n```\n"


def main():
    d = load("digits")
    it = load("intent")
    il = load("intent-lstm")
    fa = load("fashion")
    ev = load("intent-eval")
    parts = []
    parts.append("""# Bundled models (model cards)

The four models in `models/repository/` are served by `shiftserve serve` out of the box. They were
trained here, on 2 shared CPU cores, by `training/train.py` with the `shiftserve_train` package
(DenseShift sign-scale decomposition with straight-through estimators and N(0, 1e-3) latent
initialisation; 8-bit activation calibration and fake-quant fine-tuning; BN folding; export).
Every shift model has a full-precision twin trained with the same recipe, data and epochs.
"Exported file" figures are computed from the exported `.safetensors` by the independent
reference forward (`shiftserve_train.reference`), i.e. integer 8-bit activation path, exactly what
the server runs; "PyTorch" figures are the training-framework models (fp32 twin, and the shift
model with fake-quant on).

How the figures came about: the first round of training (session 1) ran on a machine whose two
cores were shared with five engineers compiling Rust, so its models stopped after 2-20 epochs
and missed three targets. `fashion`, `intent` and `intent-lstm` were then retrained (session 2)
with the recipes and epoch counts printed in each card; """ + DIGITS_HISTORY[bool(d and "xvalid_acc_file" in d["shift"])] + """ The training times quoted are wall times of single-thread processes while
four to six training runs shared the two cores: upper bounds for an idle 2-core machine, where
they were not measured. Misses are printed as misses.

All figures on this page are generated from `training/results/*.json` by
`python training/make_cards.py`.
""")
    # summary
    rows = ["| model | task | architecture | weights | file | vs fp32 | headline | target | status |",
            "|---|---|---|---|---|---|---|---|---|"]
    if fa and not object_front_end(fa):
        t = fa["shift"]["test_acc_file"]
        gap = fa["fp32"]["test_acc_pytorch"] - t
        rows.append(f"| `fashion` | image classification | DenseShift ResNet (CIFAR stem) | W3, int8 act. | "
                    f"{kib(fa['file_bytes'])} | {fa['compression_vs_fp32']:.1f}x | test {pct(t)} (FP twin "
                    f"{pct(fa['fp32']['test_acc_pytorch'])}) | >= 93 % and within 1 pt of FP | "
                    f"{status(t >= 0.93 and gap <= 0.01)} |")
    elif fa:
        t, ti = fashion_headline(fa)
        gap = fa["fp32"]["test_acc_pytorch"] - min(t, ti)
        rows.append(f"| `fashion` | image classification | DenseShift ResNet (CIFAR stem) | W3, int8 act. | "
                    f"{kib(fa['file_bytes'])} | {fa['compression_vs_fp32']:.1f}x | official test PNGs as they are "
                    f"{pct(t)}, inverted {pct(ti)} (FP twin {pct(fa['fp32']['test_acc_pytorch'])}) | "
                    f">= 93 % both and within 1 pt of FP | {status(min(t, ti) >= 0.93 and gap <= 0.01)} |")
    if it and ev and "intent" in ev:
        t = it["shift"]["test_acc_file"]
        u = ev["intent"]["unseen"]["acc"]
        rows.append(f"| `intent` | spoken intent | DenseShift SLU ResNet | W3, int8 act. | {kib(it['file_bytes'])} | "
                    f"{it['compression_vs_fp32']:.1f}x | held-out voices {pct(t)} (FP twin "
                    f"{pct(it['fp32']['test_acc_pytorch'])}); new wordings {pct(u)} | >= 95 % held-out voices, "
                    f">= 92 % new wordings | {status(t >= 0.95 and u >= 0.92)} |")
    elif it:
        t = it["shift"]["test_acc_file"]
        rows.append(f"| `intent` | spoken intent | DenseShift SLU ResNet | W3, int8 act. | {kib(it['file_bytes'])} | "
                    f"{it['compression_vs_fp32']:.1f}x | held-out voices {pct(t)} (FP twin "
                    f"{pct(it['fp32']['test_acc_pytorch'])}) | >= 95 % | {status(t >= 0.95)} |")
    if il:
        t = il["tt"]["test_acc_file"]
        dn = il["dense"]["test_acc_pytorch"]
        nw = (f"; new wordings {pct(ev['intent-lstm']['unseen']['acc'])} (no dense-twin figure)"
              if ev and "intent-lstm" in ev else "")
        rows.append(f"| `intent-lstm` | spoken intent | LSTM, MPS tensor-train weights | fp32 TT cores | "
                    f"{kib(il['file_bytes'])} | – | held-out voices {pct(t)} (dense twin {pct(dn)}){nw}; "
                    f"TT storage {100 * il['tt_storage_fraction']:.1f} % of dense | within 1.5 pt of dense, "
                    f"storage < 10 % | {status(dn - t <= 0.015 and il['tt_storage_fraction'] < 0.1)} |")
    if d:
        t = d["shift"]["test_acc_file"]
        sp = d["shift"]["test_per_speaker_file"]
        rows.append(f"| `digits` | audio classification | DenseShift ResNet | W3, int8 act. | {kib(d['file_bytes'])} | "
                    f"{d['compression_vs_fp32']:.1f}x | george+lucas {pct(t)} (george {pct(sp['george']['acc'])}, "
                    f"lucas {pct(sp['lucas']['acc'])}; FP twin {pct(d['fp32']['test_acc_pytorch'])}) | "
                    f">= 93 % together, >= 90 % each | {status(digits_met(d))} |")
    parts.append("## Summary\n\n" + "\n".join(rows) + "\n")

    if fa:
        parts.append(fashion_card(fa))
    if it:
        parts.append(intent_card(it) + intent_eval_text("intent", it, ev))
    if il:
        parts.append(intent_lstm_card(il) + intent_eval_text("intent-lstm", il, ev))
    if d:
        parts.append(digits_card(d))

    cc = ["## CI card check", "",
          "`models/tests/model_cards.rs` runs these fixed subsets through the Rust runtime "
          "(`Model::preprocess` on the encoded PNG/WAV bytes, then a session) and fails if its "
          "accuracy differs from the figure below by more than 1.5 points, or if the data is "
          "missing. The figures are the exported file's accuracy on the same subsets with the "
          "Python reference preprocessing and forward. CI needs "
          "`training/data/make_eval_subset.sh` (installs the TTS voices and "
          "`dataset-fashion-mnist`, synthesises the 310 held-out intent clips into "
          "`data/eval/intents`) and FSDD at `../shared/data/fsdd`.", "",
          "| model | subset | samples | accuracy |", "|---|---|---|---|"]
    if fa:
        if not object_front_end(fa):
            cc.append(f"| `fashion` | first 500 official test images, PNG, light background (255 - pixel) | "
                      f"{fa['card_check']['n']} | {100 * fa['card_check']['acc']:.2f} % |")
    if fa and object_front_end(fa):
        cc.append(f"| `fashion` | first 500 official test images, PNG as they are (light garment on black) | "
                  f"{fa['card_check']['n']} | {100 * fa['card_check']['acc']:.2f} % |")
        cc.append(f"| `fashion` (inverted) | the same 500, inverted (255 - pixel) | "
                  f"{fa['card_check_inverted']['n']} | {100 * fa['card_check_inverted']['acc']:.2f} % |")
    if it:
        cc.append(f"| `intent` | 310 held-out-voice clips (1 phrasing per intent and voice) | "
                  f"{it['card_check']['n']} | {100 * it['card_check']['acc']:.2f} % |")
    if il:
        cc.append(f"| `intent-lstm` | 310 held-out-voice clips (1 phrasing per intent and voice) | "
                  f"{il['card_check']['n']} | {100 * il['card_check']['acc']:.2f} % |")
    if d:
        cc.append(f"| `digits` | FSDD george + lucas, recordings 0-9 of each digit | "
                  f"{d['card_check']['n']} | {100 * d['card_check']['acc']:.2f} % |")
    parts.append("\n".join(cc) + "\n")
    with open(OUT, "w") as f:
        f.write("\n".join(parts))
    print("wrote", OUT)


def fashion_headline(r):
    """(as-is, inverted) accuracy on the official test set over HTTP (eval_fashion_http.py), or
    from the exported file through the Python reference when not measured over HTTP."""
    h = r.get("http")
    if h:
        return h["as_is"]["acc"], h["inverted"]["acc"]
    return r["shift"]["test_acc_file"], r["shift"].get("test_acc_file_inverted", r["shift"]["test_acc_file"])


def object_front_end(r):
    return r["spec"].get("background") == "auto"


def fashion_card(r):
    if not object_front_end(r):
        return fashion_card_fixed_inversion(r)
    f, s = r["fp32"], r["shift"]
    t, ti = fashion_headline(r)
    h = r.get("http")
    gap = f["test_acc_pytorch"] - min(t, ti)
    prev = r.get("previous")
    prev_text = ""
    if prev:
        cases = prev["cases"]
        prev_text = (f"""
**Against the model it replaces** (session 2: resize + fixed inversion, trained on the images
unchanged, test {pct(prev["test_acc_file"])} when clients inverted dataset images first), over the
same server path: official test PNGs as they are {pct(prev["http"]["as_is"]["acc"])} (now
{pct(t)}), inverted {pct(prev["http"]["inverted"]["acc"])} (now {pct(ti)}); the pictures of
`models/tests/fixtures/frame` (one T-shirt as a dataset image, inverted, product photos on
off-white 235 and grey 200, a transparent cut-out, an EXIF-6 phone JPEG): {cases["before"]} of
{cases["n"]} answered "t-shirt/top" before, {cases["after"]} of {cases["n"]} now.
""")
    http_rows = ""
    if h:
        http_rows = (f"| official test as PNG, unchanged, POSTed to `shiftserve serve` | | | "
                     f"{pct(h['as_is']['acc'])} |\n"
                     f"| official test as PNG, inverted, POSTed to `shiftserve serve` | | | "
                     f"{pct(h['inverted']['acc'])} |\n")
    return f"""## `fashion` — DenseShift W3 ResNet on Fashion-MNIST

**What to POST.** A picture of one garment, as users have them: a Fashion-MNIST image as it is
(light garment on black) or inverted, a product photo on a white, off-white or grey background,
a cut-out PNG with a transparent background, a phone JPEG with an EXIF orientation. The file's
preprocessing is {spec_block(r["spec"])}
(docs/format.md, "Pictures of one object"): EXIF orientation applied; alpha composited over the
picture's own background (estimated from its opaque border); polarity and background level
decided from the border, so the garment arrives light on a background of 0 as in the dataset;
the garment's bounding box resized (aspect kept) so its longer side is 28 and centred, as
Fashion-MNIST framed its garments; then the dataset mean/std.

**Data.** Fashion-MNIST from Debian's `dataset-fashion-mnist` (MIT): the official 60,000 training
images (last 5,000 held out as validation, 55,000 trained on) and the official 10,000 test images.
Every training input goes through the served front end (the Python reference implementation,
bit-compatible with the Rust one up to f32 rounding). Augmentation for what the front end cannot
normalise, {r["augmentation"]}.

**Recipe.** ResNet-8 with CIFAR stem (fp32 3x3 conv + BN at 28x28), three stages of one
BasicBlock each, widths {r.get("width", 16)}/{2 * r.get("width", 16)}/{4 * r.get("width", 16)}, {fashion_strides(r)}, all body convolutions DenseShift W3 (weights
±{{1,2,4,8}} times a per-channel float scale from the folded BN), fp32 classifier. AdamW, one-cycle
cosine schedule (peak lr 3e-3), label smoothing 0.1, batch 128, {r["epochs"]} epochs;{fashion_finetune_text(r)} then
activation calibration (99.99th percentile ranges, 8 batches) and 150 steps of fake-quant
fine-tuning (lr 3e-4). The FP twin is the same network with fp32 convs, same recipe{" without the extra epochs" if r.get("finetune_epochs") else ""}.

| split | FP twin (PyTorch) | W3 (PyTorch, fake-quant) | W3 exported file |
|---|---|---|---|
| validation (5,000) | {pct(f["valid_acc_pytorch"])} | {pct(s["valid_acc_pytorch"])} | not run |
| official test (10,000), through the front end | {pct(f["test_acc_pytorch"])} | {pct(s["test_acc_pytorch"])} | {pct(s["test_acc_file"])} |
{http_rows}
Target: >= 93 % on the official test PNGs as they are and inverted, within 1 point of the FP
twin: {status(min(t, ti) >= 0.93 and gap <= 0.01)} (93 %: {status(min(t, ti) >= 0.93)}; within 1 point of the
twin: {status(gap <= 0.01)}, gap {100 * gap:+.2f} points).{fashion_gap_text(r)}
{prev_text}
{size_line(r)}

Training time: FP twin {minutes(f["train_seconds"])}, W3 {minutes(s["train_seconds"])} (trained in
parallel, one thread each, niced, on the shared machine, with the other sessions' builds);
whole command {minutes(r["wall_seconds_total"])}{" (" + r["wall_note"] + ")" if r.get("wall_note") else ""}. The run is resumable: each variant checkpoints
after every epoch under `$SHIFTSERVE_DATA/fashion/ckpt` and a rerun continues from there.
Reproduce: `nice -n 19 python training/train.py fashion --epochs {r["epochs"]}{fashion_finetune_cmd(r)}`, then
`nice -n 19 python training/eval_fashion_http.py --shiftserve target/release/shiftserve --record`.
"""


def fashion_finetune_cmd(r):
    """The train.py options of the run beyond --epochs (those that differ from the defaults)."""
    cmd = ""
    if r.get("width", 16) != 16:
        cmd += f" --width {r['width']}"
    if r.get("first_stride", 1) != 1:
        cmd += f" --first-stride {r['first_stride']}"
    if r.get("p_aug", 0.5) != 0.5:
        cmd += f" --p-aug {r['p_aug']:g}"
    n = r.get("finetune_epochs")
    return cmd + (f" --finetune-epochs {n}" if n else "")


def fashion_finetune_text(r):
    n = r.get("finetune_epochs")
    if not n:
        return ""
    return (f" then, for the W3 model only, {n} more epochs (a second one-cycle cosine schedule, peak "
            f"lr {r['finetune_lr']:g}, fresh augmented epochs with 30 % synthetic pictures);")


def fashion_gap_text(r):
    f = r["fp32"]
    t, ti = fashion_headline(r)
    if min(t, ti) >= 0.93:
        return ""
    return (f" The 93 % miss is the size of the network and of the training budget, not the shift "
            f"weights: the full-precision twin of the same ResNet-8 stops at {pct(f['test_acc_pytorch'])} "
            f"after {r['epochs']} epochs (the session's compute on two cores shared with four other "
            f"sessions).")


def fashion_card_fixed_inversion(r):
    """Card of a model with the session-2 front end (resize + fixed inversion)."""
    f, s = r["fp32"], r["shift"]
    return f"""## `fashion` — DenseShift W3 ResNet on Fashion-MNIST

**Data.** Fashion-MNIST from Debian's `dataset-fashion-mnist` (MIT): the official 60,000 training
images (last 5,000 held out as validation, 55,000 trained on) and the official 10,000 test images.
Augmentation: random crop (2-pixel zero padding) and horizontal flip.

**What to POST.** A photo of one garment on a **light** background (a product photo). The file's
preprocessing is {spec_block(r["spec"])}
i.e. luma, shorter side resized to 28, center crop 28x28, then **inverted** (`1 - x`) so that a
light background becomes the dataset's black background, then normalised with the dataset
mean/std. The network is therefore trained on the official images unchanged (for a dataset image
`v` the served pipeline sees the light-background photo `255 - v` and inverts it back). Images in
the dataset's own polarity (light garment on black) must be inverted by the client before posting.

**Recipe.** ResNet-8 with CIFAR stem (fp32 3x3 conv + BN at 28x28), three stages of one
BasicBlock each, widths {r.get("width", 16)}/{2 * r.get("width", 16)}/{4 * r.get("width", 16)}, {fashion_strides(r)}, all body convolutions DenseShift W3 (weights
±{{1,2,4,8}} times a per-channel float scale from the folded BN), fp32 classifier. AdamW, one-cycle
cosine schedule (peak lr 3e-3), label smoothing 0.1, batch 128, {r["epochs"]} epochs; then
activation calibration (99.99th percentile ranges, 8 batches) and 150 steps of fake-quant
fine-tuning (lr 3e-4). The FP twin is the same network with fp32 convs, same recipe.

| split | FP twin (PyTorch) | W3 (PyTorch, fake-quant) | W3 exported file |
|---|---|---|---|
| validation (5,000) | {pct(f["valid_acc_pytorch"])} | {pct(s["valid_acc_pytorch"])} | not run |
| official test (10,000) | {pct(f["test_acc_pytorch"])} | {pct(s["test_acc_pytorch"])} | {pct(s["test_acc_file"])} |

Target: test >= 93 % and within 1 point of the FP twin: {status(s["test_acc_file"] >= 0.93 and f["test_acc_pytorch"] - s["test_acc_file"] <= 0.01)}
(93 %: {status(s["test_acc_file"] >= 0.93)}; within 1 point of the twin: {status(f["test_acc_pytorch"] - s["test_acc_file"] <= 0.01)}, gap
{100 * (f["test_acc_pytorch"] - s["test_acc_file"]):+.2f} points).{fashion_gap_text_fixed_inversion(r)}

{size_line(r)}

Training time: FP twin {minutes(f["train_seconds"])}, W3 {minutes(s["train_seconds"])} (trained in
parallel, one thread each, niced, on the shared machine); whole command {minutes(r["wall_seconds_total"])}.
Reproduce: `nice -n 10 python training/train.py fashion`.
"""


def fashion_gap_text_fixed_inversion(r):
    f, s = r["fp32"], r["shift"]
    if s["test_acc_file"] >= 0.93:
        return ""
    return (f" The 93 % miss is the size of the network and of the training budget, not the shift "
            f"weights: the full-precision twin of the same ResNet-8 stops at {pct(f['test_acc_pytorch'])} "
            f"after {r['epochs']} epochs. A width-24 variant (1.8x the CPU time per training step, measured) was "
            f"started but stopped after 4 of 24 epochs because it did not fit the session's compute.")


def fashion_strides(r):
    if r.get("first_stride", 2) == 1:
        return "stage strides 1/2/2 (28x28, 14x14, 7x7)"
    return "every stage with stride 2 (14x14, 7x7, 4x4)"


def wave_aug_text(r):
    if not r.get("wave_aug"):
        return ""
    return (" Online waveform augmentation per batch (features recomputed from the augmented wave): "
            "speed perturbation 0.85-1.15 (tempo and pitch together), random leading silence up to "
            "0.35 s, gain 0.3-1, white noise at 10-40 dB SNR (60 %).")


def intent_common():
    return """**Data.** Fluent-Speech-Commands-style intents, synthesised (training/data/make_intents.py):
31 intents (action / object / location) with 5-8 natural phrasings each (199 phrases, e.g.
"turn on the lights in the kitchen", "kitchen lights on", "switch on the kitchen lights").
Training voices only: espeak-ng (8 English accents x 22 variants, random rate 130-200 wpm and
pitch 25-75; 6 draws per phrase), mbrola us1/us2/us3/en1 (through espeak-ng, random rate and
pitch), flite awb/rms/kal16 and festival kal/ked/rab diphone voices (random duration stretch
0.85-1.2): 3,184 clean clips, each with 2 sox-augmented copies (tempo 0.9-1.1, pitch ±250
cents, light reverb in 40 %, gain, up to 0.3 s leading silence, white/pink/brown noise at 5-30 dB
SNR in 5 of 6 copies). Validation: 10 % of the (phrase, voice draw) groups with their copies
(993 clips); training 8,559 clips. **Test: held-out voices only**, never trained on: pico
en-US and en-GB, RHVoice alan, bdl, clb, evgeniy-eng, lyubov, slt, festival
cmu_us_slt_arctic_hts and flite slt, every phrase once (1,990 clips). As in FSC's speaker split,
test differs from training by voice, not by wording. All clips 16 kHz mono 16-bit. (The clips
used here were converted by sox with its default dither; the committed scripts now pass `-D`
so that the CI subset is byte-reproducible, which changes regenerated clips only in the least
significant bit.)
"""


def intent_wide_text(r):
    """Data and recipe paragraph of a run on the wide grammar (train.py intent --wide, issue 11)."""
    return f"""**Data (wide grammar, issue 11).** Training: training/data/intents_wide.py, a grammar
of many wordings per intent (synonyms of every action, object and location, polite frames such as
"could you please" / "would you mind ...ing", fillers, fronted locations "in the kitchen, ...",
indirect phrasings unambiguous in FSC semantics such as "it's too dark in here" or "i'm
freezing"), sampled stratified per intent ({r["train_sentences"]:,} distinct sentences including
the 199 original phrasings). **The grammar was written without reading the held-out new
wordings** of intents_unseen.py; the generator drops (and only counts) any sentence equal to one.
Synthesised by training/data/make_intents_wide.py with training voices only (every engine of the
list below, one random voice configuration per clip: 2 per new sentence, 6 per original
phrasing), each clip under a random sox chain ({r["augmentation"]}): {r["train_clips"]:,} clips;
clips up to 1.4x longer than the 3 s window are sped up to fit, longer ones cut. Validation and
test: the splits of the bundled run (make_intents.py --no-train), i.e. training voices / held-out
voices x the 199 original phrasings.

{intent_common()}"""


def intent_gap_text(r):
    f, s = r["fp32"], r["shift"]
    if s["test_acc_file"] >= 0.95:
        return ""
    if r.get("data") == "intents-wide":
        return (f" The full-precision twin reaches {pct(f['test_acc_pytorch'])} on the held-out voices "
                f"(the W3 model is {100 * (f['test_acc_pytorch'] - s['test_acc_file']):+.2f} points from it).")
    return (f" The shortfall is voice generalisation, not the shift weights: the full-precision twin "
            f"reaches {pct(f['test_acc_pytorch'])} on the held-out voices too (the W3 model is "
            f"{100 * (f['test_acc_pytorch'] - s['test_acc_file']):+.2f} points from it), while both "
            f"reach about {100 * s['valid_acc_file']:.0f} % on unseen recordings of the training voices; "
            f"the weakest held-out voices are female (RHVoice lyubov, the SLT voices), which the mostly "
            f"male training voices cover least. An online waveform-augmentation variant "
            f"(`--wave-aug`) was started but stopped for compute after 23 of 40 epochs, so it has no "
            f"test figure.")


def intent_card(r):
    f, s = r["fp32"], r["shift"]
    wide = r.get("data") == "intents-wide"
    aug = ("\nonline per batch: " + r["augmentation"].split("+ online ", 1)[-1] + "." if wide else
           f"\nSpecAugment (2 frequency masks <= 4 bins, 2 time masks <= 10 frames).{wave_aug_text(r)}")
    repro = ("`nice -n 15 python training/data/make_intents_wide.py`, then `SHIFTSERVE_RUN_TAG=-wide nice -n 15 "
             f"python training/train.py intent --wide --epochs {r['epochs']} --no-install` (resumable: "
             "rerun the same command) and `python training/train.py intent --install-results intent-wide`"
             if wide else
             "`nice -n 10 python training/data/make_intents.py`\nthen `nice -n 10 python training/train.py "
             f"intent --epochs {r['epochs']} --qat-steps {r.get('qat_steps', 150)}`")
    return f"""## `intent` — DenseShift W3 SLU ResNet on log-mel

{intent_wide_text(r) if wide else intent_common()}
**Preprocessing** (in the file; training features computed with `shiftserve_train.features.LogMel`
from the same spec): {spec_block(r["spec"])}
A 3 s window with 20 ms hop: 40 x 151 log-mel, per-utterance normalised.

**Recipe.** End-to-end SLU shift ResNet after Avila et al.: fp32 7x7/2 stem conv + BN + 3x3/2
max-pool on the 1-channel log-mel, four BasicBlock stages (widths 16/32/64/128, one block each,
strides 1/2/2/2) of DenseShift W3 convs, global average pooling, fp32 classifier over the 31
intents. AdamW, one-cycle cosine (peak 3e-3), label smoothing 0.1, batch 64, {r["epochs"]} epochs,{aug} Then 8-bit activation
calibration and {r.get("qat_steps", 150)} fake-quant fine-tuning steps. FP twin: same network with fp32 convs.

| split | FP twin (PyTorch) | W3 (PyTorch, fake-quant) | W3 exported file |
|---|---|---|---|
| validation (training voices, 993) | {pct(f["valid_acc_pytorch"])} | {pct(s["valid_acc_pytorch"])} | {pct(s["valid_acc_file"])} |
| test: held-out voices (1,990) | {pct(f["test_acc_pytorch"])} | {pct(s["test_acc_pytorch"])} | {pct(s["test_acc_file"])} |

Exact-intent accuracy (all three slots right). Target >= 95 % on held-out voices:
{status(s["test_acc_file"] >= 0.95)}.{intent_gap_text(r)}

Held-out accuracy per voice:

{group_table("voice", f, s, "FP twin", "W3 exported file", "test_per_voice_pytorch", "test_per_voice_file")}

{size_line(r)}

Training time: FP twin {minutes(f["train_seconds"])}, W3 {minutes(s["train_seconds"])} (in parallel,
one thread each); whole command {minutes(r["wall_seconds_total"])} (data generation, {"about 15 min for the wide set" if wide else "~4-9 min"} on the
loaded machine, not included). Reproduce: {repro}
(the driver generates missing data itself).
"""


def intent_eval_text(name, r, ev):
    """The second held-out set (new wordings x held-out voices x conditions), calibration and the
    out-of-vocabulary threshold report of training/eval_intent.py (results/intent-eval.json)."""
    if not ev or name not in ev:
        return ""
    e, sets = ev[name], ev["sets"]
    te, un = e["test"], e["unseen"]
    conds = ["clean", "tempo 0.9", "tempo 1.1", "reverb", "noise 20 dB"]
    if name == "intent":
        card_test = r["shift"]["test_acc_file"]
        twin = r["fp32"]["test_acc_pytorch"]
        fu = r.get("fp32_unseen")
        targets = (f"Targets: >= 95 % on the held-out voices: {status(card_test >= 0.95)} "
                   f"({pct(card_test)}); >= 92 % on the new wordings: {status(un['acc'] >= 0.92)} "
                   f"({pct(un['acc'])}). " + (
                       f"Full-precision twin (PyTorch, train.py --wide keeps its weights): {pct(twin)} on "
                       f"the held-out voices, {pct(fu)} on the new wordings." if fu is not None else
                       f"No full-precision twin figure exists for the new set (the twin "
                       f"was not kept as a file; it scored {pct(twin)} on the held-out voices)."))
    else:
        card_test = r["tt"]["test_acc_file"]
        dn = r["dense"]["test_acc_pytorch"]
        targets = (f"Targets: within 1.5 points of the dense twin on the held-out voices: "
                   f"{status(dn - card_test <= 0.015)} (gap {100 * (dn - card_test):+.2f} points); on the new "
                   f"wordings: **not measured**: the dense twin's weights were not kept "
                   f"(`$SHIFTSERVE_DATA/intents/intent-lstm.dense.pt` is gone), so there is no twin figure "
                   f"for the new set; the TT-LSTM reaches {pct(un['acc'])} there (the target of `intent`, "
                   f">= 92 %, would be {status(un['acc'] >= 0.92).strip('*').lower()}).")
    pc = un["per_condition"]
    crow = " | ".join(f"{pct(pc[c]['acc'])} ({pc[c]['n']})" for c in conds)
    ctab = ("| new wordings | " + " | ".join(conds) + " | all |\n|---|" + "---|" * (len(conds) + 1) + "\n"
            f"| accuracy (clips) | {crow} | **{pct(un['acc'])}** ({un['n']}) |")
    vrows = ["| voice | training phrasings, clean (199) | new wordings, all (155) | " + " | ".join(conds) + " |",
             "|---|---|---|" + "---|" * len(conds)]
    for v in sorted(un["per_voice"]):
        vc = un["per_voice_condition"][v]
        vrows.append(f"| {v} | {pct(te['per_voice'][v]['acc'])} | {pct(un['per_voice'][v]['acc'])} | "
                     + " | ".join(pct(vc[c]["acc"]) for c in conds) + " |")
    hard = "; ".join(f"\"{h['text']}\" ({h['label']}, wrong for {h['wrong']} of 10 voices: "
                     f"{', '.join(h['answers'])})" for h in un["hardest_wordings"][:5])
    lw = un.get("longer_than_window")
    long_text = ""
    if lw and lw["n"]:
        long_text = (f"{lw['n']} new-wording clips are longer than the {lw['seconds']:g} s input window and are cut "
                     f"at its end ({', '.join(f'{c}: {k}' for c, k in lw['per_condition'].items() if k)}; reverb "
                     f"clips carry a 0.6 s tail, tempo 0.9 stretches): {pct(lw['acc'])} correct on them. ")
    cal = ["| set | clips | accuracy | ECE before (T = 1) | ECE after | NLL before | NLL after |",
           "|---|---|---|---|---|---|---|"]
    for key, title in (("valid", "validation, training voices (T fitted here)"),
                       ("test", "held-out voices, training phrasings"),
                       ("unseen", "held-out voices, new wordings")):
        x = e[key]
        cal.append(f"| {title} | {x['n']:,} | {pct(x['acc'])} | {pct(x['ece_before'])} | {pct(x['ece_after'])} | "
                   f"{x['nll_before']:.3f} | {x['nll_after']:.3f} |")

    clean = pc["clean"]["acc"]
    gen_text = (f"What the new set shows: spoken clean by the same held-out voices, the new wordings reach "
                f"{pct(clean)} against {pct(te['acc'])} for the training phrasings, so most of the gap is "
                f"wording, not voice or condition (the conditions cost {100 * (clean - min(pc[c]['acc'] for c in conds)):.1f} "
                f"points at most, {min(conds, key=lambda c: pc[c]['acc'])} the most). The errors suggest that the model "
                f"matches the sound of the phrasings it was trained on rather than their words: unseen verbs (\"kill the lights\") get the nearest "
                f"known phrase's intent, long indirect requests pick up a location that is not there. "
                f"Closing it needs training data with many more wordings (a retraining, outside this "
                f"evaluation). ")
    ta, ua = e["test"], e["unseen"]
    cal_text = (f"T {'< 1 sharpens' if e['temperature'] < 1 else '> 1 softens'} the scores: trained with label "
                f"smoothing 0.1, the model's raw top-1 probabilities are "
                f"{'under' if e['temperature'] < 1 else 'over'}-confident on the training voices. On the held-out "
                f"voices with the training phrasings the fitted T moves the ECE from {pct(ta['ece_before'])} to "
                f"{pct(ta['ece_after'])}; on the new wordings from {pct(ua['ece_before'])} to {pct(ua['ece_after'])}"
                + (" (worse: most new-wording answers are wrong, and sharpening makes them confidently wrong; a "
                   "temperature fitted on the training voices does not carry over to unseen wordings)."
                   if ua["ece_after"] > ua["ece_before"] else ".")
                + " For the `threshold`, T matters less than the model: at the same loss of at most "
                f"{100 * 0.05:.0f} % of the in-vocabulary clips the recommended thresholds catch {pct(next(x['oov_caught'] for x in e['threshold_calibrated']['test+unseen'] if x['threshold'] == e['recommended_threshold_calibrated']) if e['recommended_threshold_calibrated'] else None)} "
                f"calibrated and {pct(next(x['oov_caught'] for x in e['threshold_raw']['test+unseen'] if x['threshold'] == e['recommended_threshold_raw']) if e['recommended_threshold_raw'] else None)} raw "
                f"of the OOV clips (the temperature changes the order of the top-1 scores across clips only a little; it "
                f"mainly changes the number a client sees).")

    def thr_table(tab, rec):
        rows = ["| threshold on top-1 probability | OOV caught (all) | OOV near | OOV far | in-vocabulary lost "
                "(correct answers turned away) | lost: training phrasings / new wordings | wrong answers "
                "turned away | accuracy of the answered |",
                "|---|---|---|---|---|---|---|---|"]
        for x in tab:
            mark = " (recommended)" if x["threshold"] == rec else ""
            rows.append(f"| {x['threshold']:.2f}{mark} | {pct(x['oov_caught'])} | {pct(x['oov_near_caught'])} | "
                        f"{pct(x['oov_far_caught'])} | {pct(x['invocab_lost'])} | "
                        f"{pct(x.get('invocab_lost_test'))} / {pct(x.get('invocab_lost_unseen'))} | "
                        f"{pct(x['invocab_wrong_caught'])} | {pct(x['invocab_answered_acc'])} |")
        return "\n".join(rows)

    rc, rr = e["recommended_threshold_calibrated"], e["recommended_threshold_raw"]
    rec_text = (f"Recommended (rule: {e['recommendation_rule']}): **{rc}** on the calibrated probability "
                if rc is not None else f"No threshold meets the rule ({e['recommendation_rule']}) on the calibrated probability ")
    rec_text += (f"and **{rr}** on the raw probability (a file without a temperature)."
                 if rr is not None else "and none on the raw probability.")
    return f"""
### `{name}`: new wordings, calibration and out-of-vocabulary commands

Measured by `training/eval_intent.py` on the installed file (reference forward, features from each
WAV by `shiftserve_train.features.audio_features`). **Second held-out set** (never trained on, not
generated from the training templates): {sets["unseen"]}. Reverb: sox `reverb 50 50 100 100 20`
(a living-room-sized room, wet and dry); noise: white/pink/brown noise at 20 dB SNR relative to the
clip's own power; tempo: sox `tempo -s` (pitch kept). Out-of-vocabulary set: {sets["oov"]}.
The held-out-voice test clips were regenerated for this evaluation (`make_intents.py --no-train`,
the same draws; sox without dither now): {pct(te["acc"])} on them (the table above: {pct(card_test)} on
the original clips).

{targets}

{ctab}

Per voice (each voice has 31 new-wording clips per condition):

{chr(10).join(vrows)}

{gen_text}{long_text}The new wordings missed by most voices: {hard}.

**Calibration.** One temperature fitted on the validation split of the training voices (NLL,
golden-section search): **T = {e["temperature"]:.3f}** (scores = softmax(logits / T)), written into the
installed file (`shiftserve.temperature`, `eval_intent.py --write-temperature`; the logits do not
change), so the scores the server answers with and its `threshold` are the calibrated ones. Expected
calibration error, {ev["ece_bins"]} equal-width confidence bins:

{chr(10).join(cal)}

{cal_text}

**Out-of-vocabulary commands and the `threshold`** (docs/api.md: `understood` is false when the
top-1 probability is below it). In-vocabulary clips = the held-out test and new-wording clips pooled
({te["n"] + un["n"]:,}); OOV = {e["oov"]["n"]} clips (mean top-1 probability on them: raw
{pct(e["oov"]["mean_top1_raw"])}, calibrated {pct(e["oov"]["mean_top1_calibrated"])}). With the
calibrated probability:

{thr_table(e["threshold_calibrated"]["test+unseen"], rc)}

With the raw probability (T = 1, a file without a temperature):

{thr_table(e["threshold_raw"]["test+unseen"], rr)}

{rec_text} Reproduce: `nice -n 15 python training/eval_intent.py [--write-temperature]` (generates the sets under
`$SHIFTSERVE_DATA/intents-eval` and `$SHIFTSERVE_DATA/intents-unseen` when missing).
"""


def tt_ranks_text(r):
    if "tt_ranks" in r:
        ih, hh = r["tt_ranks"]["ih"], r["tt_ranks"]["hh"]
        return (f"{r.get('tt_rank')} clamped to each bond's useful maximum (W_ih {ih}, W_hh {hh}: "
                f"a bond between modes of product 2 and the rest never needs rank above 2)")
    return f"all {r.get('tt_rank', 8)}"


def tt_init_text(r):
    if r.get("tt_init_mode") != "dense":
        return " The TT cores are trained from scratch with the same recipe."
    i = r["tt_init"]
    text = (f"\n\n**TT model = the compressed dense twin.** After the twin is trained, its W_ih and "
            f"W_hh are decomposed by TT-SVD (sequential truncated SVDs, "
            f"`TTLinear.load_dense`) to the bond ranks above (relative Frobenius error "
            f"{i['ih_rel_error']:.3f} for W_ih, {i['hh_rel_error']:.3f} for W_hh; validation accuracy "
            f"right after the decomposition {pct(i['valid_acc_after_svd'])}), the bias (b_ih + b_hh) "
            f"and classifier are copied, and the cores are fine-tuned for {r['tt_epochs']} epochs "
            f"(peak lr {r['tt_lr']:g}) against 0.5 x label-smoothed CE + 0.5 x T^2 KL to the dense "
            f"twin's outputs (knowledge distillation, T = 2).")
    sc = load("intent-lstm-scratch")
    if sc:
        text += (f" For comparison, the same TT-LSTM trained from scratch ({sc['epochs']} epochs, "
                 f"random cores, `--tt-init random`) reaches {pct(sc['tt']['test_acc_file'])} on the "
                 f"held-out voices (validation {pct(sc['tt']['valid_acc_file'])}), against "
                 f"{pct(sc['dense']['test_acc_pytorch'])} for its dense twin in that run.")
    return text


def tt_sweep_text(r):
    """Rank sweep (training/results/intent-lstm-sweep.json): the same compression at larger bond
    ranks, to show what storage the 1.5-point target needs."""
    sw = load("intent-lstm-sweep")
    if not sw:
        return ""
    dn = r["dense"]
    rows = ["| bond ranks W_ih / W_hh | fine-tuning epochs | TT parameters | storage vs dense | validation | "
            "held-out voices | gap to dense |", "|---|---|---|---|---|---|---|"]
    runs = [dict(rank=r["tt_rank"], matrix_params=r["tt"]["matrix_params"], ranks=r["tt_ranks"],
                 valid=r["tt"]["valid_acc_file"], test=r["tt"]["test_acc_file"], epochs=r["tt_epochs"],
                 bundled=True)]
    runs += sw["runs"]
    for x in sorted(runs, key=lambda x: x["matrix_params"]):
        mark = " (bundled)" if x.get("bundled") else ""
        rows.append(f"| {x['ranks']['ih']} / {x['ranks']['hh']}{mark} | {x['epochs']} | {x['matrix_params']:,} | "
                    f"{100 * x['matrix_params'] / dn['matrix_params']:.2f} % | "
                    f"{pct(x['valid'])} | {pct(x['test'])} | {100 * (dn['test_acc_pytorch'] - x['test']):+.2f} pt |")
    return ("Why the gap: with the input modes before the output modes, the bond between them bounds "
            "the rank of the whole matrix, so at 10 % storage W_hh [512 x 128] is at most rank "
            f"{r['tt_rank']} and the TT-SVD of the trained dense W_hh loses "
            f"{100 * r['tt_init']['hh_rel_error']:.0f} % of its Frobenius norm (the trained matrices "
            "are far from low rank). The same compression and distillation from the same dense twin "
            "at other rank profiles: under 10 % storage, moving parameters from the output-side "
            "bonds to the middle bond did not help (validation picked the uniform profile that is "
            "bundled); at about twice the storage the compressed model matches or beats its dense "
            "twin (distillation also regularises):\n\n"
            + "\n".join(rows) + "\n\n")


def intent_lstm_card(r):
    dn, tt = r["dense"], r["tt"]
    return f"""## `intent-lstm` — LSTM with MPS tensor-train weights

{intent_common()}
**Preprocessing:** log-mel like `intent` but 40 ms windows and hop (76 frames for 3 s, half the
recurrent steps): {spec_block(r["spec"])}

**Recipe.** One LSTM layer (hidden 128, PyTorch gate order, h0 = c0 = 0) over the 76 frames of
40 log-mel features, mean of the hidden states, fp32 classifier. In the shift-free MPS model
(Murua et al.), W_ih [512 x 40] and W_hh [512 x 128] are matrix product states: W_ih with input
modes 2x4x5 and output modes 8x8x8, W_hh with 4x4x8 and 8x8x8, bond ranks {tt_ranks_text(r)}; the runtime
never forms the matrices. (Training contracts W_ih/W_hh from the cores once per batch and runs
PyTorch's fused LSTM, `training/lstm_fast.py`: the same function, gradients into the cores.) The
dense twin is `nn.LSTM` with the same size. Both start with forget-gate bias 1. AdamW, one-cycle cosine (peak 5e-3), gradient clipping 5, label smoothing 0.1, batch 128, {r["epochs"]} epochs, SpecAugment
(time masks <= 5 frames).{tt_init_text(r)}

| split | dense LSTM twin (PyTorch) | TT-LSTM (PyTorch) | TT-LSTM exported file |
|---|---|---|---|
| validation (training voices, 993) | {pct(dn["valid_acc_pytorch"])} | {pct(tt["valid_acc_pytorch"])} | {pct(tt["valid_acc_file"])} |
| test: held-out voices (1,990) | {pct(dn["test_acc_pytorch"])} | {pct(tt["test_acc_pytorch"])} | {pct(tt["test_acc_file"])} |

Recurrent weight storage: TT cores {tt["matrix_params"]:,} parameters vs dense {dn["matrix_params"]:,}
(**{100 * r["tt_storage_fraction"]:.1f} %** of dense; biases and classifier excluded on both sides).
Targets: within 1.5 points of the dense twin on held-out voices:
{status(dn["test_acc_pytorch"] - tt["test_acc_file"] <= 0.015)} (gap {100 * (dn["test_acc_pytorch"] - tt["test_acc_file"]):+.2f} points);
TT storage < 1/10 of dense: {status(r["tt_storage_fraction"] < 0.1)}.

{tt_sweep_text(r)}Held-out accuracy per voice:

{group_table("voice", dn, tt, "dense twin", "TT exported file", "test_per_voice_pytorch", "test_per_voice_file")}

File {kib(r["file_bytes"])} (all fp32: TT cores, bias, classifier).

Training time: dense {minutes(dn["train_seconds"])}, TT {minutes(tt["train_seconds"])} (in parallel, one
thread each); whole command {minutes(r["wall_seconds_total"])}.
Reproduce: `nice -n 10 python training/train.py intent-lstm`.
"""


DIGITS_HISTORY = {
    False: "`digits` is still the session-1 model (it\nmet its target).",
    True: "`digits` was retrained (session 3) against a raised\ntarget (>= 93 % on george + lucas, "
          ">= 90 % on each) with a stronger augmentation and\ncross-voice model selection.",
}


def digits_met(r):
    s = r["shift"]
    return s["test_acc_file"] >= 0.93 and all(g["acc"] >= 0.90 for g in s["test_per_speaker_file"].values())


def digits_card(r):
    f, s = r["fp32"], r["shift"]
    width = r.get("width", 16)
    if r.get("augmentation", 1) >= 2:
        aug = ("speed perturbation 0.85-1.15, random channel EQ (spectral tilt +-8 dB, two +-6 dB peaks/dips, "
               "30 % a soft low-pass at 2-3.6 kHz; 70 % of clips), random leading silence up to 0.3 s, gain, "
               "white/pink/brown noise at 10-40 dB SNR (50 %; over the spoken part only in 2 of 3 cases, "
               "the served clips being padded with digital silence), a vocal-tract-length-style warp of "
               "the mel axis (x0.88-1.12), SpecAugment")
    else:
        aug = ("speed perturbation 0.85-1.15, random leading silence up to 0.35 s, gain, white noise at "
               "10-40 dB SNR (60 %), SpecAugment")
    xrow = ""
    if "xvalid_acc_pytorch" in s:
        xrow = (f"| held-out TTS voices (300, model selection) | {pct(f['xvalid_acc_pytorch'])} | "
                f"{pct(s['xvalid_acc_pytorch'])} | {pct(s['xvalid_acc_file'])} |\n")
    return f"""## `digits` — DenseShift W3 ResNet on spoken digits (real human speech)

**Data.** Free Spoken Digit Dataset (CC BY-SA 4.0), read in place from `../shared/data/fsdd`:
training speakers jackson, nicolas, theo, yweweler (recordings 5-49 of each digit, 1,800 clips;
recordings 0-4 form the validation split, 200 clips), plus 840 TTS digits from the training
voices only (espeak-ng, mbrola, flite, festival; each with one sox-augmented copy). Model
selection: the FSDD validation split (saturates at 100 %) and 300 digits of the *held-out* TTS
voices (pico en-US/en-GB, RHVoice alan/bdl/clb/evgeniy-eng/lyubov/slt, festival/flite SLT; 3
prosody draws each, one sox-augmented). **Test: george and lucas**, all 1,000 recordings, never
trained on nor used to choose anything. Online augmentation per batch: {aug}.

**Preprocessing** (8 kHz, the FSDD rate; other rates are resampled by the server): {spec_block(r["spec"])}

**Recipe.** ResNet with fp32 7x7/2 stem (width {width}) + BN + 3x3/2 max-pool, three BasicBlock stages (widths
{width}/{2 * width}/{4 * width}, strides 1/2/2) of DenseShift W3 convs, global average pooling, fp32 classifier. AdamW,
one-cycle cosine (peak 3e-3), label smoothing 0.1, batch 64, {r["epochs"]} epochs; 8-bit calibration
and 150 fake-quant fine-tuning steps. FP twin: same with fp32 convs.

| split | FP twin (PyTorch) | W3 (PyTorch, fake-quant) | W3 exported file |
|---|---|---|---|
| validation (training speakers, 200) | {pct(f["valid_acc_pytorch"])} | {pct(s["valid_acc_pytorch"])} | {pct(s["valid_acc_file"])} |
{xrow}| test: george + lucas (1,000) | {pct(f["test_acc_pytorch"])} | {pct(s["test_acc_pytorch"])} | {pct(s["test_acc_file"])} |

Target >= 93 % on george + lucas together and >= 90 % on each: {status(digits_met(r))}.

{group_table("speaker", f, s, "FP twin", "W3 exported file", "test_per_speaker_pytorch", "test_per_speaker_file")}

{size_line(r)}

Training time: FP twin {minutes(f["train_seconds"])}, W3 {minutes(s["train_seconds"])} (in parallel,
one thread each); whole command {minutes(r["wall_seconds_total"])}.
Reproduce: `nice -n 10 python training/train.py digits` (generates the data with
`training/data/make_digits.py` when missing).
"""


if __name__ == "__main__":
    main()
