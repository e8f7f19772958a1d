"""Documents/s of ``SpladeEncoder.encode_documents`` vs sentence-transformers' ``SparseEncoder``.

Same model (splade-tiny), same 1,000 SciFact documents, same max length 256, same batch size,
in the same run: the two sides alternate over rounds of documents so both see the same machine
load. Peak memory is measured separately, each side in a fresh subprocess. Prints the speed
ratio, the max abs difference of the vectors and both peak memories, then a final
``RESULT {json}`` line for bench/run_all.py.

    python bench/encode.py [--docs 1000] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _texts(n: int) -> list[str]:
    from spladeray.data.beir import doc_text, iter_corpus
    from spladeray.paths import asset

    return [doc_text(d) for d in iter_corpus(asset("beir", "scifact"), limit=n)]


def _load(side: str, batch_size: int):
    from spladeray.paths import asset

    model = str(asset("models", "splade-tiny"))
    if side == "spladeray":
        from spladeray.model import SpladeEncoder

        enc = SpladeEncoder.from_pretrained(model, max_document_length=256, batch_size=batch_size)
        return lambda texts: enc.encode_documents_csr(texts)
    import scipy.sparse as sp
    from sentence_transformers import SparseEncoder

    st = SparseEncoder(model, device="cpu")
    st.max_seq_length = 256

    def encode(texts):
        dense = st.encode_document(texts, batch_size=batch_size, convert_to_tensor=True)
        return sp.csr_matrix(dense.to_dense().numpy())

    return encode


def _peak_memory_worker(side: str, n: int, batch_size: int) -> None:
    """Encode ``n`` documents in a fresh process and print its peak RSS in MB."""
    encode = _load(side, batch_size)
    encode(_texts(n))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--memory-worker", choices=["spladeray", "sentence-transformers"])
    args = parser.parse_args()
    if args.memory_worker:
        _peak_memory_worker(args.memory_worker, 200, args.batch_size)
        return

    # Peak memory first, while this process is still small: Linux carries a parent's peak RSS
    # over fork + exec into the child's ru_maxrss, so measuring later would report ours.
    peak = {}
    for side in ("sentence-transformers", "spladeray"):
        cmd = [sys.executable, __file__, "--memory-worker", side]
        cmd += ["--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        peak[side] = float(out.strip().splitlines()[-1])

    import numpy as np
    import scipy.sparse as sp

    texts = _texts(args.docs)
    sides = {s: _load(s, args.batch_size) for s in ("sentence-transformers", "spladeray")}
    for encode in sides.values():
        encode(texts[:16])  # warm-up
    # Interleave the two sides in rounds (alternating who goes first) so that both see the same
    # machine load: on a shared 2-core box, back-to-back runs measure the neighbours, not us.
    seconds = dict.fromkeys(sides, 0.0)
    outputs: dict[str, list] = {s: [] for s in sides}
    chunk = -(-len(texts) // args.rounds)
    for r, lo in enumerate(range(0, len(texts), chunk)):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for side in order:
            start = time.perf_counter()
            outputs[side].append(sides[side](texts[lo : lo + chunk]))
            seconds[side] += time.perf_counter() - start
    ours_m = sp.vstack(outputs["spladeray"]).toarray()
    theirs_m = sp.vstack(outputs["sentence-transformers"]).toarray()
    diff = float(np.abs(ours_m - theirs_m).max())
    active = float((ours_m > 0).sum(axis=1).mean())
    rate = {s: len(texts) / seconds[s] for s in sides}
    ratio = rate["spladeray"] / rate["sentence-transformers"]
    print(
        f"documents: {len(texts)}, max length 256, batch size {args.batch_size}, splade-tiny, CPU"
    )
    print(f"{'':24}{'docs/s':>10}{'seconds':>10}{'peak RSS MB':>14}")
    for side in sides:
        print(f"{side:24}{rate[side]:10.1f}{seconds[side]:10.1f}{peak[side]:14.0f}")
    print(f"speed ratio spladeray / sentence-transformers: {ratio:.2f}x")
    print(
        f"peak memory ratio (200 docs, fresh process): {peak['spladeray'] / peak['sentence-transformers']:.2f}x"
    )
    print(f"max abs difference of the vectors: {diff:.2e}")
    print(f"average active dims per document: {active:.0f}")
    result = {
        "name": "encode",
        "metric": "docs/s",
        "baseline": round(rate["sentence-transformers"], 2),
        "candidate": round(rate["spladeray"], 2),
        "ratio": round(ratio, 3),
        "baseline_name": "sentence-transformers SparseEncoder.encode_document",
        "candidate_name": "SpladeEncoder.encode_documents",
        "max_abs_diff": diff,
        "peak_rss_mb": {"baseline": peak["sentence-transformers"], "candidate": peak["spladeray"]},
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
