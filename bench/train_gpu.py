"""GPU check: the real TorchTrainer on 1 GPU, BF16 autocast, a BERT-base-sized masked LM built
from config (no hub), on synthetic prepared data; prints tokens/s and model FLOPs utilisation.

    python bench/train_gpu.py [--steps 30] [--batch-size 32] [--negatives 7] [--doc-length 256]

MFU = achieved model FLOPs / peak dense BF16 FLOPs of the device. Model FLOPs per real (non-pad)
token, forward + backward = 6 x (matmul parameters of the encoder layers + head transform +
vocabulary projection) + 12 x layers x hidden x sequence length (attention scores). Padding and
the SPLADE pooling are not counted, so the figure is conservative. Without a GPU the script says
so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def peak_flops(name: str) -> float | None:
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--negatives", type=int, default=7)
    parser.add_argument("--doc-length", type=int, default=256)
    parser.add_argument(
        "--tokenizer", default=str(ROOT.parent / "shared/assets/models/splade-tiny"), type=Path
    )
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("SKIP no CUDA device here; bench/train_gpu.py needs 1 GPU")
        return
    import ray
    from train import write_data  # bench/train.py
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from spladeray.config import parse_config
    from spladeray.train.trainer import build_trainer

    device_name = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="bench-train-gpu-") as tmp:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        bert = BertConfig(vocab_size=len(tokenizer))  # BERT-base: 12 x 768, 110M parameters
        model_dir = Path(tmp) / "bert-base-random"
        BertForMaskedLM(bert).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        data = write_data(Path(tmp) / "data", rows=4 * args.batch_size * 8, n_neg=args.negatives)
        cfg = parse_config(
            {
                "run_name": "bench_train_gpu",
                "model": {"path": str(model_dir)},
                "train": {
                    "output_dir": str(Path(tmp) / "out"),
                    "data_dir": str(data),
                    "num_workers": 1,
                    "use_gpu": True,
                    "cpus_per_worker": 4,
                    "precision": "bf16",
                    "batch_size": args.batch_size,
                    "num_negatives": args.negatives,
                    "max_steps": 2 * args.steps,
                    "max_document_length": args.doc_length,
                    "log_every_steps": args.steps,
                    "tensorboard": False,
                    "checkpoint": {"every_steps": 100 * args.steps},
                    "losses": [{"name": "infonce"}],
                },
            }
        )
        ray.init(include_dashboard=False, log_to_driver=False)
        try:
            metrics = build_trainer(cfg).fit().metrics
        finally:
            ray.shutdown()
    h, layers, vocab = bert.hidden_size, bert.num_hidden_layers, bert.vocab_size
    matmul_params = layers * (4 * h * h + 2 * h * bert.intermediate_size) + h * h + h * vocab
    flops_per_token = 6 * matmul_params + 12 * layers * h * args.doc_length
    tokens_per_s = float(metrics["tokens_per_s"])
    achieved = flops_per_token * tokens_per_s
    peak = peak_flops(device_name)
    mfu = achieved / peak if peak else float("nan")
    print(f"device: {device_name}")
    print(f"tokens/s (non-pad, queries + documents): {tokens_per_s:,.0f}")
    print(f"samples/s: {metrics['samples_per_s']:.1f}; steps/s: {metrics['steps_per_s']:.2f}")
    print(f"model TFLOP/s: {achieved / 1e12:.1f}; MFU: {mfu:.1%} (peak {peak} FLOP/s)")
    if "gpu_mem_gb" in metrics:
        print(f"peak GPU memory: {metrics['gpu_mem_gb']:.1f} GiB")
    print(
        "RESULT "
        + json.dumps(
            {
                "name": "train_gpu",
                "metric": "model TFLOP/s (ratio = MFU)",
                "baseline": (peak or 0) / 1e12,
                "candidate": round(achieved / 1e12, 2),
                "ratio": round(mfu, 4),
                "baseline_name": f"peak BF16 of {device_name}",
                "candidate_name": "TorchTrainer 1 GPU BF16, BERT-base SPLADE",
                "tokens_per_s": round(tokens_per_s),
            }
        )
    )


if __name__ == "__main__":
    main()
