"""GPU check: the real ``configs/train_8gpu.yaml`` code path on 1 GPU, its throughput, and a
side-by-side against sentence-transformers on the same device.

    python bench/train_gpu.py [--config configs/train_8gpu.yaml] [--steps 20] [--batch-size 32]
                              [--negatives 7] [--doc-length 256] [--encode-docs 1024]
    python bench/train_gpu.py --cpu-dry-run     # the same code path on CPU: tiny model, gloo

What runs: the config file as users run it, with ``train.num_workers: 1`` and the paths pointed at
a temporary directory: Ray Train's TorchTrainer with the NCCL backend (the process group exists at
world size 1 too, so the metrics all-reduce runs through NCCL), BF16 autocast, a BERT-base-sized
masked LM built from config (no hub), synthetic prepared data. The run trains
``3 x --steps`` steps with a checkpoint every ``--steps``; an injected failure after step
``--steps + 1`` makes the worker group restart (the config's ``max_failures``) and resume from the
step-``--steps`` checkpoint. Every ``torch.distributed`` collective is recorded
(``train.debug.collective_log_dir``) and must have got tensors on the worker's device. Then the
exported model encodes ``--encode-docs`` documents (BF16), and :mod:`_st_compare` times
sentence-transformers' ``SpladeLoss`` step and ``encode_document`` against spladeray's on the same
model, batch, lengths and bf16.

Prints one JSON line ``SUMMARY {...}``: tokens/s and step time of the last report interval (after
the restart's warm-up), peak device memory, MFU, restart seconds (from the injected failure to the
resumed worker's restore), encode docs/s, and the side-by-side ratios (``train_step_ratio``,
``encode_ratio``: spladeray's speed over sentence-transformers'); then the ``RESULT`` line
(bench/run_all.py contract). MFU = achieved model FLOPs / peak dense BF16 FLOPs of the device;
model FLOPs per real (non-pad) token, forward + backward = 6 x (matmul parameters of the encoder
layers + head transform + vocabulary projection) + 12 x layers x hidden x sequence length
(attention scores); padding and the SPLADE pooling are not counted, so the figure is conservative.

Without a CUDA torch the GPU run prints ``FAIL`` and exits 2 (never a silent pass); only under
``make bench`` (bench/run_all.py sets ``SPLADERAY_BENCH_RUN_ALL``) does it print ``SKIP``.
``--cpu-dry-run`` runs everything above on CPU instead: a tiny BERT built here, 2 gloo workers,
fewer and smaller steps; its figures are labelled ``cpu`` and MFU is null (no bf16 peak for a CPU).
CI runs it (tests/bench/test_train_gpu_dry_run.py), so an import error fails CI. ``--dry-run``
only builds and prints the config (any machine). The GPU machine's one-call command: docs/gpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: _env, _procs
import _env  # noqa: E402  platform/ on sys.path, offline defaults

ROOT = _env.ROOT

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}
VOCAB_SIZE = 30522  # BERT's, when no tokenizer is at hand
KIT_TOKENIZER = ROOT / "gpu_kit" / "tokenizer"  # filled by bench/gpu_kit.py for the GPU machine

# --cpu-dry-run: small enough for CI (2 cores), the same code path as the GPU run
CPU_DRY_RUN = dict(steps=2, batch_size=4, negatives=1, doc_length=32, encode_docs=64, workers=2)


def peak_flops(name: str) -> float | None:
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "train_8gpu.yaml")
    parser.add_argument("--steps", type=int, default=20, help="steps per report interval")
    parser.add_argument("--batch-size", type=int, default=32, help="queries per step")
    parser.add_argument("--negatives", type=int, default=7)
    parser.add_argument("--doc-length", type=int, default=256)
    parser.add_argument("--encode-docs", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (GPUs)")
    parser.add_argument("--dry-run", action="store_true", help="build and print the config only")
    parser.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="the whole run on CPU (tiny model, 2 gloo workers, small sizes): what CI runs",
    )
    args = parser.parse_args(argv)
    if args.cpu_dry_run:
        for key, value in CPU_DRY_RUN.items():
            if f"--{key.replace('_', '-')}" not in (argv if argv is not None else sys.argv):
                setattr(args, key, value)
    if (
        min(args.steps - 1, args.batch_size, args.negatives, args.doc_length - 7, args.encode_docs)
        < 1
    ):
        parser.error(
            "need --steps >= 2, --batch-size >= 1, --negatives >= 1, --doc-length >= 8, "
            "--encode-docs >= 1"
        )
    return args


def gpu_config(args: argparse.Namespace, *, model_dir: Path, data_dir: Path, work: Path):
    """``args.config`` with this run's workers, paths and sizes, a restart after a checkpoint.

    ``--cpu-dry-run``: gloo, no GPU, 1 CPU per worker, a local cluster with as many CPUs.
    """
    from spladeray.config import load_config

    steps = args.steps
    overrides = [
        "ray.address=null",  # a local cluster of this machine
        "ray.include_dashboard=false",
        f"model.path={model_dir}",
        f"model.max_document_length={args.doc_length}",
        f"train.num_workers={args.workers}",
        f"train.output_dir={work / 'out'}",
        f"train.data_dir={data_dir}",
        f"train.storage_path={work / 'ray'}",
        "train.name=bench_train_gpu",
        f"train.batch_size={args.batch_size}",
        f"train.num_negatives={args.negatives}",
        f"train.max_steps={3 * steps}",
        f"train.max_document_length={args.doc_length}",
        f"train.log_every_steps={steps}",
        f"train.checkpoint.every_steps={steps}",
        "train.tensorboard=false",
        f"train.debug.fail_at_step={steps + 1}",
        f"train.debug.marker_dir={work / 'markers'}",
        f"train.debug.dump_dir={work / 'dump'}",
        f"train.debug.collective_log_dir={work / 'collectives'}",
    ]
    if args.cpu_dry_run:
        overrides += [
            "model.device=cpu",
            f"ray.num_cpus={args.workers + 2}",  # logical CPUs: workers + Ray Data + controller
            "train.use_gpu=false",
            "train.backend=gloo",
            "train.cpus_per_worker=1",
            "train.shuffle_buffer=0",
        ]
    cfg = load_config(args.config, overrides=overrides)
    extra = []
    if cfg.train.max_failures == 0:
        extra.append("train.max_failures=1")  # the restart needs one
    if cfg.train.eval is not None:
        # the bench measures training; the config's evaluation set is checked by the preflight
        # of a real run (spladeray.train.preflight), not needed here
        extra.append("train.eval=null")
    return load_config(args.config, overrides=[*overrides, *extra]) if extra else cfg


def tokenizer_for_bench():
    """A BERT WordPiece tokenizer: gpu_kit/tokenizer (bench/gpu_kit.py), else splade-tiny's from
    the offline assets, else a BERT-sized stand-in built from the synthetic words."""
    from transformers import AutoTokenizer, BertTokenizer

    from spladeray.data.synthetic import WORDS
    from spladeray.paths import assets_root

    candidates = [KIT_TOKENIZER]
    candidates += [r / "models" / "splade-tiny" for r in (assets_root(), ROOT / "shared/assets")]
    for path in candidates:
        if (path / "tokenizer.json").is_file() or (path / "vocab.txt").is_file():
            return AutoTokenizer.from_pretrained(path)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = special + WORDS
    vocab += [f"[unused{i}]" for i in range(VOCAB_SIZE - len(vocab))]
    # transformers 5 takes the vocabulary itself (a vocab_file given to the fast class is
    # ignored there: the tokenizer came out with the 5 special tokens only)
    return BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})


def build_model(work: Path, *, tiny: bool):
    """A randomly initialised BERT masked LM saved with its tokenizer: BERT-base (12 x 768), or
    for the CPU dry run a 2 x 32 one with the same vocabulary."""
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = tokenizer_for_bench()
    size = (
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        if tiny
        else {}
    )
    bert = BertConfig(vocab_size=len(tokenizer), **size)
    model_dir = work / ("bert-tiny-random" if tiny else "bert-base-random")
    BertForMaskedLM(bert).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir, bert


def check_collectives(log_dir: Path, device_type: str) -> dict[str, int]:
    """Counts per op; raises when a collective got a tensor off the worker's device (CUDA on
    the GPU run)."""
    from spladeray.train.debug import read_collective_log

    records = read_collective_log(log_dir)
    wrong = [
        r for r in records if r["devices"] != [r["expected"]] or device_type not in r["expected"]
    ]
    if not records or wrong:
        raise SystemExit(f"FAIL collectives: {len(records)} recorded, off-device: {wrong[:5]}")
    counts: dict[str, int] = {}
    for r in records:
        counts[r["op"]] = counts.get(r["op"], 0) + 1
    return counts


def restart_seconds(work: Path, steps: int) -> float:
    """From the injected failure (its marker file) to the restarted worker's restore (its
    resume dump): worker-group teardown, restart, model load and checkpoint restore."""
    marker = work / "markers" / "failure_0"
    resumed = work / "dump" / f"resume_step{steps}_rank0.pt"
    return resumed.stat().st_mtime - marker.stat().st_mtime


def synthetic_docs(n_docs: int, doc_words: int, seed: int = 0) -> list[str]:
    import random

    from spladeray.data.synthetic import WORDS

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(doc_words)) for _ in range(n_docs)]


def encode_throughput(model_dir: Path, docs: list[str], device: str) -> float:
    """Documents/s of the exported model (BF16), after one warm-up batch."""
    import torch

    from spladeray.model.loading import load_encoder

    encoder = load_encoder(str(model_dir), device=device, dtype="bfloat16", batch_size=128)
    encoder.encode_documents_csr(docs[:128])
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    encoder.encode_documents_csr(docs)
    if device == "cuda":
        torch.cuda.synchronize()
    return len(docs) / (time.perf_counter() - t0)


def side_by_side(model_dir: Path, data_dir: Path, args, device: str) -> dict:
    """:mod:`_st_compare` on one batch of the run's own prepared rows."""
    import _st_compare as st_compare
    import pyarrow.parquet as pq

    from spladeray.data import schema

    table = pq.read_table(data_dir / schema.SHARDS_DIR).slice(0, args.batch_size).to_pylist()
    queries = [r["query"] for r in table]
    positives = [r["positive"] for r in table]
    negatives = [
        r["negatives"][k % len(r["negatives"])] for r in table for k in range(args.negatives)
    ]
    out = st_compare.compare_training(
        model_dir,
        queries,
        positives,
        negatives,
        device=device,
        doc_length=args.doc_length,
        warmup=1 if args.cpu_dry_run else 3,
        steps=2 if args.cpu_dry_run else 10,
    )
    docs = synthetic_docs(args.encode_docs, args.doc_length, seed=1)
    out.update(
        st_compare.compare_encoding(model_dir, docs, device=device, doc_length=args.doc_length)
    )
    return out


def mfu(bert, doc_length: int, tokens_per_s: float, device_name: str) -> tuple[float, float | None]:
    """Achieved model FLOP/s and MFU against the device's bf16 peak (None where unknown)."""
    h, layers, vocab = bert.hidden_size, bert.num_hidden_layers, bert.vocab_size
    matmul_params = layers * (4 * h * h + 2 * h * bert.intermediate_size) + h * h + h * vocab
    flops_per_token = 6 * matmul_params + 12 * layers * h * doc_length
    achieved = flops_per_token * tokens_per_s
    peak = peak_flops(device_name)
    return achieved, (achieved / peak if peak else None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.dry_run:
        with tempfile.TemporaryDirectory(prefix="bench-train-gpu-") as tmp:
            work = Path(tmp)
            cfg = gpu_config(args, model_dir=work / "model", data_dir=work / "data", work=work)
            print(json.dumps(cfg.train.model_dump(mode="json"), indent=2))
        return 0
    cpu = args.cpu_dry_run
    if not cpu and not torch.cuda.is_available() and os.environ.get("SPLADERAY_BENCH_RUN_ALL"):
        print("SKIP no CUDA device here; bench/train_gpu.py needs 1 GPU (docs/gpu.md)")
        return 0  # make bench on a CPU machine lists it as not measured (bench/run_all.py)
    if not cpu and not torch.cuda.is_available():
        print(
            f"FAIL no CUDA device for the GPU run: torch {torch.__version__} "
            f"(CUDA build: {torch.version.cuda}). Run it with the GPU image's own torch "
            "(docs/gpu.md), or pass --cpu-dry-run for the CPU check.",
            flush=True,
        )
        return 2
    if not cpu and torch.cuda.device_count() < args.workers:
        print(f"FAIL --workers {args.workers} but {torch.cuda.device_count()} GPU(s)", flush=True)
        return 2
    import ray

    from spladeray.data.synthetic import write_bench_data
    from spladeray.train import run_train

    steps = args.steps
    device = "cpu" if cpu else "cuda"
    device_name = "cpu" if cpu else torch.cuda.get_device_name(0)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-train-gpu-") as tmp:
        work = Path(tmp)
        model_dir, bert = build_model(work, tiny=cpu)
        rows = args.batch_size * args.workers * (3 * steps + 1)  # every step in one epoch
        data = write_bench_data(work / "data", rows, args.negatives)
        cfg = gpu_config(args, model_dir=model_dir, data_dir=data, work=work)
        tc = cfg.train
        print(
            f"config {args.config.name}: backend {tc.backend}, precision {tc.precision}, "
            f"{tc.num_workers} worker(s) of {tc.cpus_per_worker:g} CPUs, {tc.max_steps} steps, "
            f"checkpoint every {tc.checkpoint.every_steps}, restart after step {steps + 1}",
            flush=True,
        )
        try:
            result = run_train(cfg)
        finally:
            ray.shutdown()
        metrics = result.metrics
        if int(metrics["step"]) != 3 * steps:
            raise SystemExit(f"FAIL: the run ended at step {metrics['step']}, not {3 * steps}")
        resumed = sorted(p.name for p in (work / "dump").glob("resume_step*_rank0.pt"))
        if resumed != [f"resume_step{steps}_rank0.pt"]:
            raise SystemExit(f"FAIL: expected one resume at step {steps}, found {resumed}")
        restart_s = restart_seconds(work, steps)
        collectives = check_collectives(work / "collectives", device)
        docs = synthetic_docs(args.encode_docs, args.doc_length)
        docs_per_s = encode_throughput(Path(result.model_dir), docs, device)
        compare = side_by_side(model_dir, data, args, device)

    tokens_per_s = float(metrics["tokens_per_s"])
    achieved, utilisation = mfu(bert, args.doc_length, tokens_per_s, device_name)
    summary = {
        "device": device_name,
        "mode": "cpu-dry-run" if cpu else "gpu",
        "torch": torch.__version__,
        "workers": tc.num_workers,
        "backend": tc.backend,
        "steps": 3 * steps,
        "tokens_per_s": round(tokens_per_s, 1),
        "step_time_s": round(1.0 / float(metrics["steps_per_s"]), 4),
        "samples_per_s": round(float(metrics["samples_per_s"]), 2),
        "peak_memory_gib": round(metrics["gpu_mem_gb"], 2) if "gpu_mem_gb" in metrics else None,
        "model_tflops": round(achieved / 1e12, 4),
        "mfu": round(utilisation, 4) if utilisation is not None else None,
        "mfu_peak_flops": peak_flops(device_name),
        "restart_s": round(restart_s, 2),
        "resumed_at_step": steps,
        "collectives": collectives,
        "encode_docs_per_s": round(docs_per_s, 1),
        **compare,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    print("SUMMARY " + json.dumps(summary), flush=True)
    result_line = {
        "name": "train_gpu" if not cpu else "train_gpu_cpu_dry_run",
        "metric": "model TFLOP/s (ratio = MFU)",
        "baseline": (peak_flops(device_name) or 0) / 1e12,
        "candidate": round(achieved / 1e12, 4),
        "ratio": summary["mfu"],
        "baseline_name": f"peak BF16 of {device_name}",
        "candidate_name": f"configs/train_8gpu.yaml on {tc.num_workers} worker(s) ({tc.backend}, BF16)",
        "tokens_per_s": round(tokens_per_s),
        "encode_docs_per_s": round(docs_per_s, 1),
        "train_step_ratio_vs_st": compare["train_step_ratio"],
        "encode_ratio_vs_st": compare["encode_ratio"],
    }
    print("RESULT " + json.dumps(result_line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
