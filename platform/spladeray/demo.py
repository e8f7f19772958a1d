"""The ``make demo`` path on the embedded default.

:func:`run_full_demo` chains prepare -> train -> export -> serve -> index -> search -> evaluate;
:func:`run_search_demo` is the quick path (index with the configured model, search, show why).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from spladeray import console, storage
from spladeray.config import Config
from spladeray.data.beir import Rejects, iter_corpus, load_qrels, load_queries
from spladeray.index import open_index
from spladeray.index import search as search_path
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
    index = open_index(cfg.index, tokenizer=encoder.tokenizer)
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
        # the one search path serving uses: the same query limits, search and explain
        query = search_path.limit(
            encoder.encode_queries([text])[0], text, max_terms=cfg.serve.max_query_terms
        )
        qvec = query.vector
        hits = [h.hit for h in search_path.search(index, name, qvec, cfg.demo.top_hits)]
        explained = search_path.explain(index, name, qvec, [h.id for h in hits])
        print(f"\nquery {qid}: {text}")
        tokens = ", ".join(f"{t} {w:.2f}" for t, w in top_tokens(qvec, cfg.demo.top_tokens))
        print(f"  query tokens: {tokens}")
        for rank, (hit, shared) in enumerate(zip(hits, explained, strict=True), 1):
            mark = "*" if hit.id in qrels[qid] else " "
            title = (hit.fields.get("title") or hit.fields.get("text", ""))[:90]
            print(f"  {rank}.{mark} {hit.id:>10}  {hit.score:7.2f}  {title}")
            matched = shared[: cfg.demo.top_tokens]
            print(
                "        matched: " + ", ".join(f"{c.token} {c.contribution:.2f}" for c in matched)
            )
    print("\n(* = relevant in qrels)")
    return {"indexed": result.indexed, "failed": len(result.failed), "seconds": seconds}


def _banner(title: str) -> None:
    console.begin_stage(title.split(":")[0].split(" ")[1])  # "1/5 prepare: ..." -> prepare
    print(f"\n=== {title} " + "=" * max(0, 72 - len(title)), flush=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_index_and_search(cfg: Config, model_path: str, *, batch: int = 64) -> dict:
    """Start the Serve app on ``model_path``, index the corpus through ``POST /index``, and
    print ``POST /search`` answers (with ``explain``) for a few dev queries, all over HTTP."""
    import httpx
    from ray import serve

    from spladeray.serving.app import build_app

    console.route_library_logger("ray.serve")  # Serve's driver-side INFO to the log file

    serve_cfg = cfg.model_copy(
        update={
            "model": cfg.model.model_copy(update={"path": model_path}),
            "index": cfg.index.model_copy(update={"name": f"{cfg.index.name}-finetuned"}),
        }
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    serve.run(build_app(serve_cfg), name="spladeray-demo", route_prefix="/")
    try:
        with httpx.Client(base_url=url, timeout=300) as http:
            deadline = time.monotonic() + 300
            while http.get("/healthz").status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError("the Serve app never became healthy")
                time.sleep(0.5)
            docs = [
                {"id": d["_id"], "title": d.get("title") or None, "text": d.get("text") or ""}
                for d in iter_corpus(cfg.data.beir_dir, cfg.data.corpus_limit)
            ]
            start = time.perf_counter()
            indexed, failed = 0, []
            from tqdm.auto import tqdm

            pages = range(0, len(docs), batch)  # a bar on a terminal (disable=None), else none
            for lo in tqdm(pages, desc="POST /index", unit="batch", disable=None):
                body = {"documents": docs[lo : lo + batch]}
                answer = http.post("/index", json=body)
                answer.raise_for_status()
                indexed += answer.json()["indexed"]
                failed += answer.json()["failed"]
            seconds = time.perf_counter() - start
            print(
                f"{url}/index: {indexed} documents indexed, {len(failed)} failed, "
                f"{indexed / max(seconds, 1e-9):.0f} docs/s over HTTP"
            )
            queries = load_queries(cfg.data.beir_dir)
            qrels = load_qrels(cfg.data.beir_dir, cfg.data.split)
            kept = {d["id"] for d in docs}
            shown = [q for q in qrels if q in queries and set(qrels[q]) & kept]
            for qid in shown[: cfg.demo.num_queries]:
                answer = http.post(
                    "/search",
                    json={"query": queries[qid], "size": cfg.demo.top_hits, "explain": True},
                )
                answer.raise_for_status()
                print(f"\nPOST /search  {queries[qid]}")
                for rank, hit in enumerate(answer.json()["hits"], 1):
                    mark = "*" if hit["id"] in qrels[qid] else " "
                    title = (hit.get("fields", {}).get("title") or "")[:80]
                    print(f"  {rank}.{mark} {hit['id']:>10}  {hit['score']:7.2f}  {title}")
                    explain = hit.get("explanation") or []
                    parts = [
                        f"{c['token']} {c['contribution']:.2f}"
                        for c in explain[: cfg.demo.top_tokens]
                    ]
                    print("        matched: " + ", ".join(parts))
            print("\n(* = relevant in qrels)")
    finally:
        serve.delete("spladeray-demo")
    return {"indexed": indexed, "failed": len(failed), "seconds": seconds}


def run_full_demo(cfg: Config) -> dict:
    """prepare -> train -> export -> serve -> index -> search -> evaluate, on the embedded index.

    Every stage is the library call its ``jobs/*.py`` entry point makes; the demo only chains
    them and prints a before/after table at the end.
    """
    from spladeray.config import ExportConfig

    if cfg.prepare is None or cfg.train is None or cfg.data is None:
        raise ValueError(f"{cfg.source}: the full demo needs data, prepare and train sections")
    timings: dict[str, float] = {}
    start = time.perf_counter()

    _banner("1/5 prepare: SciFact train -> BM25 negatives -> teacher scores (Ray Data)")
    from spladeray.data.pipeline import run_prepare

    t = time.perf_counter()
    run_prepare(cfg.prepare, ray_config=cfg.ray)
    timings["prepare"] = time.perf_counter() - t

    _banner("2/5 train: Ray Train TorchTrainer, DDP over CPU workers (gloo)")
    from spladeray.train import run_train

    t = time.perf_counter()
    trained = run_train(cfg)
    timings["train"] = time.perf_counter() - t
    if trained.model_dir is None:
        raise RuntimeError("training finished without an exported model")
    model_dir = str(trained.model_dir)
    print(f"trained model: {model_dir}")

    _banner("3/5 export: OpenSearch ML Commons zip (TorchScript + tokenizer.json)")
    from spladeray.model.export import export_from_config

    t = time.perf_counter()
    export_cfg = cfg.export or ExportConfig(
        output_dir=str(Path(cfg.train.output_dir).parent / "export")
    )
    exported = export_from_config(
        cfg.model_copy(
            update={"model": cfg.model.model_copy(update={"path": model_dir}), "export": export_cfg}
        )
    )
    timings["export"] = time.perf_counter() - t
    summary = exported.summary()
    enc = summary["encoder"]
    print(
        f"export: {enc['path']} ({summary['model_format']}, {enc['size_bytes'] / 2**20:.1f} MiB, "
        f"max |diff| vs the encoder {summary['max_abs_diff_vs_encoder']:.1e}, "
        f"{summary['export_seconds']:.1f} s); register body {enc['register_body']}"
    )

    _banner("4/5 serve: Ray Serve app; POST /index the corpus; POST /search")
    t = time.perf_counter()
    serve_index_and_search(cfg, model_dir)
    timings["serve+index+search"] = time.perf_counter() - t

    _banner(
        f"5/5 evaluate on {storage.basename(cfg.data.beir_dir)} {cfg.data.split}: before vs after"
    )
    from spladeray.eval import run_evaluation

    t = time.perf_counter()
    after = cfg.model.model_copy(update={"path": model_dir}).model_dump(mode="json")
    shipped, tuned = "splade-tiny (shipped)", "splade-tiny (fine-tuned)"
    systems = [
        {"name": "bm25", "kind": "bm25"},
        {"name": shipped, "kind": "sparse"},
        {"name": tuned, "kind": "sparse", "model": after},
        {"name": f"bm25 + {shipped} rrf", "kind": "hybrid", "fuse": ["bm25", shipped]},
        {"name": f"bm25 + {tuned} rrf", "kind": "hybrid", "fuse": ["bm25", tuned]},
        {
            "name": f"bm25 + {tuned} minmax",
            "kind": "hybrid",
            "fuse": ["bm25", tuned],
            "method": "score",
        },
    ]
    results = run_evaluation(cfg, systems=systems)
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    console.begin_stage(None)
    print(summary_lines(results.average, shipped, tuned))
    print("\nstage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return {"timings": timings, "paths": results.paths, "results": results}


def summary_lines(average: dict, shipped: str, tuned: str) -> str:
    """The demo's verdict: fine-tuned vs shipped (nDCG@10 at doc dims), and what fusing the
    fine-tuned model with BM25 adds (recall at 100 and nDCG@10), from the evaluation's results."""

    def get(name: str, key: str) -> float:
        result = average[name]
        if key == "dims":
            return (result.sparsity or {}).get("doc_dims_avg") or 0.0
        return result.metrics[key]

    lines = [
        "",
        f"fine-tuning: nDCG@10 {get(shipped, 'nDCG@10'):.3f} -> {get(tuned, 'nDCG@10'):.3f} "
        f"({get(tuned, 'nDCG@10') - get(shipped, 'nDCG@10'):+.3f}) at doc dims "
        f"{get(shipped, 'dims'):.0f} -> {get(tuned, 'dims'):.0f}",
    ]
    for method in ("rrf", "minmax"):
        fused = f"bm25 + {tuned} {method}"
        if fused not in average:
            continue
        lines.append(
            f"fusing with BM25 ({method}): R@100 {get(tuned, 'R@100'):.3f} -> "
            f"{get(fused, 'R@100'):.3f} ({get(fused, 'R@100') - get(tuned, 'R@100'):+.3f}), "
            f"nDCG@10 {get(tuned, 'nDCG@10'):.3f} -> {get(fused, 'nDCG@10'):.3f} "
            f"({get(fused, 'nDCG@10') - get(tuned, 'nDCG@10'):+.3f})"
        )
    return "\n".join(lines)
