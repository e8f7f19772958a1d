"""bench/train_gpu.py cannot rot: its ``--cpu-dry-run`` runs the GPU check's whole code path on CPU
(the 8-GPU config with a tiny BERT built in the script, 2 gloo workers, a checkpoint, an
injected failure and the resume, the collective check, encoding, and the side-by-side against
sentence-transformers), in a subprocess exactly as a user runs it. An import error or a crash
anywhere in that path fails here. Without a CUDA torch the GPU run itself must FAIL with a
non-zero exit, never print SKIP and pass.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_train_gpu", ROOT / "bench" / "train_gpu.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_run_without_cuda_fails_loudly(capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():  # the CI machines have none; on a GPU this would train
        return
    monkeypatch.delenv("SPLADERAY_BENCH_RUN_ALL", raising=False)
    assert _bench().main([]) == 2
    assert capsys.readouterr().out.startswith("FAIL no CUDA device")
    monkeypatch.setenv("SPLADERAY_BENCH_RUN_ALL", "1")  # make bench: listed as not measured
    assert _bench().main([]) == 0
    assert capsys.readouterr().out.startswith("SKIP no CUDA device")


def test_gpu_kit_slims_a_wheel_and_rewrites_its_record(tmp_path):
    """bench/gpu_kit.py's slimming on a small wheel of the same layout: the Java jar and the
    dashboard client are gone, from the archive and from RECORD; everything else is intact."""
    import zipfile

    spec = importlib.util.spec_from_file_location("gpu_kit", ROOT / "bench" / "gpu_kit.py")
    kit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kit)
    files = {
        "ray/__init__.py": b"x = 1\n",
        "ray/jars/ray_dist.jar": b"J" * 1000,
        "ray/dashboard/client/build/index.html": b"<html/>",
        "ray/dashboard/head.py": b"pass\n",
    }
    record = "".join(f"{n},{kit._record_hash(d)},{len(d)}\n" for n, d in files.items())
    record += "ray-2.60.0.dist-info/RECORD,,\n"
    src = tmp_path / "ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl"
    with zipfile.ZipFile(src, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("ray-2.60.0.dist-info/RECORD", record)
    out = tmp_path / "slim.whl"
    assert kit.slim_wheel(src, out) == (2, 1007)
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        kept = z.read("ray-2.60.0.dist-info/RECORD").decode()
        assert z.read("ray/__init__.py") == b"x = 1\n"
    assert names == {"ray/__init__.py", "ray/dashboard/head.py", "ray-2.60.0.dist-info/RECORD"}
    assert "ray_dist.jar" not in kept and "client/build" not in kept
    assert "ray/__init__.py," in kept and "ray/dashboard/head.py," in kept


def test_cpu_dry_run_end_to_end(tmp_path, assets):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local cluster
    env.update(
        PYTHONPATH=str(ROOT / "platform"),
        SPLADERAY_ASSETS=str(assets),
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_gpu.py"), "--cpu-dry-run"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,  # minutes on a loaded 2-core machine: Ray start, 2 attempts, restart
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SUMMARY ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    summary = json.loads(lines[0].removeprefix("SUMMARY "))
    assert summary["mode"] == "cpu-dry-run" and summary["backend"] == "gloo"
    assert summary["workers"] == 2 and summary["steps"] == 6 and summary["resumed_at_step"] == 2
    assert summary["restart_s"] > 0
    assert summary["collectives"].get("all_reduce", 0) > 0
    assert summary["mfu"] is None  # no bf16 peak for a CPU: never a made-up figure
    for key in (
        "tokens_per_s",
        "step_time_s",
        "model_tflops",
        "encode_docs_per_s",
        "st_step_s",
        "spladeray_step_s",
        "train_step_ratio",
        "st_encode_docs_per_s",
        "spladeray_encode_docs_per_s",
        "encode_ratio",
    ):
        assert summary[key] > 0, key
