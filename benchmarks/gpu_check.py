"""GPU check: every code path that needs a GPU, run once, timed, in one report.

    python benchmarks/gpu_check.py --out DIR [--device cuda|cpu] [--small] [--steps NAME ...]

Steps (each in a fresh Python process with its own time limit, so a CUDA error,
an out-of-memory or a hang in one is reported and the next one still runs):

* ``agreement``: one fp32 forward of the R50 preset (random weights from a fixed
  seed, TF32 off) on the CPU and on ``--device``; the largest absolute difference
  of every compared tensor (backbone features res2..res5 and clip_vis_dense, the
  final ``pred_logits`` and ``pred_masks``) must be at most
  ``ATOL + RTOL * max|CPU value|`` (:data:`ATOL`, :data:`RTOL`).
* ``inference``: ``model.inference`` of R50 and ConvNeXt-L (random weights,
  ``clip_pretrained`` None: nothing downloaded) on 1024x2048 noise images, batch 1,
  one warm-up image then the mean seconds per image over a few more, in fp32 and
  under autocast (float16 on CUDA, bfloat16 on the CPU); peak GPU memory.
* ``nccl``: a one-rank process group (NCCL on CUDA, gloo on the CPU), one
  all-reduce and one barrier. The trainer below runs one process and, at world size
  1, makes no process group; this step is the only NCCL call of the check.
* ``finetune``: the workflow's chain on a small synthetic city made here (``synth``,
  ``prepare``, ``vocab-split 008``, ``text-embeddings``), then an R50 fine-tuning
  (AMP on CUDA: the trainer's ``amp: auto``) through the workflow's launcher prefix
  (``TORCHRUN`` of ``workflow/rules/common.smk``, read from there), SIGTERM to the
  job's session once a checkpoint exists (as a scheduler preempts), exit 143, and a
  second run that must log "resumed from" and finish.
* ``contmav``: ``contmav-weights``, a ContMAV training through the same launcher
  (one epoch of a few iterations) and ``contmav-eval`` as the workflow calls it; the
  report says which device the evaluation used. The exported model is also
  evaluated in-process on ``--device`` (``evaluate_contmav(device=...)``).

``--small`` runs every step at tiny sizes (tiny presets, small images, few
iterations) so the script's logic is checked on a CPU (``tests/test_gpu_check.py``).
Output: ``DIR/gpu_check.json`` (one record per step: ok, seconds, details, error)
and ``DIR/gpu_check.txt`` (the same, readable); step logs and files under
``DIR/work/``. Exit status 0 when every step passed, else 1.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # fcclip_speed: random FC-CLIP models, text classifiers, images

STEPS = ("agreement", "inference", "nccl", "finetune", "contmav")
RESULT_PREFIX = "GPU_CHECK_RESULT "
#: CPU-vs-device agreement of one fp32 forward: max |device - cpu| <= ATOL + RTOL * max |cpu|.
ATOL, RTOL = 1e-3, 1e-3
#: Held-out classes of the synthetic city (motorcycle, bicycle), as the default study.
UNKNOWN = (17, 18)
CONF = "008"

#: Sizes and iteration counts of the full check (one recent GPU) and of --small (a CPU).
SETTINGS = {
    "full": {
        "agreement": {"preset": "r50", "size": [512, 1024]},
        "inference": {"presets": ["r50", "convnext_large"], "size": [1024, 2048], "images": 3},
        "city": {"train": 8, "val": 2, "height": 512, "width": 1024},
        "finetune": {"preset": "r50", "iters": 60, "checkpoint_every": 10, "batch_size": 4, "crop": [512, 1024]},
        "contmav": {"preset": "paper", "epochs": 1, "batch_size": 4, "crop": [512, 1024]},
        "nccl": {},
        # seconds per step (each step's process gets 10 s more); together under 10 minutes
        "limits": {"agreement": 80, "inference": 140, "nccl": 30, "finetune": 170, "contmav": 110},
    },
    "small": {
        "agreement": {"preset": "tiny", "size": [64, 128]},
        "inference": {"presets": ["tiny"], "size": [64, 128], "images": 1},
        "city": {"train": 4, "val": 2, "height": 128, "width": 256},
        "finetune": {"preset": "tiny", "iters": 16, "checkpoint_every": 2, "batch_size": 2, "crop": [64, 128]},
        "contmav": {"preset": "tiny", "epochs": 1, "batch_size": 2, "crop": [64, 128]},
        "nccl": {},
        "limits": {"agreement": 120, "inference": 120, "nccl": 60, "finetune": 240, "contmav": 180},
    },
}


# ----------------------------------------------------------------------------- helpers
def offline_env(device: str, threads: int) -> dict[str, str]:
    """Environment of every child: offline hub, the repo's package first, no GPU for --device cpu."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def torchrun_prefix(log: Path, nproc: int = 1) -> list[str]:
    """The workflow's launcher prefix (``TORCHRUN`` in workflow/rules/common.smk) as argv."""
    text = (REPO / "workflow/rules/common.smk").read_text(encoding="utf-8")
    match = re.search(r"^TORCHRUN = (\(.*?^\))", text, re.S | re.M)
    if match is None:
        raise RuntimeError("workflow/rules/common.smk: no TORCHRUN = (...) block")
    template = ast.literal_eval(match.group(1))
    command = template.replace("{log}", shlex.quote(str(log))).replace("{params.nproc}", str(nproc))
    if "{" in command:
        raise RuntimeError(f"workflow/rules/common.smk: TORCHRUN has placeholders this check does not fill: {template}")
    return [sys.executable if word == "python" else word for word in shlex.split(command)]


def vocabseg(*args: str) -> list[str]:
    """``vocabseg ARGS`` of a workflow rule, without the console script (not installed here)."""
    return [sys.executable, "-m", "vocabseg.cli", *args]


def run_logged(cmd: list[str], log: Path, env: dict, timeout: float) -> float:
    """Run ``cmd`` with its output in ``log``; seconds taken. Raises naming the log on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{shlex.join(cmd[1:4])}... exited {proc.returncode} (log {log}):\n{tail}")
    return time.perf_counter() - start


def session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (Linux /proc): what a scheduler signals on preemption."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[3]) == sid:  # state ppid pgrp session
            pids.append(int(entry.name))
    return pids


def signal_session(sid: int, sig: int) -> int:
    """Send ``sig`` to every process of session ``sid``; how many got it."""
    sent = 0
    for pid in session_pids(sid):
        try:
            os.kill(pid, sig)
            sent += 1
        except ProcessLookupError:
            pass
    return sent


def max_abs(a, b) -> tuple[float, float]:
    """(max |a - b|, max |a|) of two tensors, in float64 on the CPU."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max()), float(a.abs().max())


def gpu_memory(torch, dev) -> dict:
    if dev.type != "cuda":
        return {}
    return {"peak_gpu_mib": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)}


def synth_city(work: Path, city: dict, env: dict, timeout: float) -> dict:
    """The workflow's data chain (rules synth_city, prepare, vocab_split, as in data.smk /
    vocab.smk) on a small target-style city; {name: seconds}."""
    raw, prepared, vocab = work / "raw", work / "prepared", work / f"vocab/{CONF}"
    times = {}
    if not (prepared / "cityscapes_panoptic_train.json").exists():
        times["synth"] = run_logged(vocabseg(
            "synth", "--root", str(raw), "--train", str(city["train"]), "--val", str(city["val"]),
            "--height", str(city["height"]), "--width", str(city["width"]), "--seed", "0", "--style", "target",
        ), work / "logs/synth.log", env, timeout)
        times["prepare"] = run_logged(vocabseg(
            "prepare", "--raw", str(raw), "--out", str(prepared), "--splits", "train", "val", "--threads", "4",
        ), work / "logs/prepare.log", env, timeout)
    if not (vocab / "split.json").exists():
        times["vocab_split"] = run_logged(vocabseg(
            "vocab-split", "--conf", CONF, "--train-json", str(prepared / "cityscapes_panoptic_train.json"),
            "--train-folder", str(prepared / "cityscapes_panoptic_train"), "--split-out", str(vocab / "split.json"),
            "--gt-json-out", str(vocab / "train_panoptic.json"), "--gt-folder-out", str(vocab / "train_panoptic"),
        ), work / "logs/vocab_split.log", env, timeout)
    return times


def random_model_json(preset: str) -> str:
    """The model block of a study with random weights everywhere (nothing downloaded)."""
    return json.dumps({"preset": preset, "overrides": {"clip_pretrained": None}})


# ------------------------------------------------------------------------------- steps
def step_agreement(args, cfg) -> dict:
    import torch

    from fcclip_speed import build, random_image, random_text

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model, _ = build(cfg["preset"])
    model.eval()
    gen = torch.Generator().manual_seed(1)
    text = random_text(model.backbone.dim_latent, gen)
    images = random_image(1, *cfg["size"], gen)

    def forward(dev):
        model.to(dev)
        with torch.no_grad():
            features, _ = model.backbone_features(images.to(dev))
            logits, masks = model.final_outputs(
                features, model.with_void(text.embeddings.to(dev), text.num_synonyms), text.num_synonyms
            )
        keep = ("res2", "res3", "res4", "res5", "clip_vis_dense")
        return {**{k: features[k].cpu() for k in keep}, "pred_logits": logits.cpu(), "pred_masks": masks.cpu()}

    reference = forward(torch.device("cpu"))
    checked = forward(torch.device(args.device))
    diffs, ok = {}, True
    for name, ref in reference.items():
        diff, scale = max_abs(ref, checked[name])
        bound = ATOL + RTOL * scale
        diffs[name] = {"max_abs_diff": diff, "max_abs_cpu": scale, "bound": bound, "ok": diff <= bound}
        ok &= diff <= bound
    worst = max(diffs, key=lambda k: diffs[k]["max_abs_diff"] / diffs[k]["bound"])
    return {
        "ok": ok,
        "preset": cfg["preset"],
        "size": cfg["size"],
        "devices": f"cpu vs {args.device}",
        "tolerance": f"max|{args.device} - cpu| <= {ATOL:g} + {RTOL:g} * max|cpu|, fp32, TF32 off",
        "max_abs_diff": diffs[worst]["max_abs_diff"],
        "worst_tensor": worst,
        "tensors": diffs,
    }


def step_inference(args, cfg) -> dict:
    import torch

    from fcclip_speed import build, random_text
    from vocabseg.approaches.study_model import vocab_ids
    from vocabseg.data.labelset import LabelSet

    dev = torch.device(args.device)
    ids = vocab_ids(None)
    seen = torch.ones(len(ids), dtype=torch.bool, device=dev)
    things = torch.tensor([LabelSet.cityscapes().by_id[i].isthing for i in ids], device=dev)
    rows = {}
    for preset in cfg["presets"]:
        torch.manual_seed(0)
        model, build_s = build(preset)
        model.eval().to(dev)
        gen = torch.Generator().manual_seed(0)
        text = random_text(model.backbone.dim_latent, gen)
        embeddings = text.embeddings.to(dev)
        for precision in ("fp32", "amp"):
            try:
                rows[f"{preset} {precision}"] = time_inference(model, embeddings, text.num_synonyms, cfg, precision,
                                                               seen, things, gen)
            except Exception as err:  # the other rows are still measured
                rows[f"{preset} {precision}"] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            rows[f"{preset} {precision}"]["build_s"] = build_s
        model.to("cpu")
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"ok": all(r.get("ok", True) for r in rows.values()), "size": cfg["size"], "batch": 1, "rows": rows}


def time_inference(model, embeddings, num_synonyms, cfg, precision, seen, things, gen) -> dict:
    """Seconds per image of ``model.inference`` after one warm-up image, in fp32 or autocast."""
    import torch

    from fcclip_speed import random_image

    dev = embeddings.device
    amp_dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    height, width = cfg["size"]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, segments = [], []
    for _ in range(1 + cfg["images"]):
        image = random_image(1, height, width, gen).to(dev)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(dev.type, dtype=amp_dtype, enabled=precision == "amp"):
            results = model.inference(
                image, embeddings, num_synonyms, seen_mask=seen, thing_mask=things, image_sizes=[(height, width)]
            )
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - start)
        segments.append(len(results[0]["segments_info"]))
    return {
        "ok": True,
        "warmup_s": times[0],
        "s_per_image": sum(times[1:]) / len(times[1:]),
        "images": len(times) - 1,
        "segments": segments,
        "autocast": str(amp_dtype).replace("torch.", "") if precision == "amp" else None,
        **gpu_memory(torch, dev),
    }


def step_nccl(args, cfg) -> dict:
    import socket

    import torch
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dev = torch.device(args.device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        dist.init_process_group(backend, init_method="env://", rank=0, world_size=1, device_id=dev)
    else:
        dist.init_process_group(backend, init_method="env://", rank=0, world_size=1)
    try:
        value = torch.arange(4, dtype=torch.float32, device=dev)
        dist.all_reduce(value)
        dist.barrier(device_ids=[dev.index or 0]) if backend == "nccl" else dist.barrier()
        ok = value.cpu().tolist() == [0.0, 1.0, 2.0, 3.0]
    finally:
        dist.destroy_process_group()
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if backend == "nccl" else None
    return {"ok": ok, "backend": backend, "nccl_version": nccl}


def checkpoints(state: Path) -> list[Path]:
    return sorted(state.glob("ckpt_*.pt"))


def step_finetune(args, cfg) -> dict:
    import torch

    work = args.out / "work"
    env = offline_env(args.device, args.threads)
    limit = cfg["limit"]
    times = synth_city(work, args.settings["city"], env, limit)
    spec = random_model_json(cfg["preset"])
    text = work / f"text/{CONF}.pt"
    times["text_embeddings"] = run_logged(vocabseg(
        "text-embeddings", "--model", spec, "--split", str(work / f"vocab/{CONF}/split.json"), "--out", str(text),
    ), work / "logs/text_embeddings.log", env, limit)
    run = work / "finetune"
    state, log, model = run / "ckpt", work / "logs/train/finetune.log", run / "model.pt"
    recipe = {
        "batch_size": cfg["batch_size"], "lr": 1e-4, "weight_decay": 0.05, "clip_grad": 0.01, "schedule": "poly",
        "warmup_iters": 0, "checkpoint_every": cfg["checkpoint_every"], "log_every": cfg["checkpoint_every"],
        "num_points": 1024, "iters": cfg["iters"], "seed": 0,
        "augment": {"crop_size": cfg["crop"], "min_scale": 0.5, "max_scale": 1.5, "flip": True, "color_jitter": True},
    }
    # as rule `train` (train.smk) for a finetune approach, without --init: random weights
    cmd = torchrun_prefix(log) + [
        "-m", "vocabseg.train", "--kind", "finetune", "--model", spec, "--text", str(text),
        "--split", str(work / f"vocab/{CONF}/split.json"),
        "--train-json", str(work / f"vocab/{CONF}/train_panoptic.json"),
        "--train-folder", str(work / f"vocab/{CONF}/train_panoptic"),
        "--image-root", str(work / "raw/leftImg8bit/train"), "--recipe", json.dumps(recipe),
        "--out", str(model), "--state-dir", str(state), "--metrics-log", str(state / "metrics.jsonl"),
        "--threads", str(args.threads),
    ]
    # run 1: killed with SIGTERM (to the whole session, as PBS/SLURM do) once a checkpoint exists
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = None
    while proc.poll() is None and time.perf_counter() - start < limit:
        if checkpoints(state):
            killed_at = time.perf_counter() - start
            signal_session(proc.pid, signal.SIGTERM)
            break
        time.sleep(0.1)
    try:
        rc1 = proc.wait(timeout=max(10.0, limit - (time.perf_counter() - start)))
    except subprocess.TimeoutExpired:
        signal_session(proc.pid, signal.SIGKILL)
        raise RuntimeError(f"run 1 did not stop within the limit after SIGTERM (log {log})")
    times["run1"] = time.perf_counter() - start
    log1 = log.with_name("finetune.run1.log").read_text(errors="replace")
    if killed_at is None:
        raise RuntimeError(f"run 1 ended (exit {rc1}) before a checkpoint appeared:\n{log1[-2000:]}")
    preempted = re.search(r"preempted at iteration (\d+)", log1)
    if rc1 != 143 or not preempted or model.exists():
        raise RuntimeError(f"run 1 after SIGTERM: exit {rc1} (expected 143), no 'preempted' line or "
                           f"model written:\n{log1[-2000:]}")
    times["run2"] = run_logged(cmd, work / "logs/train/finetune.attempt2.out", env, limit)
    log2 = log.with_name("finetune.run2.log").read_text(errors="replace")
    resumed = re.search(r"train: resumed from .*", log2)
    metrics = [json.loads(line) for line in (state / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speeds = [m["sec_per_iter"] for m in metrics if "sec_per_iter" in m]
    newest = checkpoints(state)[-1] if checkpoints(state) else None
    amp = None
    if newest is not None:
        amp = json.loads(torch.load(newest, map_location="cpu", weights_only=True)["config"]).get("amp")
    return {
        "ok": bool(resumed) and model.exists(),
        "preset": cfg["preset"],
        "iters": cfg["iters"],
        "batch": cfg["batch_size"],
        "crop": cfg["crop"],
        "amp": amp,
        "launcher": shlex.join(torchrun_prefix(Path("LOG"))),
        "sigterm_after_s": killed_at,
        "run1_exit": rc1,
        "preempted_line": preempted.group(0),
        "resumed_line": resumed.group(0) if resumed else None,
        "sec_per_iter": speeds,
        "times_s": times,
        "logs": [str(log.with_name("finetune.run1.log")), str(log.with_name("finetune.run2.log"))],
    }


def step_contmav(args, cfg) -> dict:
    import torch

    from vocabseg.openworld.evaluate import evaluate_contmav

    work = args.out / "work"
    env = offline_env(args.device, args.threads)
    limit = cfg["limit"]
    times = synth_city(work, args.settings["city"], env, limit)
    run = work / "contmav"
    roots = lambda split: ["--image-root", str(work / f"raw/leftImg8bit/{split}"),  # noqa: E731
                           "--label-root", str(work / f"prepared/gtFine/{split}")]
    known = ["--known", *(str(i) for i in range(19) if i not in UNKNOWN)]
    weights = run / "class_weights.json"
    # as rules contmav_weights, contmav_train and contmav_eval (openworld.smk)
    times["contmav_weights"] = run_logged(vocabseg("contmav-weights", *roots("train"), *known, "--out", str(weights)),
                                          work / "logs/contmav_weights.log", env, limit)
    model, state = run / "model.pt", run / "ckpt"
    recipe = {"seed": 0, "epochs": cfg["epochs"], "batch_size": cfg["batch_size"],
              "augment": {"crop_size": cfg["crop"]}}
    log = work / "logs/contmav/train.log"
    times["contmav_train"] = run_logged(torchrun_prefix(log) + [
        "-m", "vocabseg.cli", "contmav-train", *roots("train"), *known, "--weights", str(weights),
        "--model", json.dumps({"preset": cfg["preset"]}), "--variant", "{}",
        "--recipe", json.dumps(recipe), "--out", str(model), "--state-dir", str(state),
        "--metrics-log", str(state / "metrics.jsonl"), "--threads", str(args.threads),
    ], work / "logs/contmav/train.out", env, limit)
    metrics = run / "metrics.json"
    help_text = subprocess.run(vocabseg("contmav-eval", "--help"), capture_output=True, text=True, env=env,
                               cwd=REPO, timeout=120).stdout
    device_arg = ["--device", args.device] if "--device" in help_text else []
    times["contmav_eval"] = run_logged(vocabseg(
        "contmav-eval", "--model", str(model), *roots("val"), "--unknown", *map(str, UNKNOWN),
        "--cluster-stride", "4", "--threads", str(args.threads), *device_arg, "--out", str(metrics),
        "--images-out", str(run / "metrics.images.npz"),
    ), work / "logs/contmav/eval.log", env, limit)
    results = json.loads(metrics.read_text())
    cli_device = results["run"].get("device") or (args.device if device_arg else "cpu (contmav-eval has no device option)")
    # the same evaluation in-process on the checked device: the GPU path of the inference
    dev = torch.device(args.device)
    start = time.perf_counter()
    direct = evaluate_contmav(model, work / "raw/leftImg8bit/val", work / "prepared/gtFine/val", None,
                              unknown_train_ids=list(UNKNOWN), device=dev)
    times["evaluate_contmav_on_device"] = time.perf_counter() - start
    agree = abs((direct["anomaly"]["auroc"] or 0) - (results["anomaly"]["auroc"] or 0))
    return {
        "ok": model.exists() and results["anomaly"]["auroc"] is not None,
        "preset": cfg["preset"],
        "train_device": args.device,
        "eval_device_cli": cli_device,
        "eval_device_direct": str(dev),
        "auroc_cli": results["anomaly"]["auroc"],
        "auroc_direct": direct["anomaly"]["auroc"],
        "auroc_abs_diff": agree,
        "miou_known_cli": results["known"]["miou"],
        "times_s": times,
        **gpu_memory(torch, dev),
    }


# ----------------------------------------------------------------------------- drivers
def run_one(args) -> None:
    """Child: one step; its result as one JSON line on stdout (errors included)."""
    import torch

    torch.set_num_threads(args.threads)
    cfg = dict(args.settings[args.one], limit=args.settings["limits"][args.one])
    start = time.perf_counter()
    try:
        result = globals()[f"step_{args.one}"](args, cfg)
    except Exception as err:  # reported, the parent goes on with the next step
        result = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    result["seconds"] = time.perf_counter() - start
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)


def spawn(step: str, args) -> dict:
    """Run one step in a fresh process under its time limit; its result dict."""
    limit = args.settings["limits"][step]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", step, "--out", str(args.out),
           "--device", args.device, "--threads", str(args.threads)] + (["--small"] if args.small else [])
    log = args.out / "work/logs" / f"{step}.step.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=offline_env(args.device, args.threads),
                              timeout=limit + 10, cwd=REPO)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, err, rc = exc.stdout or "", (exc.stderr or "") + f"\nstep killed after {limit + 10} s", None
        out, err = (out.decode() if isinstance(out, bytes) else out), (err.decode() if isinstance(err, bytes) else err)
    log.write_text(out + err)
    lines = [ln for ln in out.splitlines() if ln.startswith(RESULT_PREFIX)]
    if lines:
        result = json.loads(lines[-1][len(RESULT_PREFIX):])
    else:
        result = {"ok": False, "error": f"step process exited {rc} without a result; last output: {err[-2000:]}"}
    result["wall_s"] = time.perf_counter() - start
    return result


def environment(device: str) -> dict:
    import torch

    facts = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
             "host": platform.node(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                     cudnn=torch.backends.cudnn.version())
    return facts


def text_report(report: dict) -> str:
    lines = [f"vocabseg GPU check: {'ALL PASSED' if report['ok'] else 'FAILED'}"]
    lines += [f"  {k}: {v}" for k, v in report["environment"].items()]
    for name, r in report["steps"].items():
        lines.append(f"\n[{'PASS' if r.get('ok') else 'FAIL'}] {name}  ({r.get('wall_s', 0):.1f} s)")
        if name == "agreement" and "tensors" in r:
            lines.append(f"  {r['tolerance']}; worst {r['worst_tensor']}: max abs diff {r['max_abs_diff']:.3g}")
            for t, d in r["tensors"].items():
                lines.append(f"    {t:>15}: max abs diff {d['max_abs_diff']:.3g} (bound {d['bound']:.3g})")
        elif name == "inference" and "rows" in r:
            lines.append(f"  {r['size'][0]}x{r['size'][1]}, batch 1, random weights")
            for row, d in r["rows"].items():
                if not d.get("ok"):
                    lines.append(f"    {row:>22}: FAILED {d.get('error')}")
                    continue
                mem = f", peak {d['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in d else ""
                lines.append(f"    {row:>22}: {d['s_per_image']:.3f} s/image over {d['images']} "
                             f"(warm-up {d['warmup_s']:.2f} s{mem})")
        else:
            for key, value in r.items():
                if key not in ("ok", "traceback", "wall_s"):
                    lines.append(f"  {key}: {value}")
        if "traceback" in r:
            lines.append("  " + r["traceback"].rstrip().replace("\n", "\n  "))
    lines.append(f"\ntotal {report['total_s']:.1f} s")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="report folder (gpu_check.json, gpu_check.txt, work/)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--small", action="store_true", help="tiny sizes (a CPU check of this script's logic)")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    p.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1), help="torch threads per process")
    p.add_argument("--one", choices=STEPS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    args.settings = SETTINGS["small" if args.small else "full"]
    if args.one:
        run_one(args)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: torch sees no CUDA device (use --device cpu for a CPU check)")
    start = time.perf_counter()
    report = {"environment": environment(args.device), "small": args.small, "steps": {}}
    for step in args.steps:
        print(f"gpu_check: {step} ...", flush=True)
        report["steps"][step] = spawn(step, args)
        print(f"gpu_check: {step} {'passed' if report['steps'][step].get('ok') else 'FAILED'}"
              f" ({report['steps'][step]['wall_s']:.1f} s)", flush=True)
    report["total_s"] = time.perf_counter() - start
    report["ok"] = all(r.get("ok") for r in report["steps"].values())
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = text_report(report)
    (args.out / "gpu_check.txt").write_text(text)
    print(text, end="")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
