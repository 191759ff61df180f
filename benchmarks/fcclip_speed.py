"""Benchmark: FC-CLIP inference and training speed and memory on CPU, random weights.

For the presets ``tiny``, ``r50`` and ``convnext_large`` (random weights; CLIP too:
``clip_pretrained`` is overridden to None, so nothing is downloaded) it measures

* inference: wall time of ``model.inference`` (backbone, pixel decoder, decoder,
  out-of-vocabulary CLIP branch, geometric ensemble, panoptic + semantic merging) on
  random 512x1024 images, batch 1, under ``torch.no_grad``: the first image and the
  mean of the next N. The text classifier is given (19 Cityscapes classes with their
  real synonym counts, random unit embeddings of the CLIP width): the pipeline
  encodes prompts once and caches the embeddings, so text encoding is excluded;
* memory: every measurement runs in a fresh subprocess (this script with ``--one``);
  it reports the peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) after the imports,
  after model construction and after inference, so the increment due to inference
  is visible;
* parameters: trainable (pixel decoder, decoder, void embedding) and frozen (CLIP);
* training (``tiny`` and ``r50``): time per optimisation step as in the trainer
  (``FinetuneTask.losses``, sum, backward, gradient clipping at 0.01, AdamW over the
  trainer's parameter groups), batch 2 of random 256x512 images with a few random
  rectangular target masks each, first (warm-up) step excluded.

The subprocesses refuse network access (sockets raise, attempts are counted and
must be zero) and run with ``HF_HUB_OFFLINE=1``. The machine may be shared: the
1-minute load average is printed with every row, and next to each wall time the
process CPU time (all threads). When other work occupies the cores, several torch
threads wait for each other and wall times grow several-fold (seen: tiny at 512x1024
0.75 s with 1 thread, 6 s with 2 threads at load 6 on 2 cores), so on a busy machine
``--threads 1`` gives the fairer numbers.

For comparison the script prints the number the project recorded for upstream FC-CLIP
(detectron2) R50 with random weights on a 2-core CPU; it is not measured here.

Usage: python benchmarks/fcclip_speed.py [--presets tiny r50 convnext_large] [--threads T]
       [--images N] [--size H W] [--train-size H W] [--steps S] [--seed S] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time

PRESETS = ("tiny", "r50", "convnext_large")
TRAIN_PRESETS = ("tiny", "r50")
TRAIN_BATCH = 2
TARGETS_PER_IMAGE = 4
RESULT_PREFIX = "RESULT "
UPSTREAM_LINE = (
    "upstream FC-CLIP R50 (detectron2, random weights, 2-core CPU, recorded by the project, "
    "not measured in this run): 63 s first 512x1024 image incl. prompt encoding, ~10 s per further image"
)
UPSTREAM_FURTHER_S = 10.0
UPSTREAM_SIZE = (512, 1024)

NETWORK_ATTEMPTS: list[str] = []


# --------------------------------------------------------------------------- child side
def block_network() -> None:
    """Make every socket connection / name lookup of this process fail and be counted."""

    def refuse(what):
        def fn(*args, **kwargs):
            NETWORK_ATTEMPTS.append(f"{what}{args[1:2] if what == 'connect' else args[:1]}")
            raise OSError(f"fcclip_speed: network access refused ({what})")

        return fn

    socket.socket.connect = refuse("connect")
    socket.socket.connect_ex = refuse("connect")
    socket.create_connection = refuse("create_connection")
    socket.getaddrinfo = refuse("getaddrinfo")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def build(preset: str):
    """FC-CLIP of ``preset`` with random weights everywhere; returns (model, build seconds)."""
    from vocabseg.approaches.study_model import ModelSpec
    from vocabseg.models.fcclip import FCCLIP

    spec = ModelSpec(preset=preset, overrides={"clip_pretrained": None})
    cfg = spec.config()  # registers the tiny open_clip config when needed
    assert cfg.clip_pretrained is None, cfg.clip_pretrained
    start = time.perf_counter()
    model = FCCLIP(cfg)
    return model, time.perf_counter() - start


def random_text(dim: int, gen):
    """19-class text classifier: real synonym counts, random unit embeddings [S, dim]."""
    import torch
    import torch.nn.functional as F

    from vocabseg.approaches.study_model import class_names, vocab_ids
    from vocabseg.models.fcclip import TextClassifier

    names = class_names(vocab_ids(None))
    num_synonyms = [len(n) for n in names]
    embeddings = F.normalize(torch.randn(sum(num_synonyms), dim, generator=gen), dim=-1)
    return TextClassifier(embeddings, num_synonyms, names, "random")


def param_counts(model) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


def random_image(batch: int, height: int, width: int, gen):
    """Uniform noise RGB images in 0..255, [batch, 3, height, width]."""
    import torch

    return torch.rand(batch, 3, height, width, generator=gen) * 255.0


def random_targets(batch: int, height: int, width: int, num_classes: int, gen) -> list[dict]:
    """Per image ``TARGETS_PER_IMAGE`` random rectangles, labels in 0..num_classes-1."""
    import torch

    targets = []
    for b in range(batch):
        masks = torch.zeros(TARGETS_PER_IMAGE, height, width, dtype=torch.bool)
        for m in range(TARGETS_PER_IMAGE):
            y0 = int(torch.randint(0, height // 2, (1,), generator=gen))
            x0 = int(torch.randint(0, width // 2, (1,), generator=gen))
            y1 = y0 + int(torch.randint(height // 8, height // 2, (1,), generator=gen))
            x1 = x0 + int(torch.randint(width // 8, width // 2, (1,), generator=gen))
            masks[m, y0:y1, x0:x1] = True
        labels = torch.randint(0, num_classes, (TARGETS_PER_IMAGE,), generator=gen)
        targets.append({"labels": labels, "masks": masks, "seed": b})
    return targets


def measure_inference(preset: str, images: int, height: int, width: int, seed: int) -> dict:
    """First-image time, mean of the next ``images``, peak RSS at each stage."""
    import torch

    from vocabseg.approaches.study_model import vocab_ids
    from vocabseg.data.labelset import LabelSet

    gen = torch.Generator().manual_seed(seed)
    rss_imports = peak_rss_mib()
    model, build_s = build(preset)
    model.eval()
    rss_built = peak_rss_mib()
    trainable, frozen = param_counts(model)
    text = random_text(model.backbone.dim_latent, gen)
    ids = vocab_ids(None)
    seen = torch.ones(len(ids), dtype=torch.bool)  # the base model's vocabulary: all 19
    things = torch.tensor([LabelSet.cityscapes().by_id[i].isthing for i in ids])
    times, cpu_times, segments = [], [], []
    for _ in range(1 + images):
        batch = random_image(1, height, width, gen)
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.no_grad():
            results = model.inference(
                batch, text.embeddings, text.num_synonyms, seen_mask=seen, thing_mask=things,
                image_sizes=[(height, width)],
            )
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        segments.append(len(results[0]["segments_info"]))
        del results
    return {
        "build_s": build_s,
        "first_s": times[0],
        "next_s": times[1:],
        "next_cpu_s": cpu_times[1:],
        "segments": segments,
        "rss_imports": rss_imports,
        "rss_built": rss_built,
        "rss_after": peak_rss_mib(),
        "trainable": trainable,
        "frozen": frozen,
    }


def measure_train(preset: str, steps: int, height: int, width: int, seed: int) -> dict:
    """Time of 1 + ``steps`` optimisation steps (the first is the warm-up), peak RSS."""
    import torch
    from torch import nn

    from vocabseg.approaches.finetune import FinetuneTask
    from vocabseg.engine.trainer import TrainConfig, param_groups

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    rss_imports = peak_rss_mib()
    model, _ = build(preset)
    rss_built = peak_rss_mib()
    text = random_text(model.backbone.dim_latent, gen)
    task = FinetuneTask(model, text)
    cfg = TrainConfig(iters=1 + steps, batch_size=TRAIN_BATCH)
    groups = param_groups(model, cfg)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    model.train()
    times, cpu_times, losses = [], [], []
    for _ in range(1 + steps):
        images = random_image(TRAIN_BATCH, height, width, gen)
        targets = random_targets(TRAIN_BATCH, height, width, len(text.num_synonyms), gen)
        start, cpu_start = time.perf_counter(), time.process_time()
        terms = task.losses(model, images, targets)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        optimizer.step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        losses.append(float(loss.detach()))
    return {
        "warmup_s": times[0],
        "step_s": times[1:],
        "step_cpu_s": cpu_times[1:],
        "losses": losses,
        "rss_imports": rss_imports,
        "rss_built": rss_built,
        "rss_after": peak_rss_mib(),
    }


def run_one(args: argparse.Namespace) -> None:
    """Child entry point: one measurement, result as one JSON line on stdout."""
    block_network()
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    if args.mode == "infer":
        result = measure_inference(args.one, args.images, *args.size, args.seed)
    else:
        result = measure_train(args.one, args.steps, *args.train_size, args.seed)
    result.update(
        load_start=load,
        load_end=os.getloadavg()[0],
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        network_attempts=list(NETWORK_ATTEMPTS),
    )
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# -------------------------------------------------------------------------- parent side
def spawn(preset: str, mode: str, args: argparse.Namespace) -> dict:
    """Run this script with ``--one preset --mode mode`` in a fresh process; its result dict."""
    cmd = [
        sys.executable, os.path.abspath(__file__), "--one", preset, "--mode", mode,
        "--threads", str(args.threads), "--images", str(args.images), "--steps", str(args.steps),
        "--size", *map(str, args.size), "--train-size", *map(str, args.train_size), "--seed", str(args.seed),
    ]
    return run_child(cmd, f"{preset} {mode}")


def run_child(cmd: list[str], label: str) -> dict:
    """Run a measurement process offline; the dict of its last ``RESULT_PREFIX`` line.

    Stops the benchmark (naming ``label``) if the process failed or tried the network.
    """
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{label}: subprocess failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    if result["network_attempts"]:
        raise SystemExit(f"{label}: network access attempted: {result['network_attempts']}")
    return result


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def print_inference(rows: dict[str, dict], args: argparse.Namespace) -> None:
    h, w = args.size
    print(f"\ninference, {h}x{w}, batch 1, torch.no_grad, text embeddings given (cached in the pipeline)")
    columns = [
        ("preset", 15), ("build s", 8), ("first s", 8), ("next s", 7), ("cpu s", 7), ("RSS base", 9),
        ("RSS model", 10), ("RSS infer", 10), ("+infer", 8), ("trainable", 10), ("frozen", 9), ("load", 10),
    ]
    header = " ".join(f"{name:>{width}}" for name, width in columns)
    print(header + "\n" + "-" * len(header))
    for preset, r in rows.items():
        print(
            f"{preset:>15} {r['build_s']:>8.1f} {r['first_s']:>8.2f} {mean(r['next_s']):>7.2f}"
            f" {mean(r['next_cpu_s']):>7.2f}"
            f" {r['rss_imports']:>9.0f} {r['rss_built']:>10.0f} {r['rss_after']:>10.0f}"
            f" {r['rss_after'] - r['rss_built']:>8.0f} {r['trainable'] / 1e6:>9.2f}M {r['frozen'] / 1e6:>8.2f}M"
            f" {r['load_start']:>4.2f}-{r['load_end']:<4.2f}"
        )
    print(f"  first s = first image; next s = mean wall time of the next {args.images}; cpu s = their mean process")
    print("  CPU time (all threads); RSS = peak resident set (MiB) after imports / model construction / inference;")
    print("  +infer = peak increase due to inference; load = 1-min load average at start-end of the run")


def print_train(rows: dict[str, dict], args: argparse.Namespace) -> None:
    h, w = args.train_size
    print(
        f"\ntraining step, batch {TRAIN_BATCH} x {h}x{w}, {TARGETS_PER_IMAGE} random masks per image,"
        f" AdamW + grad clipping (trainer defaults), step s = mean of {args.steps} timed step(s) after 1 warm-up step"
    )
    columns = [("preset", 15), ("warm-up s", 10), ("step s", 8), ("cpu s", 7), ("RSS model", 10), ("RSS train", 10),
               ("+train", 8), ("load", 10)]
    header = " ".join(f"{name:>{width}}" for name, width in columns)
    print(header + "\n" + "-" * len(header))
    for preset, r in rows.items():
        print(
            f"{preset:>15} {r['warmup_s']:>10.2f} {mean(r['step_s']):>8.2f} {mean(r['step_cpu_s']):>7.2f}"
            f" {r['rss_built']:>10.0f}"
            f" {r['rss_after']:>10.0f} {r['rss_after'] - r['rss_built']:>8.0f}"
            f" {r['load_start']:>4.2f}-{r['load_end']:<4.2f}"
        )


def print_reference(infer: dict[str, dict], args: argparse.Namespace) -> None:
    print("\n" + UPSTREAM_LINE)
    r50 = infer.get("r50")
    if r50 is None:
        print("ratio against the recorded upstream number: r50 not measured in this run")
        return
    if tuple(args.size) != UPSTREAM_SIZE:
        print(f"ratio against the recorded upstream number: not computed (measured at {args.size[0]}x{args.size[1]},"
              f" recorded at {UPSTREAM_SIZE[0]}x{UPSTREAM_SIZE[1]})")
        return
    ours = mean(r50["next_s"])
    print(
        f"vocabseg R50 per further image / recorded upstream ~{UPSTREAM_FURTHER_S:g} s (a recorded number, not"
        f" measured here): {ours:.2f} s / {UPSTREAM_FURTHER_S:g} s = {ours / UPSTREAM_FURTHER_S:.2f}"
        f" ({r50['threads']} thread(s); < 1 means ours is faster)"
    )


def print_load_note(rows: list[dict], threads: int) -> None:
    """Warn when other work competed for the cores during a measurement."""
    cores = os.cpu_count() or 1
    load = max(max(r["load_start"], r["load_end"]) for r in rows)
    if load + threads > cores + 0.5:
        print(
            f"NOTE: 1-min load average up to {load:.2f} with {threads} thread(s) on {cores} cores: the CPU was"
            " oversubscribed and wall times are inflated (with several threads badly, as they wait for each"
            " other); cpu s is less affected, --threads 1 is the fairer setting on a busy machine"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--images", type=int, default=3, help="timed images after the first")
    parser.add_argument("--size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--train-size", type=int, nargs=2, default=[256, 512], metavar=("H", "W"))
    parser.add_argument("--steps", type=int, default=3, help="timed training steps after the warm-up step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny only, 128x256, 1 image, 1 step (a check)")
    parser.add_argument("--one", choices=PRESETS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("infer", "train"), default="infer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.presets, args.size, args.train_size, args.images, args.steps = ["tiny"], [128, 256], [128, 256], 1, 1
    if args.images < 1 or args.steps < 1 or args.threads < 1:
        parser.error("--images, --steps and --threads must be >= 1")
    if args.one:
        run_one(args)
        return

    import torch

    print(
        f"FC-CLIP on CPU, random weights, torch {torch.__version__}, {args.threads} thread(s)"
        f" ({os.cpu_count()} cores), one fresh process per row, network blocked in each"
    )
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    infer, train = {}, {}
    for preset in args.presets:
        print(f"  {preset}: inference ...", flush=True)
        infer[preset] = spawn(preset, "infer", args)
        if preset in TRAIN_PRESETS:
            print(f"  {preset}: training ...", flush=True)
            train[preset] = spawn(preset, "train", args)
    print_inference(infer, args)
    if train:
        print_train(train, args)
    print_reference(infer, args)
    print_load_note([*infer.values(), *train.values()], args.threads)
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
