"""Offline compute nodes: downloads happen in local rules on the submit host, jobs read
local files (docs/clusters.md, "Offline compute nodes").

No test touches the network: downloads come from a file server on 127.0.0.1 or from a
monkeypatched hub, and the cluster run's jobs have every connection refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import yaml
from file_server import serve_files
from safetensors.torch import load_file
from study_configs import TINY

from vocabseg.approaches.study_model import ModelSpec
from vocabseg.errors import InputError
from vocabseg.fetch import fetch_clip, fetch_url
from vocabseg.models.clip_tiny import TINY_CLIP_NAME, register_tiny_clip

REPO = Path(__file__).resolve().parents[1]
JOBS = Path(__file__).resolve().parent / "offline_jobs"
BODY = bytes(range(256)) * 40  # 10 kB


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def quiet(line: str) -> None:
    pass


def test_fetch_url_resumes_a_partial_file_and_checks_the_sha256(tmp_path):
    out = tmp_path / "w" / "fcclip.pth"
    out.parent.mkdir()
    (out.parent / "fcclip.pth.part").write_bytes(BODY[:3000])
    with serve_files({"/fcclip.pth": BODY}) as server:
        digest = fetch_url(f"http://127.0.0.1:{server.server_port}/fcclip.pth", out, sha256(BODY), log=quiet)
    assert server.requests == [("GET", "/fcclip.pth", "bytes=3000-")]
    assert out.read_bytes() == BODY and digest == sha256(BODY)
    assert not (out.parent / "fcclip.pth.part").exists()


def test_fetch_url_with_a_wrong_sha256_keeps_nothing_as_the_output(tmp_path):
    out = tmp_path / "fcclip.pth"
    with serve_files({"/fcclip.pth": BODY}) as server:
        with pytest.raises(InputError, match=r"^model\.weights_sha256: .* gave a file of sha256") as err:
            fetch_url(f"http://127.0.0.1:{server.server_port}/fcclip.pth", out, "0" * 64, log=quiet)
    assert "\n" not in str(err.value)
    assert not out.exists() and (tmp_path / "fcclip.pth.corrupt").read_bytes() == BODY


def test_fetch_url_names_the_config_key_on_an_http_error(tmp_path):
    with serve_files({}) as server:
        with pytest.raises(InputError, match=r"^model\.weights_url: GET .* answered HTTP 404"):
            fetch_url(f"http://127.0.0.1:{server.server_port}/missing.pth", tmp_path / "x.pth", log=quiet)


def tiny_clip_state() -> dict[str, torch.Tensor]:
    register_tiny_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        return open_clip.create_model(TINY_CLIP_NAME).state_dict()


@pytest.fixture
def hub_tag(monkeypatch, tmp_path):
    """The tiny CLIP gets the tag ``hubtag`` on a fake hub whose file is a safetensors
    of :func:`tiny_clip_state`; returns the hub's metadata dict (etag editable)."""
    from huggingface_hub.errors import EntryNotFoundError
    from safetensors.torch import save_file

    register_tiny_clip()
    weights = tmp_path / "hub" / "open_clip_model.safetensors"
    weights.parent.mkdir()
    save_file(tiny_clip_state(), weights)
    hub = {"etag": sha256(weights.read_bytes()), "asked": []}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY_CLIP_NAME, {"hubtag": {"hf_hub": "org/tiny-clip/"}})

    def metadata(url, **kwargs):
        hub["asked"].append(url)
        if not url.endswith("/open_clip_model.safetensors"):
            raise EntryNotFoundError(url)
        return type("Meta", (), {"etag": hub["etag"]})()

    monkeypatch.setattr("huggingface_hub.get_hf_file_metadata", metadata)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda repo, name, **kw: str(weights))
    return hub


def test_fetch_clip_from_the_hub_checks_the_hubs_sha256(hub_tag, tmp_path):
    out = tmp_path / "resources/weights/clip/tiny-hubtag.safetensors"
    fetch_clip(ModelSpec(preset="tiny", clip_pretrained="hubtag"), out, log=quiet)
    assert hub_tag["asked"] == ["https://huggingface.co/org/tiny-clip/resolve/main/open_clip_model.safetensors"]
    fetched, expected = load_file(out), tiny_clip_state()
    assert fetched.keys() == expected.keys() and all(torch.equal(fetched[k], expected[k]) for k in expected)

    hub_tag["etag"] = "1" * 64
    with pytest.raises(InputError, match=r"^model\.clip_pretrained .*does not match the hub's checksum"):
        fetch_clip(ModelSpec(preset="tiny", clip_pretrained="hubtag"), tmp_path / "again.safetensors", log=quiet)
    assert not (tmp_path / "again.safetensors").exists()


def test_fetch_clip_without_an_answer_from_the_hub_uses_a_verified_cached_file(hub_tag, monkeypatch, tmp_path):
    """A submit host that cannot reach the hub either: a file in the hub cache is checked
    against its blob name (the hub's sha256) and used; without one, one line says why."""

    def no_answer(url, **kwargs):
        raise ConnectionError("Network is unreachable")

    monkeypatch.setattr("huggingface_hub.get_hf_file_metadata", no_answer)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, name, **kw: None)
    spec = ModelSpec(preset="tiny", clip_pretrained="hubtag")
    with pytest.raises(InputError, match=r"^model\.clip_pretrained .*hub did not answer about org/tiny-clip/") as err:
        fetch_clip(spec, tmp_path / "a.safetensors", log=quiet)
    assert "\n" not in str(err.value)

    served = tmp_path / "hub" / "open_clip_model.safetensors"
    blob = tmp_path / "cache" / "blobs" / sha256(served.read_bytes())
    blob.parent.mkdir(parents=True)
    blob.write_bytes(served.read_bytes())
    snapshot = tmp_path / "cache" / "snapshots" / "abc" / "open_clip_model.safetensors"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(blob)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, name, **kw: str(snapshot))
    fetch_clip(spec, tmp_path / "b.safetensors", log=quiet)
    assert (tmp_path / "b.safetensors").read_bytes() == served.read_bytes()

    blob.write_bytes(b"damaged")
    with pytest.raises(InputError, match=r"does not match the hub's checksum"):
        fetch_clip(spec, tmp_path / "c.safetensors", log=quiet)


def test_fetch_clip_of_an_unknown_tag_names_the_config_key(hub_tag, tmp_path):
    with pytest.raises(InputError, match=r"^model\.clip_pretrained: 'nosuchtag' is neither a file nor .*hubtag"):
        fetch_clip(ModelSpec(preset="tiny", clip_pretrained="nosuchtag"), tmp_path / "x.safetensors", log=quiet)


def snakemake(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def job_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def test_cityscapes_r50_dry_run_fetches_in_local_rules_and_jobs_read_the_files(tmp_path):
    """With the SLURM profile: the CLIP and official weights are fetched by their own
    rules; every job that builds a model names the fetched CLIP file and no URL."""
    config = yaml.safe_load((REPO / "config/cityscapes-r50.yaml").read_text())
    config["model"]["weights_url"] = "https://example.org/fcclip_cocopan_r50.pth"
    config["model"]["weights_sha256"] = "a" * 64
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    res = snakemake(
        ["-n", "-p", "--profile", str(REPO / "profiles/slurm"), "--configfile", "study.yaml"],
        tmp_path, job_env(), timeout=300,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    # (a dry run prints local rules as "rule"; the run below shows them run locally)
    assert re.search(r"^rule fetch_clip:\n\s+output: resources/weights/clip/r50\.safetensors$", out, re.M)
    assert re.search(r"^rule official_weights:\n\s+output: resources/weights/fcclip_cocopan_r50\.pth$", out, re.M)
    assert "fetch-url --url https://example.org/fcclip_cocopan_r50.pth --sha256 " + "a" * 64 in out
    models = [json.loads(m) for m in re.findall(r"--model '(\{.*?\})'", out)]
    jobs = [m for m in models if "weights" in m]  # fetch_clip's own block names the tag
    assert len(jobs) > 20
    for model in jobs:
        assert model["clip_pretrained"] == "resources/weights/clip/r50.safetensors", model
        assert "weights_url" not in model and "weights_sha256" not in model


def test_jobs_without_network_run_on_the_fetched_files(tmp_path):
    """A cluster study (cluster-generic executor, jobs submitted by offline_jobs/submit
    with every connection refused and HF_HUB_OFFLINE) whose model names the CLIP tag
    ``faketag`` and an official-weights URL: the local rules fetch both from 127.0.0.1,
    the text-embedding and prediction jobs read them and succeed."""
    from vocabseg.models.fcclip import FCCLIP, preset_config, save_fcclip_checkpoint

    clip_state = tiny_clip_state()
    buffer = io.BytesIO()
    torch.save(clip_state, buffer)
    torch.manual_seed(0)
    save_fcclip_checkpoint(FCCLIP(preset_config("tiny")), tmp_path / "base.pt")
    files = {"/tiny_clip.pt": buffer.getvalue(), "/base.pt": (tmp_path / "base.pt").read_bytes()}

    with serve_files(files) as server:
        url = f"http://127.0.0.1:{server.server_port}"
        env = job_env(
            PYTHONPATH=os.pathsep.join([str(JOBS), os.environ.get("PYTHONPATH", "")]),
            VOCABSEG_TEST_CLIP_URL=f"{url}/tiny_clip.pt",
        )
        blocked = subprocess.run(
            [sys.executable, "-c", f"import urllib.request; urllib.request.urlopen('{url}/base.pt', timeout=5)"],
            env=dict(env, VOCABSEG_TEST_NO_NETWORK="1"), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert blocked.returncode != 0 and "Network is unreachable" in blocked.stderr  # the jobs' network is off
        study = dict(
            TINY,
            model={
                "preset": "tiny",
                "clip_pretrained": "faketag",
                "weights": "resources/weights/tiny_base.pt",
                "weights_url": f"{url}/base.pt",
                "weights_sha256": sha256(files["/base.pt"]),
            },
            approaches={"zeroshot": {"kind": "zeroshot"}},
        )
        (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
        res = snakemake(
            [
                "--executor", "cluster-generic", "--cluster-generic-submit-cmd", str(JOBS / "submit"),
                "--jobs", "2", "--latency-wait", "5", "--seconds-between-status-checks", "1",
                "results/tiny/predictions/zeroshot/panoptic.json",
                "--configfile", "study.yaml",
            ],
            tmp_path, env, timeout=240,
        )  # fmt: skip
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-4000:]
        assert sorted(r[1] for r in server.requests) == ["/base.pt", "/tiny_clip.pt"]  # one GET each
    assert re.search(r"^localrule fetch_clip:$", out, re.M) and re.search(r"^localrule official_weights:$", out, re.M)
    assert re.search(r"^rule text_embeddings:$", out, re.M) and re.search(r"^rule predict:$", out, re.M)
    fetched = load_file(tmp_path / "resources/weights/clip/tiny-faketag.safetensors")
    assert all(torch.equal(fetched[k], clip_state[k]) for k in clip_state)
    assert (tmp_path / "resources/weights/tiny_base.pt").read_bytes() == files["/base.pt"]
    # the text classifier was computed from the fetched weights, not a random CLIP
    from vocabseg.approaches.study_model import build_backbone, text_classifier_for, vocab_ids
    from vocabseg.models.fcclip import load_text_classifier

    spec = ModelSpec(preset="tiny", clip_pretrained=str(tmp_path / "resources/weights/clip/tiny-faketag.safetensors"))
    expected, _ = text_classifier_for(build_backbone(spec), vocab_ids(None))
    job_result = load_text_classifier(tmp_path / "results/tiny/text/tiny/000.pt")
    assert torch.allclose(job_result.embeddings, expected)
