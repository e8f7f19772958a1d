"""GPU check: the real ``configs/train_8gpu.yaml`` code path on 1 GPU, and its throughput.

    python bench/train_gpu.py [--config configs/train_8gpu.yaml] [--steps 20] [--batch-size 32]
                              [--negatives 7] [--doc-length 256] [--encode-docs 1024]

What runs: the config file as users run it, with ``train.num_workers: 1`` and the paths pointed at
a temporary directory: Ray Train's TorchTrainer with the NCCL backend (the process group exists at
world size 1 too, so the metrics all-reduce runs through NCCL), BF16 autocast, a BERT-base-sized
masked LM built from config (no hub), synthetic prepared data. The run trains
``3 x --steps`` steps with a checkpoint every ``--steps``; an injected failure after step
``--steps + 1`` makes the worker group restart (the config's ``max_failures``) and resume from the
step-``--steps`` checkpoint. Every ``torch.distributed`` collective is recorded
(``train.debug.collective_log_dir``) and must have got tensors on the worker's CUDA device. Then
the exported model encodes ``--encode-docs`` documents on the GPU (BF16).

Prints tokens/s and model FLOPs utilisation of the last report interval (after the restart's
warm-up), the resume and collective checks, encode docs/s, and a ``RESULT`` line (bench/run_all.py
contract). MFU = achieved model FLOPs / peak dense BF16 FLOPs of the device; model FLOPs per real
(non-pad) token, forward + backward = 6 x (matmul parameters of the encoder layers + head transform
+ vocabulary projection) + 12 x layers x hidden x sequence length (attention scores); padding and
the SPLADE pooling are not counted, so the figure is conservative.

Without CUDA the script prints a ``SKIP`` line and exits 0. ``--dry-run`` only builds and prints
the config (any machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: _env, _procs
import _env  # noqa: E402  platform/ on sys.path, offline defaults

ROOT = _env.ROOT

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}
VOCAB_SIZE = 30522  # BERT's, when no tokenizer is at hand


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
    parser.add_argument("--dry-run", action="store_true", help="build and print the config only")
    args = parser.parse_args(argv)
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
    """``args.config`` with 1 worker, this run's paths and sizes, a restart after a checkpoint."""
    from spladeray import storage
    from spladeray.config import load_config

    steps = args.steps
    overrides = [
        "ray.address=null",  # a local cluster of this machine
        f"model.path={model_dir}",
        f"model.max_document_length={args.doc_length}",
        "train.num_workers=1",
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
    cfg = load_config(args.config, overrides=overrides)
    extra = []
    if cfg.train.max_failures == 0:
        extra.append("train.max_failures=1")  # the restart needs one
    if cfg.train.eval is not None and storage.exists(cfg.train.eval.beir_dir):
        extra.append("train.eval.corpus_limit=1000")
    elif cfg.train.eval is not None:
        print(f"note: {cfg.train.eval.beir_dir} not found; training evaluation off")
        extra.append("train.eval=null")
    return load_config(args.config, overrides=[*overrides, *extra]) if extra else cfg


def tokenizer_for_bench():
    """splade-tiny's WordPiece tokenizer from the offline assets, else a BERT-sized stand-in."""
    from transformers import AutoTokenizer, BertTokenizerFast

    from spladeray.paths import assets_root

    for root in (assets_root(), ROOT / "shared" / "assets"):
        if (root / "models" / "splade-tiny").is_dir():
            return AutoTokenizer.from_pretrained(root / "models" / "splade-tiny")
    from train import WORDS  # bench/train.py

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = special + WORDS
    vocab += [f"[unused{i}]" for i in range(VOCAB_SIZE - len(vocab))]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(vocab) + "\n")
        return BertTokenizerFast(vocab_file=str(Path(tmp) / "vocab.txt"))


def build_model(work: Path):
    """A randomly initialised BERT-base masked LM (12 x 768) saved with its tokenizer."""
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = tokenizer_for_bench()
    bert = BertConfig(vocab_size=len(tokenizer))
    model_dir = work / "bert-base-random"
    BertForMaskedLM(bert).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir, bert


def check_collectives(log_dir: Path) -> dict[str, int]:
    """Counts per op; raises when a collective got a tensor off the worker's CUDA device."""
    from spladeray.train.debug import read_collective_log

    records = read_collective_log(log_dir)
    wrong = [r for r in records if r["devices"] != [r["expected"]] or "cuda" not in r["expected"]]
    if not records or wrong:
        raise SystemExit(f"FAIL collectives: {len(records)} recorded, off-device: {wrong[:5]}")
    counts: dict[str, int] = {}
    for r in records:
        counts[r["op"]] = counts.get(r["op"], 0) + 1
    return counts


def encode_throughput(model_dir: Path, n_docs: int, doc_words: int) -> float:
    """Documents/s of the exported model on the GPU (BF16), after one warm-up batch."""
    import random

    import torch
    from train import WORDS  # bench/train.py

    from spladeray.model.loading import load_encoder

    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(doc_words)) for _ in range(n_docs)]
    encoder = load_encoder(str(model_dir), device="cuda", dtype="bfloat16", batch_size=128)
    encoder.encode_documents_csr(docs[:128])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    encoder.encode_documents_csr(docs)
    torch.cuda.synchronize()
    return n_docs / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    if args.dry_run:
        with tempfile.TemporaryDirectory(prefix="bench-train-gpu-") as tmp:
            work = Path(tmp)
            cfg = gpu_config(args, model_dir=work / "model", data_dir=work / "data", work=work)
            print(json.dumps(cfg.train.model_dump(mode="json"), indent=2))
        return
    if not torch.cuda.is_available():
        print("SKIP no CUDA device here; bench/train_gpu.py needs 1 GPU")
        return
    import ray

    from spladeray.data.synthetic import write_bench_data
    from spladeray.train import run_train

    steps = args.steps
    device_name = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="bench-train-gpu-") as tmp:
        work = Path(tmp)
        model_dir, bert = build_model(work)
        rows = args.batch_size * (3 * steps + 1)  # every step in one epoch
        data = write_bench_data(work / "data", rows, args.negatives)
        cfg = gpu_config(args, model_dir=model_dir, data_dir=data, work=work)
        tc = cfg.train
        print(
            f"config {args.config.name}: backend {tc.backend}, precision {tc.precision}, "
            f"1 of {tc.cpus_per_worker:g}-CPU workers, {tc.max_steps} steps, "
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
        collectives = check_collectives(work / "collectives")
        docs_per_s = encode_throughput(result.model_dir, args.encode_docs, args.doc_length)

    tokens_per_s = float(metrics["tokens_per_s"])
    print(f"device: {device_name}")
    print(f"resume: restarted after step {steps + 1}, resumed from the step-{steps} checkpoint")
    print(f"collectives on the worker's CUDA device: {collectives}")
    print(f"tokens/s (non-pad, queries + documents): {tokens_per_s:,.0f}")
    print(f"samples/s: {metrics['samples_per_s']:.1f}; steps/s: {metrics['steps_per_s']:.2f}")
    if "gpu_mem_gb" in metrics:
        print(f"peak GPU memory: {metrics['gpu_mem_gb']:.1f} GiB")
    print(f"encode (exported model, BF16): {docs_per_s:,.0f} docs/s at {args.doc_length} words")
    h, layers, vocab = bert.hidden_size, bert.num_hidden_layers, bert.vocab_size
    matmul_params = layers * (4 * h * h + 2 * h * bert.intermediate_size) + h * h + h * vocab
    flops_per_token = 6 * matmul_params + 12 * layers * h * args.doc_length
    achieved = flops_per_token * tokens_per_s
    peak = peak_flops(device_name)
    mfu = achieved / peak if peak else float("nan")
    print(f"model TFLOP/s: {achieved / 1e12:.1f}; MFU: {mfu:.1%} (peak {peak} FLOP/s)")
    result_line = {
        "name": "train_gpu",
        "metric": "model TFLOP/s (ratio = MFU)",
        "baseline": (peak or 0) / 1e12,
        "candidate": round(achieved / 1e12, 2),
        "ratio": round(mfu, 4),
        "baseline_name": f"peak BF16 of {device_name}",
        "candidate_name": "configs/train_8gpu.yaml on 1 GPU (NCCL, BF16)",
        "tokens_per_s": round(tokens_per_s),
        "encode_docs_per_s": round(docs_per_s, 1),
        "collectives": collectives,
        "resumed_at_step": steps,
    }
    print("RESULT " + json.dumps(result_line))


if __name__ == "__main__":
    main()
