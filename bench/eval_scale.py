"""Evaluation at growing corpus size: the driver's peak RSS and the time per query batch.

    .venv/bin/python bench/eval_scale.py [--sizes 20000 200000] [--actors 2]

Each (size, path) runs in its own subprocess (a fresh driver, a fresh local Ray cluster), on a
synthetic BEIR corpus (8 words per document from a 2,000-word vocabulary) and a tiny random
masked-LM built here (1 layer, hidden 32, a 2,005-entry WordPiece vocabulary, ``top_k: 32``),
so that encoding is cheap and what is measured is the evaluation's own memory:

- ``streamed`` (the candidate): an index-backed sparse system on the actor pool
  (``evaluate.distributed: true``): the encoder actors read the corpus, encode it and write it
  into the embedded index; searches run in an actor that opens the index; the driver gets one
  summary per batch;
- ``in-memory`` (the baseline, measured in the same run): the exact in-memory system on the
  same actor pool, which gathers every vector in the driver and holds the corpus there.

It prints the driver's peak RSS (``ru_maxrss`` of the driver process only), the indexing time,
the time per batch of 100 queries (encode + search), their log-log slopes over the sizes, the
ratio of the streamed driver's peak RSS at the largest size to the smallest (target <= 1.3),
and ``RESULT`` lines for ``bench/run_all.py``: baseline = the in-memory driver at the largest
size, candidate = the streamed driver (ratio > 1: the streamed driver holds less).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: _env
import _env  # noqa: E402  platform/ on sys.path, offline defaults

ROOT = _env.ROOT
VOCAB_WORDS = 2000
WORDS_PER_DOC = 8
QUERIES = 100


def words() -> list[str]:
    """Pronounceable made-up words, one WordPiece token each (in the vocabulary)."""
    rng = random.Random(0)
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"
    out: set[str] = set()
    while len(out) < VOCAB_WORDS:
        out.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(3)))
    return sorted(out)


def build_model(out: Path) -> Path:
    """A random tiny BERT masked-LM with its own small WordPiece vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words()]
    wordpiece = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tokenizer = BertTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertForMaskedLM(config).save_pretrained(out)
    return out


def write_corpus(root: Path, n: int) -> Path:
    """A BEIR directory of ``n`` synthetic documents, written line by line."""
    rng = random.Random(n)
    vocab = words()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w") as fh:
        for i in range(n):
            text = " ".join(rng.choices(vocab, k=WORDS_PER_DOC))
            fh.write(json.dumps({"_id": f"d{i}", "title": "", "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as fh:
        for j in range(QUERIES):
            fh.write(json.dumps({"_id": f"q{j}", "text": " ".join(rng.sample(vocab, 3))}) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    rows = [f"q{j}\td{rng.randrange(n)}\t1" for j in range(QUERIES)]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows))
    return root


# ----------------------------------------------------------------------------- one driver
def child(beir: str, model: str, mode: str, actors: int, work: str) -> dict:
    """One evaluation in this process (the driver); returns its figures."""
    import ray

    from spladeray.config import (
        EvalDatasetConfig,
        EvalSparseConfig,
        EvaluateConfig,
        IndexConfig,
        ModelConfig,
    )
    from spladeray.eval.runner import Dataset, build_retriever

    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")  # a busy machine starts slowly
    ray.init(num_cpus=actors + 1, include_dashboard=False, log_to_driver=False)
    model_cfg = ModelConfig(
        path=model, device="cpu", max_document_length=16, max_query_length=8, top_k=32
    )
    index = IndexConfig(backend="local", path=work) if mode == "streamed" else None
    system = EvalSparseConfig(name=mode, index=index)
    pool = EvaluateConfig(distributed=True, num_actors=actors, actor_batch_size=512)
    data = Dataset.load(EvalDatasetConfig(beir_dir=beir, split="test"))
    retriever = build_retriever(system, default_model=model_cfg, distributed=pool)
    start = time.perf_counter()
    if mode == "streamed":
        retriever.index_corpus(data.corpus)
    else:
        retriever.index(*data.corpus.load())
    index_s = time.perf_counter() - start
    texts = list(data.queries.values())
    retriever.search(texts[:10], k=10)  # warm-up: the searcher actor opens the index
    batches = []
    for _ in range(3):
        t0 = time.perf_counter()
        retriever.search(texts, k=100)
        batches.append(time.perf_counter() - t0)
    retriever.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    ray.shutdown()
    return {
        "docs": data.num_docs,
        "mode": mode,
        "driver_peak_rss_mib": peak / 2**20,
        "index_s": index_s,
        "batch_s": sorted(batches)[1],
    }


def run_child(beir: Path, model: Path, mode: str, actors: int, work: Path, timeout: float):
    cmd = [sys.executable, __file__, "--child", str(beir), str(model), mode, str(actors)]
    cmd.append(str(work))
    env = dict(os.environ)  # Ray's workers import this checkout, as the driver does
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "platform")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("CHILD "):
            return json.loads(line[6:])
    sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
    raise RuntimeError(f"{mode} at {beir.name} failed (exit {out.returncode})")


def slope(xs: list[float], ys: list[float]) -> float:
    return (math.log(ys[-1]) - math.log(ys[0])) / (math.log(xs[-1]) - math.log(xs[0]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        beir, model, mode, actors, work = args.child
        print("CHILD " + json.dumps(child(beir, model, mode, int(actors), work)), flush=True)
        return 0
    sizes = sorted(args.sizes)
    with tempfile.TemporaryDirectory(prefix="eval-scale-") as tmp:
        tmp = Path(tmp)
        model = build_model(tmp / "model")
        rows = {}
        for n in sizes:
            beir = write_corpus(tmp / f"beir-{n}", n)
            for mode in ("streamed", "in-memory"):
                if mode == "in-memory" and n != sizes[-1] and n != sizes[0]:
                    continue
                rows[(n, mode)] = r = run_child(
                    beir, model, mode, args.actors, tmp / f"index-{n}", args.timeout
                )
                print(
                    f"{n:>9,} docs  {mode:<10} driver peak RSS {r['driver_peak_rss_mib']:7.0f} MiB"
                    f"  index {r['index_s']:7.1f} s  batch of {QUERIES} queries "
                    f"{r['batch_s'] * 1000:7.1f} ms",
                    flush=True,
                )
            (tmp / f"beir-{n}" / "corpus.jsonl").unlink()
    lo, hi = sizes[0], sizes[-1]
    streamed = [rows[(n, "streamed")] for n in sizes]
    rss = [r["driver_peak_rss_mib"] for r in streamed]
    rss_ratio = rss[-1] / rss[0]
    print(f"\nstreamed driver peak RSS {hi:,} / {lo:,} docs: {rss_ratio:.2f}x (target <= 1.3)")
    print(
        f"log-log slopes {lo:,} -> {hi:,}: driver RSS {slope(sizes, rss):.2f}, index time "
        f"{slope(sizes, [r['index_s'] for r in streamed]):.2f}, query batch "
        f"{slope(sizes, [r['batch_s'] for r in streamed]):.2f}"
    )
    base_rss = [rows[(n, "in-memory")]["driver_peak_rss_mib"] for n in (lo, hi)]
    print(f"in-memory driver peak RSS {hi:,} / {lo:,} docs: {base_rss[1] / base_rss[0]:.2f}x")
    baseline, candidate = rows[(hi, "in-memory")], rows[(hi, "streamed")]
    result = {
        "name": f"eval_scale driver peak RSS at {hi:,} docs",
        "metric": "MiB",
        "baseline": round(baseline["driver_peak_rss_mib"], 1),
        "candidate": round(candidate["driver_peak_rss_mib"], 1),
        "ratio": round(baseline["driver_peak_rss_mib"] / candidate["driver_peak_rss_mib"], 3),
        "baseline_name": "in-memory exact system (vectors gathered in the driver)",
        "candidate_name": "index-backed system streamed by the actor pool",
        "streamed_rss_ratio_hi_vs_lo": round(rss_ratio, 3),
        "sizes": sizes,
    }
    print("RESULT " + json.dumps(result))
    batch = {
        "name": f"eval_scale time per batch of {QUERIES} queries, {lo:,} -> {hi:,} docs",
        "metric": "ms",
        "baseline": round(streamed[0]["batch_s"] * 1000, 1),
        "candidate": round(streamed[-1]["batch_s"] * 1000, 1),
        "ratio": round(streamed[0]["batch_s"] / streamed[-1]["batch_s"], 3),
        "baseline_name": f"streamed, {lo:,} docs",
        "candidate_name": f"streamed, {hi:,} docs",
    }
    print("RESULT " + json.dumps(batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
