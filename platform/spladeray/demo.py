"""The ``make demo`` path on the embedded default: index SciFact, search, show why.

Each later stage (prepare, train, serve, evaluate) plugs in here when its config section is set.
"""

from __future__ import annotations

import logging
import time

from spladeray.config import Config
from spladeray.data.beir import Rejects, doc_text, iter_corpus, load_qrels, load_queries
from spladeray.index import open_index
from spladeray.index.build import index_documents
from spladeray.model import load_encoder_from_config
from spladeray.model.sparse import top_tokens

logger = logging.getLogger(__name__)


def run_search_demo(cfg: Config, model_path: str | None = None) -> dict:
    """Index the configured corpus with the configured (or given) model and print searches."""
    if cfg.data is None:
        raise ValueError(f"{cfg.source}: the demo needs a data section (a BEIR directory)")
    model_cfg = cfg.model.model_copy(update={"path": model_path}) if model_path else cfg.model
    encoder = load_encoder_from_config(model_cfg)
    index = open_index(cfg.index)
    name = cfg.index.name
    rejects = Rejects()
    start = time.perf_counter()
    index.delete(name)
    result = index_documents(
        encoder,
        index,
        name,
        iter_corpus(cfg.data.beir_dir, cfg.data.corpus_limit, rejects),
        batch_size=256,
        total=cfg.data.corpus_limit,
        allow_random_head=cfg.model.allow_random_head,
    )
    seconds = time.perf_counter() - start
    print(
        f"\nindexed {result.indexed} documents into {cfg.index.backend} index {name!r} "
        f"in {seconds:.1f}s ({result.indexed / max(seconds, 1e-9):.0f} docs/s); "
        f"failed {len(result.failed)}, rejected rows {len(rejects)}"
    )
    for failure in result.failed[:5]:
        print(f"  failed {failure.id}: {failure.error}")
    queries = load_queries(cfg.data.beir_dir)
    qrels = load_qrels(cfg.data.beir_dir, cfg.data.split)
    shown = [qid for qid in qrels if qid in queries][: cfg.demo.num_queries]
    for qid in shown:
        text = queries[qid]
        qvec = encoder.encode_queries([text])[0]
        hits = index.search(name, qvec, size=cfg.demo.top_hits)
        print(f"\nquery {qid}: {text}")
        tokens = ", ".join(f"{t} {w:.2f}" for t, w in top_tokens(qvec, cfg.demo.top_tokens))
        print(f"  query tokens: {tokens}")
        for rank, hit in enumerate(hits, 1):
            mark = "*" if hit.id in qrels[qid] else " "
            dvec = encoder.encode_documents([doc_text(hit.fields)])[0]
            shared = sorted(
                ((t, qvec[t] * dvec[t]) for t in qvec if t in dvec), key=lambda x: -x[1]
            )[: cfg.demo.top_tokens]
            title = (hit.fields.get("title") or hit.fields.get("text", ""))[:90]
            print(f"  {rank}.{mark} {hit.id:>10}  {hit.score:7.2f}  {title}")
            print("        matched: " + ", ".join(f"{t} {c:.2f}" for t, c in shared))
    print("\n(* = relevant in qrels)")
    return {"indexed": result.indexed, "failed": len(result.failed), "seconds": seconds}
