"""Write BENCHMARKS.md (and the docs site's copy) from the JSON figures under benchmarks/results/, so the pages
never drift from them.

python benchmarks/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

from _results import RESULTS

ROOT = Path(__file__).resolve().parents[1]


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def overhead(r: dict) -> list[str]:
    ms = r["median_step_ms"]
    return [
        "## Training-step overhead vs a hand-written PyTorch loop",
        "",
        f"`python benchmarks/overhead.py` on {r['machine']}: {r['backbone']} at {r['image_size']} px, batch "
        f"{r['batch_size']}, every group trainable, the same optimizer, param groups, schedule and clipping.",
        "",
        "| | median ms/step |",
        "|---|---|",
        f"| TransferClassifier under the Lightning Trainer | {ms['lightning']:.1f} |",
        f"| hand-written loop | {ms['plain']:.1f} |",
        f"| **ratio** (target <= 1.05) | **{r['ratio_lightning_over_plain']:.3f}** |",
    ]


def feature_cache(r: dict) -> list[str]:
    e, p = r["epoch_seconds"], r["phase_seconds"]
    return [
        "## Frozen phase with and without the feature cache",
        "",
        f"`python benchmarks/feature_cache.py` on {r['machine']}: {r['setup']}; deterministic training transform.",
        "",
        "| | plain | cached | speed-up |",
        "|---|---|---|---|",
        f"| one frozen epoch (train + val), s | {e['plain']:.3f} | {e['cached']:.3f} | **{r['epoch_speedup']:.1f}x** |",
        f"| whole frozen phase incl. the one-off extraction ({r['extract_seconds']:.2f} s), s | {p['plain']:.2f} | "
        f"{p['cached']:.2f} | **{r['phase_speedup']:.1f}x** |",
        "",
        f"Validation accuracy after the phase: plain {r['val_acc']['plain'][0]:.4f}, cached "
        f"{r['val_acc']['cached'][0]:.4f}. The two differ only by the order of batches (the image pipeline draws "
        "from the RNG, the cached one does not); with order-independent batches they agree to float precision "
        "(`tests/finetuning/test_feature_cache.py`).",
    ]


def throughput(r: dict, title: str) -> list[str]:
    command = "python benchmarks/throughput.py" + (" --device cuda" if r["device"] == "cuda" else "")
    amp = "bfloat16 autocast" if r["device"] == "cpu" else "float16 autocast"
    lines = [
        f"## {title}",
        "",
        f"`{command}` on {r['machine']}. Synthetic input at each model's native size; warm-up steps, then the "
        f"median of timed steps; training = forward + backward + AdamW step. `amp` is {amp}.",
        "",
        "| model | px | batch | setting | timed steps | train img/s | infer img/s | train vs fp32 | infer vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {row["model"]: row for row in r["rows"] if row["setting"] == "fp32"}
    for row in r["rows"]:
        ref = base.get(row["model"])
        rel = (
            f"{row['train_img_s'] / ref['train_img_s']:.2f}x | {row['infer_img_s'] / ref['infer_img_s']:.2f}x"
            if ref
            else "- | -"
        )
        speed = f"{row['train_img_s']:.1f} | {row['infer_img_s']:.1f}"
        lines.append(
            f"| {row['model']} | {row['input_size'][1]} | {row['batch_size']} | {row['setting']} | "
            f"{row.get('steps', '?')} | {speed} | {rel} |"
        )
    measured = {(row["model"], row["setting"]) for row in r["rows"]}
    missing = [f"{m} {s}" for m in sorted(base) for s in ("amp", "amp+channels_last") if (m, s) not in measured]
    if missing:
        lines += ["", f"Not measured: {', '.join(missing)} (at the other amp rows' speed, minutes per step)."]
    if r["device"] == "cpu":
        lines += [
            "",
            "On a CPU without native bfloat16 instructions (no AVX512-BF16/AMX, as here) autocast is "
            "emulated and many times slower: keep `trainer.precision=32-true` there. channels-last helps "
            "fp32 convolutions a little on oneDNN.",
        ]
    return lines


def time_to_accuracy(r: dict) -> list[str]:
    def cell(x: dict) -> str:
        return f"{x['seconds']:.1f} s (epoch {x['epochs']})" if x["epochs"] else f"not within {r['epochs']} epochs"

    return [
        f"## Time to {r['target']} test accuracy on digits",
        "",
        f"`python benchmarks/time_to_accuracy.py` on {r['machine']}: the default `python train.py` recipe vs a "
        "hand-written fine-tuning loop (same weights, data, augmentation and epochs; every layer trainable with "
        "BatchNorm in train mode, one LR, cosine). Training + validation time; the test accuracy is taken after "
        "each epoch, off the clock.",
        "",
        f"| | time to {r['target']} | best test acc | final test acc | all {r['epochs']} epochs |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {cell(r[name])} | {r[name]['best_test_acc']:.4f} | {r[name]['final_test_acc']:.4f} | "
            f"{r[name]['curve'][-1][0]:.1f} s |"
            for name in ("ours", "plain")
        ),
        "",
        "Test accuracy after each epoch:",
        "",
        *(f"- {name}: " + ", ".join(f"{acc:.3f}" for _, acc in r[name]["curve"]) for name in ("ours", "plain")),
    ]


def dataloader(r: dict) -> list[str]:
    ips = r["median_images_per_second"]
    rows = [f"| {name} | {value:.1f} |" for name, value in ips.items()]
    return [
        "## Training data pipeline vs torchvision v2",
        "",
        f"`python benchmarks/dataloader.py` on {r['machine']}: {r['images']} JPEGs, batch {r['batch_size']}, "
        f"{r['workers']} workers, decode + augment + collate.",
        "",
        "| pipeline | images/s |",
        "|---|---|",
        *rows,
        f"| **ratio** | **{r['ratio_ours_over_torchvision']:.2f}x** |",
    ]


def audit(r: dict) -> list[str]:
    m = r["median_seconds"]
    return [
        "## Data audit with and without its cache",
        "",
        f"`python benchmarks/audit.py` on {r['machine']}: scanning a folder of {r['images']} JPEGs (500x375), "
        "every file decoded and hashed, vs stat-only with the audit cache warm.",
        "",
        "| | seconds |",
        "|---|---|",
        f"| uncached | {m['uncached']:.3f} |",
        f"| cached | {m['cached']:.3f} |",
        f"| **speed-up** | **{r['speedup']:.0f}x** |",
    ]


def peers(r: dict) -> list[str]:
    tools = ["ours", "fastai", "lightning-docs", "probe", "svm"]
    lines = [
        "## Ours with no flags vs the peers at their own defaults, on real data",
        "",
        f"`python benchmarks/peers.py` on {r['machine']}: each tool at its own documented defaults (fastai: "
        "`Resize(224)`, `aug_transforms()`, `fine_tune`; the Lightning docs recipe at 224 px; the probe at 224 px "
        "with C by 5-fold cross-validation; the SVM on pixels), the same offline EfficientNet-Lite0 weights and "
        f"folders, {r['epochs']} epochs. Test accuracy, mean ± std over the seeds that finished (n), and the mean "
        "fit time with the CPU threads it ran on (times compare only at the same thread count). Bold: the best mean. "
        "The datasets (`benchmarks/suite.py`) and their train / val / test images:",
        "",
    ]
    lines += [
        f"- **{name}**: {about} ({r['images'][name]['train']} / {r['images'][name]['val']} / "
        f"{r['images'][name]['test']})"
        for name, about in r["datasets"].items()
    ]
    lines += ["", "| data | " + " | ".join(tools) + " |", "|" + "---|" * (len(tools) + 1)]
    for name, row in r["table"].items():
        if not row:
            continue
        best = max(v["mean"] for v in row.values())
        cells = []
        for tool in tools:
            v = row.get(tool)
            if v is None:
                cells.append("not run")
                continue
            threads = f", {v['threads']} thr" if v.get("threads") else ""
            text = f"{v['mean']:.3f} ± {v['std']:.3f} (n={v['seeds']}; {v['seconds']:.0f} s{threads})"
            cells.append(f"**{text}**" if v["mean"] == best else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "fastai's rows are what its defaults do with these folders: on few-shot its default batch of 64 exceeds the 50 "
        "training images and its training loader drops the incomplete batch, so `fine_tune` takes no step "
        "(`len(dls.train) == 0`); on galaxies it ends below the majority class, and so does the Lightning docs "
        "recipe. Both let BatchNorm update its statistics in train mode (fastai's from the first epoch; Lightning's "
        "`BackboneFinetuning` leaves the frozen backbone in train mode, so its statistics drift while its weights "
        "stay), and ours does the same with them adapting: the `adapt-bn-flat` step below falls on galaxies from "
        '0.68 to 0.27 in the first epoch after the unfreeze and stays there ("Around the unfreeze"). '
        "Rows marked n=1 have one seed: a 2-core session fits one fastai run per set. On the deep-sky photographs, "
        "split as `suite.py` splits every set (a stratified 222 for test, 15% of the rest for validation), fastai's "
        "`fine_tune` ends below a linear probe of the frozen features, and ours keeps its probe in every seed; the "
        "Lightning docs recipe, whose backbone trains at a tenth of the head's LR from epoch 10, ties with ours.",
    ]
    compared = {
        name: {tool: v["paired"] for tool, v in row.items() if v.get("paired")} for name, row in r["table"].items()
    }
    if any(compared.values()):
        lines += [
            "",
            "**Ours minus each peer, image by image.** Where both runs kept which test images they got right "
            "(`right` in `peers_runs.json`; rows from before it was recorded have none), the difference of the two "
            "accuracies with its paired standard error: each image's share of ours' seeds that got it right minus "
            "the peer's share, so only the images the two disagree on carry it (McNemar's test, for one seed "
            "each). A difference within about two of its standard errors is a tie the test split cannot break.",
            "",
            "| data | " + " | ".join(tools[1:]) + " |",
            "|" + "---|" * len(tools),
        ]
        for name, row in compared.items():
            if row:
                cells = [_paired_cell(row.get(tool)) for tool in tools[1:]]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if r.get("resolutions"):
        lines += [
            "",
            "**The resolution rule.** For images smaller than the weights' 224 px the recipe measures a "
            "cross-validated linear probe of the frozen features of the training images at each candidate size and "
            "keeps 224 unless a smaller size beats it by more than a standard error (the binomial one of the probe's "
            "held-out predictions; the spread of five fold accuracies came out at 0.005 where the images allow "
            "0.028). The probe it measured (accuracy ± standard error), the size it chose, and ours' test accuracy:",
            "",
            "| data | probe by size (CV on the training images) | chosen | ours' test accuracy |",
            "|---|---|---|---|",
        ]
        for name, v in r["resolutions"].items():
            sizes = ", ".join(f"{size} px {acc:.3f} ± {se:.3f}" for size, (acc, se) in v["probe"].items())
            lines.append(f"| {name} | {sizes} | {v['chosen']} px | {v['acc']:.3f} |")
    reach = {name: row["ours"]["reach"] for name, row in r["table"].items() if row.get("ours", {}).get("reach")}
    if reach:
        lines += [
            "",
            "**Time to the best fine-tuning peer's accuracy.** Ours' runs score the test split as they train "
            "(`benchmarks/_clock.py`: once the head is the converged linear probe, then after every epoch, off the "
            "clock), so the time at which ours first reaches the best of fastai's and the Lightning docs' mean "
            "accuracy is measured, from the start of the recipe's measuring of the data. The probe and the SVM are "
            "floors on accuracy, compared above, not fine-tuning runs. The curve's times count everything from the "
            "start of the measuring to the scoring, so they are upper bounds; on a 2-core machine with another run "
            "beside ours they are higher still.",
            "",
            "| data | best fine-tuning peer: accuracy (fit time) | ours reaches it after | share of the peer's time |",
            "|---|---|---|---|",
        ]
        for name, v in reach.items():
            missed = "" if v["reached"] == v["seeds"] else f" ({v['seeds'] - v['reached']} of {v['seeds']} never)"
            lines.append(
                f"| {name} | {v['peer']}: {v['target']:.3f} ({v['peer_seconds']:.0f} s) | "
                f"{v['seconds']:.0f} s (n={v['seeds']}){missed} | {v['seconds'] / v['peer_seconds']:.2f} |"
            )
    if decisions := probe_decisions(r):
        lines += ["", *decisions]
    return lines


def probe_decisions(r: dict) -> list[str]:
    rows = {name: row["ours"]["decision"] for name, row in r["table"].items() if "decision" in row.get("ours", {})}
    if not rows:
        return []
    lines = [
        "**The probe floor's decision against the test split.** Ours keeps the converged linear probe (refitted on "
        "train + val) unless a fine-tuned epoch beats it on validation by more than a standard error in both the "
        "selection score and accuracy. Per data set, over ours' seeds: how many kept the probe, the kept model's "
        "test accuracy, the probe's as it started the head (training images only), and the best test accuracy any "
        "fine-tuned epoch reached (an oracle: the most fine-tuning could have given had validation picked perfectly).",
        "",
        "| data | seeds that kept the probe | kept model | probe at the start | best fine-tuned epoch (oracle) |",
        "|---|---|---|---|---|",
    ]
    for name, v in rows.items():
        lines.append(
            f"| {name} | {v['kept_probe']} of {v['seeds']} | {v['kept']:.3f} | {v['probe']:.3f} | "
            f"{v['best_epoch']:.3f} |"
        )
    return lines


def _paired_cell(v: dict | None) -> str:
    if v is None:
        return "-"
    ours, peer = v["seeds"]
    return f"{v['difference']:+.3f} ± {v['stderr']:.3f} (n={ours} / {peer})"


def recipe_path(r: dict) -> list[str]:
    datasets = sorted({name for row in r["table"].values() for name in row})
    lines = [
        "## The default with one piece changed at a time",
        "",
        f"`python benchmarks/recipe_path.py` on {r['machine']}, {r['epochs']} epochs: test accuracy of each step "
        "(mean over the seeds run) on the suite's data. Each step is the default `train.py` run with the overrides "
        "in `benchmarks/recipe_path.py`: a piece issue 22 changed put back, or a piece of fastai's `fine_tune` the "
        "default does not take. With 200 test images a single run moves by about 3 points (one standard error), so "
        "a step counts as a loss or a win only beyond that, or across data sets.",
        "",
        "| step | what changes | " + " | ".join(datasets) + " |",
        "|" + "---|" * (len(datasets) + 2),
    ]
    for step, row in r["table"].items():
        cells = [f"{row[name]:.3f}" if name in row else "-" for name in datasets]
        lines.append(f"| {step} | {r['steps'][step]} | " + " | ".join(cells) + " |")
    if r.get("unfreeze"):
        lines += ["", *around_unfreeze(r)]
    if r.get("reproduction"):
        lines += ["", *reproduction(r)]
    return lines


def around_unfreeze(r: dict) -> list[str]:
    lines = [
        "**Around the unfreeze.** Test accuracy (mean over the seeds) of the steps whose runs scored the test split "
        "as they trained (`benchmarks/_clock.py`): at the last frozen epoch (the head on the frozen backbone), at the "
        "first epoch after the backbone unfreezes, and at the lowest epoch after it; then where the run ended, with "
        "the model it kept.",
        "",
        "| step | data | last frozen epoch | first unfrozen epoch | lowest unfrozen epoch | kept model | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for step, row in r["unfreeze"].items():
        for name, v in row.items():
            lines.append(
                f"| {step} | {name} | {v['frozen']:.3f} | {v['first']:.3f} | {v['lowest']:.3f} | "
                f"{v['kept']:.3f} | {v['seeds']} |"
            )
    return lines


def reproduction(r: dict) -> list[str]:
    lines = [
        "## fastai's fine_tune rebuilt",
        "",
        "`experiment=fastai` (fastai's `vision_learner` + `fine_tune` rebuilt on this library's objects, "
        "docs/finetuning.md) against fastai 2.8 itself at its defaults, on the same folders, weights, epochs and "
        "seeds (`recipe_path.py --steps fastai` and `peers.py --tools fastai`, 1 CPU thread each). Test accuracy per "
        "seed, the means, and the paired difference (preset minus fastai, image by image, with its standard error, "
        "as in the peers' table): within about one standard error the preset reproduces fastai. Not on few-shot, by "
        "design: fastai's loader drops the one incomplete batch of 50 images and takes no step, where this "
        "library's drops the last batch only when there is more than one.",
        "",
        "| data | seed: preset / fastai | preset mean | fastai mean | preset minus fastai (paired) |",
        "|---|---|---|---|---|",
    ]
    for name, v in r["reproduction"].items():
        seeds = ", ".join(f"{seed}: {a:.3f} / {b:.3f}" for seed, (a, b) in v["seeds"].items())
        lines.append(f"| {name} | {seeds} | {v['preset']:.3f} | {v['fastai']:.3f} | {_paired_cell(v['paired'])} |")
    return lines


def probe_views(r: dict) -> list[str]:
    lines = [
        "## The probe's eval view and its refit on train + val",
        "",
        f"`python benchmarks/probe_views.py` on {r['machine']}: {r['backbone']} features through the library's own "
        "data module and eval transform, at the resolution the default recipe uses for each set; a logistic probe "
        "with C by cross-validation on the training features. *whole*: the whole image squashed to the square "
        "(`model.crop_mode=squash`, `crop_pct=1`); *centre*: the weights' centre crop (timm's protocol); each "
        "resized with the weights' interpolation and pooled by average (the weights' own pooling), and the whole "
        "image once more with the bilinear one the peers' `Resize` uses, a choice no rule of the recipe makes, and "
        "once pooled by average and maximum side by side (`model.pool`'s default); that last view once more with "
        "BatchNorm statistics re-estimated from the training images (AdaBN: what train-mode BatchNorm, fastai's and "
        "Lightning's `BackboneFinetuning`'s, converges to on a frozen body) instead of the weights' ImageNet "
        "statistics, which the default keeps all run. CV is what the recipe sees "
        "(training images only); "
        "test what it earns, fitted on train alone and refitted on train + val (what the probe floor keeps).",
        "",
        "| data | px | view | CV acc | test acc (train) | test acc (train + val) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in r["table"].items():
        for view, v in row["views"].items():
            lines.append(
                f"| {name} | {row['size']} | {view} ({v['crop_mode']}, {v['crop_pct']:g}, "
                f"{v['interpolation']}, {v.get('pool', 'avg')}) | "
                f"{v['cv_acc']:.3f} +- {v['cv_stderr']:.3f} | {v['test_acc_train']:.3f} | "
                f"{v['test_acc_train_val']:.3f} |"
            )
    return lines


def probe_fit(r: dict) -> list[str]:
    lines = [
        "## The probe's C search, fitted in the training rows' span",
        "",
        f"`python benchmarks/probe_fit.py` on {r['machine']}: the recipe's search for the probe's C "
        "(`LogisticRegressionCV`, 6 Cs, stratified 5 folds, log loss) on each suite set's standardised training "
        f"features ({r['backbone']}, average + max pooling, the whole image at 224 px), on every feature and on the "
        "coordinates of the span of the training rows (`models.features.RowSpace`, what the library fits), side by "
        "side in one run. The L2-penalised solution is the same; the C chosen and its fold accuracy say whether the "
        "two solvers stopped at the same place.",
        "",
        "| data | images x features | every feature: s, C, CV acc | row span: s, C, CV acc | speed-up |",
        "|---|---|---|---|---|",
    ]
    for name, v in r["table"].items():
        every, span = v["every_feature"], v["row_space"]
        lines.append(
            f"| {name} | {v['images']} x {v['features']} | {every['seconds']:.1f}, {every['c']:g}, "
            f"{every['accuracy']:.3f} | {span['seconds']:.1f}, {span['c']:g}, {span['accuracy']:.3f} | "
            f"{every['seconds'] / max(span['seconds'], 1e-9):.1f}x |"
        )
    return lines


def flip_rule(r: dict) -> list[str]:
    lines = [
        "## The flip rule",
        "",
        f"`python benchmarks/flip_rule.py` on {r['machine']}: the two mirror tests the recipe runs before training "
        "(`finetuning.measure`), on at most 1,000 training images of each suite set: a logistic probe of the frozen "
        f"{r['backbone']} features at {r['size']} px and an RBF SVM on 32 px pixels, each fitted on upright "
        "training images and scored on the held-out folds upright and mirrored; +- is the standard error of the "
        "difference (from the images the two disagree on). Flips go (`hflip` 0) only where both score mirrored "
        "images lower by more than it (`finetuning.recipe.choose_hflip`).",
        "",
        "| data | images | probe upright | probe mirrored | SVM upright | SVM mirrored | hflip |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in r["table"].items():
        f, p = row["features"], row["pixels"]
        lines.append(
            f"| {name} | {row['images']} | {f['upright']:.3f} | {f['mirrored']:.3f} +- {f['stderr']:.3f} | "
            f"{p['upright']:.3f} | {p['mirrored']:.3f} +- {p['stderr']:.3f} | {row['hflip']:g} |"
        )
    return lines


def serve(r: dict) -> list[str]:
    command = "python benchmarks/serve.py" + (" --device cuda" if r["device"] == "cuda" else "")
    rows = [
        f"| {name} | {v['requests_per_s']:.1f} | {v['p50_ms']:.1f} | {v['p95_ms']:.1f} |"
        for name, v in r["rows"].items()
    ]
    return [
        "## Serving: requests/s and latency",
        "",
        f"`{command}` on {r['machine']}: {r['model']} (the digits default), {r['requests']} multipart uploads of "
        "real test images per setting, the clients on the same machine as the server (on 2 cores they take CPU from "
        "it). The first row is the model alone in one process (decode, preprocess, forward), the floor HTTP adds to.",
        "",
        "| setting | requests/s | p50 ms | p95 ms |",
        "|---|---|---|---|",
        *rows,
        *soak(r.get("soak")),
    ]


def soak(s: dict | None) -> list[str]:
    if not s:
        return []
    codes = ", ".join(f"{count} x {code}" for code, count in s["statuses"].items())
    errors = sum(count for code, count in s["statuses"].items() if code.startswith("5"))
    windows = " / ".join(f"{ms:.0f}" for ms in s["p95_ms_per_window"])
    return [
        "",
        f"Under sustained load (the same command): {s['requests']:,} uploads from {s['clients']} clients against one "
        f"server ({s['setting']}, at most 64 waiting), after 200 to warm up. Statuses: {codes} ({errors} 5xx). "
        "Latency per window of 1,000 requests shows whether it slows over time; memory is the resident size of the "
        "server's process tree.",
        "",
        "| requests/s | p50 ms | p95 ms | p99 ms | p95 ms per 1,000 requests | RSS MiB after warm-up / at the end |",
        "|---|---|---|---|---|---|",
        f"| {s['requests_per_s']:.1f} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['p99_ms']:.1f} | {windows} | "
        f"{s['rss_mib_before']:.0f} / {s['rss_mib_after']:.0f} |",
    ]


def int8(r: dict) -> list[str]:
    rows = []
    for name, v in r["rows"].items():
        f, q = v["fp32"], v["int8"]
        rows.append(
            f"| {name}: {v['model']} | {f['size_mib']:.1f} / {q['size_mib']:.1f} ({v['size_ratio']:.2f}x) | "
            f"{f['batch1_ms']:.2f} / {q['batch1_ms']:.2f} ({v['batch1_speedup']:.2f}x) | "
            f"{f['batch32_ms']:.1f} / {q['batch32_ms']:.1f} ({v['batch32_speedup']:.2f}x) | "
            f"{f['test_accuracy']:.4f} / {q['test_accuracy']:.4f}"
            f"{' (warned)' if f['test_accuracy'] - q['test_accuracy'] > 0.01 else ''} |"
        )
    return [
        "## int8 ONNX vs fp32",
        "",
        f"`python benchmarks/int8.py --checkpoint NAME=CKPT ...` on {r['machine']}, onnxruntime {r['onnxruntime']}: "
        "`export --int8` (static QDQ, per-channel 7-bit int8 weights, calibrated on 256 training images, the "
        "classifier kept in float); latency is the median of onnxruntime runs on the CPU provider; accuracy on the "
        "run's test split. fp32 / int8 (int8's size as a share of fp32's; its speed-up). Measured on the digits "
        "default (`python train.py`) and a ResNet-50 trained on it from random weights (`backbone=resnet50 "
        'backbone.pretrained=false`: no ImageNet ResNet-50 weights are reachable offline). "warned": int8 lost more '
        "than one point, which `export --int8` warns about. The CPU (AMD EPYC, AVX2, no VNNI) is one where full 8-bit"
        " weights saturate onnxruntime's int8 sums: with them the same two files gave 0.963 and 0.476 here against "
        "0.989 and 0.782 for their graphs run as written (docs/deploy.md, int8).",
        "",
        "| checkpoint | size MiB | batch 1 ms | batch 32 ms | test accuracy |",
        "|---|---|---|---|---|",
        *rows,
    ]


def formats(r: dict) -> list[str]:
    rows = []
    for name, v in r["rows"].items():
        size = "in memory" if v["size_mib"] is None else f"{v['size_mib']:.1f}"
        rows.append(f"| {name} | {size} | {v['batch1_ms']:.2f} | {v['test_accuracy']:.4f} |")
    versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
    return [
        "## Every format side by side: size, batch-1 latency, accuracy",
        "",
        f"`python benchmarks/formats.py --checkpoint CKPT` on {r['machine']} ({versions}): {r['model']}, exported "
        "by `export --format onnx torchscript executorch litert --int8` (int8 calibrated on 256 training images); "
        f"every file runs in its own runtime on the run's {r['test_images']} test images, one image per call as a "
        "phone classifies a photo; latency is the median of repeated calls on one image after warm-up.",
        "",
        "| format (runtime) | size MiB | batch 1 ms | test accuracy |",
        "|---|---|---|---|",
        *rows,
    ]


def main() -> None:
    sections = [
        "# Benchmarks",
        "",
        "Every figure below is read from `benchmarks/results/*.json` by `python benchmarks/report.py`; the command "
        "that measured it and the machine it ran on are given with it. Ratios are measured side by side in one run. "
        "The finetuning strategies' accuracies are in `benchmarks/results/strategies.md`.",
    ]
    renderers = {
        "peers": peers,
        "recipe_path": recipe_path,
        "probe_views": probe_views,
        "probe_fit": probe_fit,
        "flip_rule": flip_rule,
        "overhead": overhead,
        "feature_cache": feature_cache,
        "time_to_accuracy": time_to_accuracy,
        "dataloader": dataloader,
        "audit": audit,
        "serve": serve,
        "serve_gpu": serve,
        "int8": int8,
        "formats": formats,
    }
    for name, render in renderers.items():
        if (result := load(name)) is not None:
            sections += ["", *render(result)]
    for name, title in (("throughput", "Throughput on the CPU"), ("throughput_gpu", "Throughput on a GPU")):
        if (result := load(name)) is not None:
            sections += ["", *throughput(result, title)]
    if load("throughput_gpu") is None:
        sections += [
            "",
            "No GPU was available to this project's sessions so far: GPU throughput is still to measure "
            "(`python benchmarks/throughput.py --device cuda`).",
        ]
    page = ROOT / "BENCHMARKS.md"  # the site's docs/benchmarks.md includes it
    page.write_text("\n".join(sections) + "\n")
    print(f"-> {page}")


if __name__ == "__main__":
    main()
