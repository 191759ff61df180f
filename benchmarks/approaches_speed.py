"""Benchmark: training-step cost of the FTZS, combined and KD approaches on CPU, random weights.

Three measurements, each in a fresh subprocess (this script with ``--one``; network
refused and counted as in ``fcclip_speed.py``, whose model construction, random text
classifier and random images it reuses), FC-CLIP preset ``tiny`` by default (random
weights everywhere, nothing downloaded), batch 2 of random 256x512 images (the
synthetic city's size), the 19-class test vocabulary with its real synonym counts and
random unit text embeddings, vocabulary configuration 008 (in = the 11 stuff classes,
out = the 8 thing classes). A training step is what the trainer does per iteration:
``task.losses``, sum, backward, full-model gradient clipping at 0.01, AdamW over the
trainer's parameter groups; the criterion samples ``--num-points`` points per mask
(default 12544, the task's and upstream's; the synthetic study's config uses 1024).
Data loading is not part of a step. The first step is a warm-up and not counted.

1. FTZS with cached vs online pseudo-labels (``--one ftzs``). Per batch, the "ground
   truth" is ``GT_PER_IMAGE`` random rectangles of distinct in-classes painted into a
   Cityscapes-style panoptic id map (the rest is VOID, as out-class pixels are in the
   configuration's training ground truth).

   * cached: one ordinary fine-tuning step (``FinetuneTask``, 19-class text
     classifier) on targets that already contain the pseudo segments. They are built
     once per batch, untimed, as the workflow builds them before training: the
     pseudo-label rule ``vocabseg.approaches.pseudolabel.pseudo_segments`` (out-class
     teacher segments with score >= threshold, restricted to VOID ground-truth
     pixels, at least ``min_pixels``) and the dataset's id map to ``{"labels",
     "masks"}`` conversion, applied to a *stand-in* teacher prediction of
     ``PSEUDO_PER_IMAGE`` random out-class rectangles with score 1. A stand-in,
     because a random-weight teacher predicts about one in-class segment per image
     and so yields no pseudo segment at all, while a trained one does.
   * online: the same step plus, first, the zero-shot teacher's full inference on the
     batch (``teacher.inference(images, text, num_synonyms, seen_mask=, thing_mask=,
     image_sizes=)`` under ``torch.no_grad``, as ``vocabseg.approaches.predict`` calls
     it) and the same rule + conversion on the teacher's real output (timed; with
     random weights it is nearly free, so this part is a lower bound). The training
     step then uses the cached targets, so that both modes do identical training work.

   The two run interleaved in one process (online step on batch i, then cached step on
   batch i), so load changes on a shared machine affect both alike; both update the
   same student. The teacher is a copy of the student (the FTZS student starts from
   the zero-shot model) sharing its frozen CLIP module. It runs its own backbone pass:
   an implementation that reused the student's backbone features would save that pass.
   The counts of the rule (teacher segments, kept, dropped, target masks) are printed
   for the stand-in and for the real teacher output.

2. Combined vs single model (``--one single`` / ``--one combined``, one process each,
   so the peak RSS, ``getrusage(RUSAGE_SELF).ru_maxrss``, is per model).
   combined: ``CombinedFCCLIP.from_base`` (M1 = the model, M2 = a deep copy of its
   heads sharing its CLIP) and ``CombinedTask`` (one backbone pass, two heads, three
   set criteria L1 + L2 + Lcombined with fusion ``--fusion``); single: ``FinetuneTask``
   on one FC-CLIP. Same seed, hence the same images and targets: per image
   ``TARGETS_PER_IMAGE`` random rectangles, the first half in-class (stuff) segments
   with ``in_only`` True, the rest out-class (thing) segments with ``in_only`` False
   (the single model gets the same targets without the flag).

3. KD (``--one kd``, its own process): ``DistillTask`` steps (student = the model,
   teacher = a deep copy) on the in-class rectangles of the same targets, and per step
   one more pass of the frozen CLIP on the batch (``task.backbone_features``), the
   pass the teacher ran on its own before the task shared the student's. The former
   step cost the step plus that pass, so the printed ratio is (step + pass) / step,
   both measured in this run.

The machine may be shared: ``--threads`` defaults to 1 (several torch threads on
oversubscribed cores wait for each other and inflate wall times several-fold); the
1-minute load average is printed with every row and next to each wall time the
process CPU time (all threads).

Usage: python benchmarks/approaches_speed.py [--preset tiny|r50] [--threads T] [--steps S]
       [--size H W] [--threshold P] [--min-pixels N] [--num-points N] [--fusion F] [--seed S]
       [--quick]
(run as a file: it imports its sibling ``fcclip_speed``.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import fcclip_speed as fs  # sibling benchmark: build, random_text, random_image, network block, peak RSS

PRESETS = ("tiny", "r50")
MODES = ("ftzs", "single", "combined", "kd")
BATCH = 2
GT_PER_IMAGE = 4  # ground-truth rectangles per image of the FTZS measurement
PSEUDO_PER_IMAGE = 3  # out-class segments per image of the stand-in teacher (cached pseudo-labels)
TARGETS_PER_IMAGE = 4  # target rectangles per image of the combined measurement (half in, half out)
VOCAB = "008"
RESULT_PREFIX = fs.RESULT_PREFIX  # what fs.run_child reads
mean = fs.mean


# --------------------------------------------------------------------------- child side
def vocabulary() -> dict:
    """Class ids (test vocabulary, classifier order), in/out ids of ``VOCAB``, seen and thing masks."""
    import torch

    from vocabseg.approaches.study_model import vocab_ids
    from vocabseg.data.labelset import LabelSet
    from vocabseg.data.vocab import make_split

    class_ids = vocab_ids(None)
    split = make_split(VOCAB)
    return {
        "class_ids": class_ids,
        "in_ids": list(split["in_ids"]),
        "out_ids": set(split["out_ids"]),
        "seen": torch.ones(len(class_ids), dtype=torch.bool),  # the zero-shot model saw all 19
        "things": torch.tensor([LabelSet.cityscapes().by_id[c].isthing for c in class_ids]),
    }


def random_rectangle(height: int, width: int, gen) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of a random rectangle, 1/8 to 1/2 of each side."""
    import torch

    y0 = int(torch.randint(0, height // 2, (1,), generator=gen))
    x0 = int(torch.randint(0, width // 2, (1,), generator=gen))
    y1 = y0 + int(torch.randint(height // 8, height // 2, (1,), generator=gen))
    x1 = x0 + int(torch.randint(width // 8, width // 2, (1,), generator=gen))
    return y0, y1, x0, x1


def random_ground_truth(height: int, width: int, in_ids: list[int], gen) -> tuple:
    """One image's ground truth: ``GT_PER_IMAGE`` rectangles of distinct in-classes.

    Returns:
        (H, W) uint32 panoptic ids (label id of the class, as Cityscapes numbers stuff
        segments; later rectangles overwrite earlier ones; 0 = VOID) and its
        ``segments_info`` (``id``, ``category_id``, ``iscrowd``) of the visible segments.
    """
    import numpy as np
    import torch

    ids = np.zeros((height, width), dtype=np.uint32)
    pick = torch.randperm(len(in_ids), generator=gen)[:GT_PER_IMAGE].tolist()
    for k in pick:
        y0, y1, x0, x1 = random_rectangle(height, width, gen)
        ids[y0:y1, x0:x1] = in_ids[k]
    visible = set(np.unique(ids).tolist()) - {0}
    segments = [{"id": in_ids[k], "category_id": in_ids[k], "iscrowd": 0} for k in pick if in_ids[k] in visible]
    return ids, segments


def panoptic_target(ids, segments: list[dict], class_ids: list[int], seed: int) -> dict:
    """Training target of a panoptic id map, as ``PanopticTrainDataset.get`` builds it
    (no augmentation): non-crowd segments of known classes with at least one pixel.

    Returns ``{"labels": int64 [N], "masks": bool [N, H, W], "seed": seed}``.
    """
    import torch

    index = {c: k for k, c in enumerate(class_ids)}
    kept = [s for s in segments if not s.get("iscrowd", 0) and s["category_id"] in index]
    id_map = torch.from_numpy(ids.astype("int64"))
    seg_ids = torch.tensor([s["id"] for s in kept], dtype=torch.int64)
    masks = id_map[None] == seg_ids[:, None, None]
    keep = masks.flatten(1).any(1)
    labels = torch.tensor([index[s["category_id"]] for s in kept], dtype=torch.int64)
    return {"labels": labels[keep], "masks": masks[keep], "seed": seed}


def stand_in_teacher(height: int, width: int, out_ids: list[int], gen) -> tuple:
    """A teacher prediction as a trained zero-shot model would give it, for the cache:
    ``PSEUDO_PER_IMAGE`` random rectangles of random out-classes, ids 1.., score 1.0.

    Returns (H, W) uint32 segment ids (0 = nothing predicted) and ``segments_info``.
    """
    import numpy as np
    import torch

    ids = np.zeros((height, width), dtype=np.uint32)
    segments = []
    for j in range(1, PSEUDO_PER_IMAGE + 1):
        y0, y1, x0, x1 = random_rectangle(height, width, gen)
        ids[y0:y1, x0:x1] = j
        category = out_ids[int(torch.randint(0, len(out_ids), (1,), generator=gen))]
        segments.append({"id": j, "category_id": category, "score": 1.0})
    return ids, segments


def teacher_prediction(result: dict, class_ids: list[int]) -> tuple:
    """One image's ``teacher.inference`` result as ``predict_panoptic`` stores it:
    (H, W) segment ids and ``segments_info`` with label ids and ``score``."""
    segments = [
        {"id": s["id"], "category_id": class_ids[s["category"]], "score": s["score"]} for s in result["segments_info"]
    ]
    return result["panoptic_seg"].numpy(), segments


def ftzs_targets(teacher: list[tuple], ground_truth: list[tuple], vocab: dict, args) -> tuple[list[dict], list]:
    """FTZS targets of a batch: per image the pseudo-label rule (``pseudo_segments``) on
    the teacher prediction and the ground truth, then the id map to masks.

    Returns the targets and per image the counts of ``pseudo_segments`` plus
    ``"teacher"`` (teacher segments) and ``"targets"`` (target masks).
    """
    from vocabseg.approaches.pseudolabel import pseudo_segments

    targets, counts = [], []
    for b, ((t_ids, t_segments), (gt_ids, gt_segments)) in enumerate(zip(teacher, ground_truth)):
        ids, segments, kept = pseudo_segments(
            gt_ids, gt_segments, t_ids, t_segments, vocab["out_ids"],
            threshold=args.threshold, min_pixels=args.min_pixels,
        )
        targets.append(panoptic_target(ids, segments, vocab["class_ids"], b))
        counts.append({"teacher": len(t_segments), **kept, "targets": int(targets[-1]["labels"].numel())})
    return targets, counts


def optimiser(model):
    """AdamW over the trainer's parameter groups; (optimizer, flat trainable params, clip)."""
    import torch

    from vocabseg.engine.trainer import TrainConfig, param_groups

    cfg = TrainConfig(iters=1, batch_size=BATCH)
    groups = param_groups(model, cfg)
    return torch.optim.AdamW(groups, lr=cfg.lr), [p for g in groups for p in g["params"]], cfg.clip_grad


def train_step(task, model, images, targets, optimizer, params, clip: float) -> float:
    """One trainer iteration: losses, sum, backward, clipping, AdamW step; the loss."""
    from torch import nn

    terms = task.losses(model, images, targets)
    loss = sum(terms.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return float(loss.detach())


def timed(fn):
    """(wall s, process CPU s, result) of ``fn()``."""
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - start, time.process_time() - cpu_start, result


def measure_ftzs(args) -> dict:
    """Interleaved online / cached FTZS steps; per-step times of each phase and the counts
    of the pseudo-label rule on the cached (stand-in) and the online (real) teacher output."""
    import copy

    import torch

    from vocabseg.approaches.finetune import FinetuneTask

    height, width = args.size
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    vocab = vocabulary()
    out_ids = sorted(vocab["out_ids"])
    student, _ = fs.build(args.preset)
    teacher = copy.deepcopy(student, memo={id(student.backbone): student.backbone}).eval()
    teacher.requires_grad_(False)
    text = fs.random_text(student.backbone.dim_latent, gen)
    task = FinetuneTask(student, text, num_points=args.num_points)
    optimizer, params, clip = optimiser(student)
    student.train()
    sizes = [(height, width)] * BATCH
    rows = {k: [] for k in ("teacher", "targets", "online_train", "online", "online_cpu", "cached", "cached_cpu")}
    cached_counts, online_counts = [], []
    for _ in range(1 + args.steps):
        images = fs.random_image(BATCH, height, width, gen)
        ground_truth = [random_ground_truth(height, width, vocab["in_ids"], gen) for _ in range(BATCH)]
        # the cache: computed once before training, not timed
        stand_in = [stand_in_teacher(height, width, out_ids, gen) for _ in range(BATCH)]
        cached, counts = ftzs_targets(stand_in, ground_truth, vocab, args)
        cached_counts.extend(counts)

        def infer():
            with torch.no_grad():
                return teacher.inference(
                    images, text.embeddings, text.num_synonyms, seen_mask=vocab["seen"],
                    thing_mask=vocab["things"], image_sizes=sizes,
                )

        def convert(results):
            return ftzs_targets([teacher_prediction(r, vocab["class_ids"]) for r in results], ground_truth, vocab, args)

        t_teacher, c_teacher, results = timed(infer)
        t_targets, c_targets, (_, counts) = timed(lambda: convert(results))
        online_counts.extend(counts)
        t_train, c_train, _ = timed(lambda: train_step(task, student, images, cached, optimizer, params, clip))
        t_cached, c_cached, _ = timed(lambda: train_step(task, student, images, cached, optimizer, params, clip))
        for key, value in (
            ("teacher", t_teacher), ("targets", t_targets), ("online_train", t_train),
            ("online", t_teacher + t_targets + t_train), ("online_cpu", c_teacher + c_targets + c_train),
            ("cached", t_cached), ("cached_cpu", c_cached),
        ):
            rows[key].append(value)
    return {
        **{k: v[1:] for k, v in rows.items()},
        "warmup_online": rows["online"][0],
        "warmup_cached": rows["cached"][0],
        "cached_counts": {k: [c[k] for c in cached_counts] for k in cached_counts[0]},
        "online_counts": {k: [c[k] for c in online_counts] for k in online_counts[0]},
    }


def combined_targets(height: int, width: int, vocab: dict, gen) -> list[dict]:
    """Per image ``TARGETS_PER_IMAGE`` random rectangles: the first half in-class
    (``in_only`` True), the rest out-class (``in_only`` False); class indices of the
    test vocabulary."""
    import torch

    from vocabseg.approaches.combined import IN_ONLY_KEY

    in_index = [k for k, c in enumerate(vocab["class_ids"]) if c not in vocab["out_ids"]]
    out_index = [k for k, c in enumerate(vocab["class_ids"]) if c in vocab["out_ids"]]
    num_in = TARGETS_PER_IMAGE // 2
    targets = []
    for b in range(BATCH):
        masks = torch.zeros(TARGETS_PER_IMAGE, height, width, dtype=torch.bool)
        for m in range(TARGETS_PER_IMAGE):
            y0, y1, x0, x1 = random_rectangle(height, width, gen)
            masks[m, y0:y1, x0:x1] = True
        labels = [in_index[int(torch.randint(0, len(in_index), (1,), generator=gen))] for _ in range(num_in)]
        labels += [
            out_index[int(torch.randint(0, len(out_index), (1,), generator=gen))]
            for _ in range(TARGETS_PER_IMAGE - num_in)
        ]
        in_only = torch.arange(TARGETS_PER_IMAGE) < num_in
        targets.append({"labels": torch.tensor(labels), "masks": masks, "seed": b, IN_ONLY_KEY: in_only})
    return targets


def measure_model(args) -> dict:
    """Training steps of one FC-CLIP (``single``), the combined pair or KD (and per KD
    step one backbone pass, ``backbone_s``); peak RSS."""
    import copy

    import torch

    from vocabseg.approaches.combined import IN_ONLY_KEY, CombinedFCCLIP, CombinedTask
    from vocabseg.approaches.distill import DistillTask
    from vocabseg.approaches.finetune import FinetuneTask

    height, width = args.size
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    vocab = vocabulary()
    rss_imports = fs.peak_rss_mib()
    model, _ = fs.build(args.preset)
    text = fs.random_text(model.backbone.dim_latent, gen)
    if args.one == "combined":
        model = CombinedFCCLIP.from_base(model, fusion=args.fusion)
        task = CombinedTask(model, text, num_points=args.num_points)
    elif args.one == "kd":
        out_index = [k for k, c in enumerate(vocab["class_ids"]) if c in vocab["out_ids"]]
        task = DistillTask(model, copy.deepcopy(model), text, out_index, num_points=args.num_points)
    else:
        task = FinetuneTask(model, text, num_points=args.num_points)
    rss_built = fs.peak_rss_mib()
    trainable, frozen = fs.param_counts(model)
    optimizer, params, clip = optimiser(model)
    model.train()
    times, cpu_times, losses, backbone = [], [], [], []
    for _ in range(1 + args.steps):
        images = fs.random_image(BATCH, height, width, gen)
        targets = combined_targets(height, width, vocab, gen)
        if args.one == "single":
            targets = [{k: v for k, v in t.items() if k != IN_ONLY_KEY} for t in targets]
        if args.one == "kd":  # the in-class rectangles: out-class pixels are VOID in KD's ground truth
            targets = [{"labels": t["labels"][t[IN_ONLY_KEY]], "masks": t["masks"][t[IN_ONLY_KEY]], "seed": t["seed"]}
                       for t in targets]
            backbone.append(timed(lambda: task.backbone_features(images))[0])
        wall, cpu, loss = timed(lambda: train_step(task, model, images, targets, optimizer, params, clip))
        times.append(wall)
        cpu_times.append(cpu)
        losses.append(loss)
    return {
        "backbone_s": backbone[1:],
        "warmup_s": times[0],
        "step_s": times[1:],
        "step_cpu_s": cpu_times[1:],
        "losses": losses,
        "rss_imports": rss_imports,
        "rss_built": rss_built,
        "rss_after": fs.peak_rss_mib(),
        "trainable": trainable,
        "frozen": frozen,
    }


def run_one(args: argparse.Namespace) -> None:
    """Child entry point: one measurement, result as one JSON line on stdout."""
    fs.block_network()
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    result = measure_ftzs(args) if args.one == "ftzs" else measure_model(args)
    result.update(
        load_start=load,
        load_end=os.getloadavg()[0],
        threads=torch.get_num_threads(),
        rss_peak=fs.peak_rss_mib(),
        network_attempts=list(fs.NETWORK_ATTEMPTS),
    )
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# -------------------------------------------------------------------------- parent side
def spawn(mode: str, args: argparse.Namespace) -> dict:
    """Run this script with ``--one mode`` in a fresh process; its result dict."""
    cmd = [
        sys.executable, os.path.abspath(__file__), "--one", mode, "--preset", args.preset,
        "--threads", str(args.threads), "--steps", str(args.steps), "--size", *map(str, args.size),
        "--threshold", repr(args.threshold), "--min-pixels", str(args.min_pixels),
        "--num-points", str(args.num_points), "--fusion", args.fusion, "--seed", str(args.seed),
    ]
    return fs.run_child(cmd, mode)


def load_range(r: dict) -> str:
    return f"{r['load_start']:.2f}-{r['load_end']:.2f}"


def print_ftzs(r: dict, args: argparse.Namespace) -> None:
    h, w = args.size
    print(
        f"\n1. FTZS training step, cached vs online pseudo-labels: batch {BATCH} x {h}x{w}, vocabulary {VOCAB}"
        f" (out = 8 thing classes), threshold {args.threshold:g}, min_pixels {args.min_pixels},"
        f" mean of {args.steps} step(s) after 1 warm-up, load {load_range(r)}"
    )
    columns = [("mode", 7), ("teacher s", 10), ("targets s", 10), ("train s", 8), ("step s", 8), ("cpu s", 7),
               ("warm-up s", 10)]
    header = " ".join(f"{name:>{width}}" for name, width in columns)
    print(header + "\n" + "-" * len(header))
    print(
        f"{'cached':>7} {'-':>10} {'-':>10} {mean(r['cached']):>8.3f} {mean(r['cached']):>8.3f}"
        f" {mean(r['cached_cpu']):>7.3f} {r['warmup_cached']:>10.3f}"
    )
    print(
        f"{'online':>7} {mean(r['teacher']):>10.3f} {mean(r['targets']):>10.3f} {mean(r['online_train']):>8.3f}"
        f" {mean(r['online']):>8.3f} {mean(r['online_cpu']):>7.3f} {r['warmup_online']:>10.3f}"
    )
    ratio = mean(r["online"]) / mean(r["cached"])
    cpu_ratio = mean(r["online_cpu"]) / mean(r["cached_cpu"])
    print(f"online / cached step time: {ratio:.2f} (cpu time: {cpu_ratio:.2f})")
    print(
        "  teacher s = teacher.inference on the batch (no_grad); targets s = pseudo_segments + id map to masks"
        " of the teacher's output;\n  train s = losses + backward + clipping + AdamW; both train on the cached"
        " targets (ground truth + stand-in pseudo segments)"
    )
    for name, key in (("cached (stand-in teacher)", "cached_counts"), ("online (random teacher)", "online_counts")):
        c = r[key]
        print(
            f"  {name}, per image (mean over {len(c['teacher'])} images incl. warm-up): teacher segments"
            f" {mean(c['teacher']):.1f} = in-class {mean(c['ignored_in_class']):.1f} + out-class below threshold"
            f" {mean(c['dropped_score']):.1f} + too small {mean(c['dropped_size']):.1f} + kept"
            f" {mean(c['kept']):.1f}; target masks {mean(c['targets']):.1f}"
        )


def print_models(rows: dict[str, dict], args: argparse.Namespace) -> None:
    h, w = args.size
    print(
        f"\n2. combined (CombinedFCCLIP + CombinedTask, fusion {args.fusion}) vs single model (FinetuneTask):"
        f" batch {BATCH} x {h}x{w}, {TARGETS_PER_IMAGE} random masks per image, mean of {args.steps} step(s)"
        " after 1 warm-up, one fresh process each"
    )
    columns = [("model", 9), ("trainable", 10), ("warm-up s", 10), ("step s", 8), ("cpu s", 7), ("RSS base", 9),
               ("RSS model", 10), ("RSS peak", 9), ("+train", 7), ("load", 10)]
    header = " ".join(f"{name:>{width}}" for name, width in columns)
    print(header + "\n" + "-" * len(header))
    for name, r in rows.items():
        print(
            f"{name:>9} {r['trainable'] / 1e6:>9.2f}M {r['warmup_s']:>10.2f} {mean(r['step_s']):>8.3f}"
            f" {mean(r['step_cpu_s']):>7.3f} {r['rss_imports']:>9.0f} {r['rss_built']:>10.0f} {r['rss_after']:>9.0f}"
            f" {r['rss_after'] - r['rss_built']:>7.0f} {load_range(r):>10}"
        )
    s, c = rows["single"], rows["combined"]
    print(
        f"combined / single: step time {mean(c['step_s']) / mean(s['step_s']):.2f}, cpu time"
        f" {mean(c['step_cpu_s']) / mean(s['step_cpu_s']):.2f}, peak RSS {c['rss_after'] / s['rss_after']:.2f},"
        f" RSS increase from training {(c['rss_after'] - c['rss_built']) / max(s['rss_after'] - s['rss_built'], 1):.2f}"
    )
    print(
        "  RSS (MiB, peak resident set) after imports / model construction / training; +train = peak increase"
        " due to training;\n  trainable = parameters the optimiser updates (combined: two heads and two void"
        f" embeddings; the frozen CLIP, {s['frozen'] / 1e6:.2f}M, is shared)"
    )


def print_kd(r: dict, args: argparse.Namespace) -> None:
    h, w = args.size
    step, backbone = mean(r["step_s"]), mean(r["backbone_s"])
    print(
        f"\n3. KD (DistillTask, one backbone pass for teacher and student): batch {BATCH} x {h}x{w},"
        f" mean of {args.steps} step(s) after 1 warm-up, load {load_range(r)}"
    )
    print(f"KD step {step:.3f} s (cpu {mean(r['step_cpu_s']):.3f} s); one frozen-CLIP pass {backbone:.3f} s")
    print(f"former step (teacher's own backbone pass) / KD step: {(step + backbone) / step:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps after the warm-up step")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 512], metavar=("H", "W"))
    parser.add_argument("--threshold", type=float, default=0.5, help="pseudo-label score threshold (study: 0.5)")
    parser.add_argument("--min-pixels", type=int, default=16, help="pseudo-label minimum size (study: 16)")
    parser.add_argument("--num-points", type=int, default=12544, help="criterion points per mask (task default)")
    parser.add_argument("--fusion", default="entropy_norm", help="fusion rule of the combined model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny, 128x256, 1 step (a check that the script works)")
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.preset, args.size, args.steps = "tiny", [128, 256], 1
    if args.steps < 1 or args.threads < 1 or args.num_points < 1 or args.min_pixels < 1:
        parser.error("--steps, --threads, --num-points and --min-pixels must be >= 1")
    from vocabseg.approaches.fusion import FUSIONS

    if args.fusion not in FUSIONS:
        parser.error(f"--fusion: {args.fusion!r} is not one of {sorted(FUSIONS)}")
    if args.one:
        run_one(args)
        return

    import torch

    print(
        f"approach training steps on CPU, FC-CLIP {args.preset}, random weights, torch {torch.__version__},"
        f" {args.threads} thread(s) ({os.cpu_count()} cores, shared machine), fresh process per measurement,"
        " network blocked in each"
    )
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    start = time.perf_counter()
    print("  ftzs: cached and online ...", flush=True)
    ftzs = spawn("ftzs", args)
    models = {}
    for mode in ("single", "combined", "kd"):
        print(f"  {mode} ...", flush=True)
        models[mode] = spawn(mode, args)
    kd = models.pop("kd")
    print_ftzs(ftzs, args)
    print_models(models, args)
    print_kd(kd, args)
    fs.print_load_note([ftzs, *models.values(), kd], args.threads)
    print(
        f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())};"
        f" total {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
