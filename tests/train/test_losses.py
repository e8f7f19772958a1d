"""Losses against hand-computed values, the FLOPS schedule, and the cross-rank behaviour with 2
gloo processes (in-batch negatives gathered with gradient; FLOPS independent of world size)."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch

from spladeray.train.losses import (
    FlopsRegularizer,
    InfoNCELoss,
    KLDistillationLoss,
    MarginMSELoss,
    SparseBatch,
)
from spladeray.train.schedules import lr_multiplier, quadratic_warmup

Q = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])
P = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
N = torch.tensor([[[0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0]]])
T = torch.tensor([[3.0, 1.0], [2.0, 2.5]])


def batch() -> SparseBatch:
    return SparseBatch(queries=Q, positives=P, negatives=N, teacher={"ensemble": T})


def test_candidate_scores_by_hand():
    # q0.p0 = 1, q0.n0 = 2; q1.p1 = 2, q1.n1 = 1
    assert batch().candidate_scores().tolist() == [[1.0, 2.0], [2.0, 1.0]]


def test_infonce_by_hand():
    # documents: p0, p1, n0, n1. q0 scores: 1, 0, 2, 3 (label 0); q1: 1, 2, 1, 1 (label 1)
    l0 = -math.log(math.exp(1) / (math.exp(1) + 1 + math.exp(2) + math.exp(3)))
    l1 = -math.log(math.exp(2) / (3 * math.exp(1) + math.exp(2)))
    assert InfoNCELoss()(batch()).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # temperature 2 halves every logit
    l0 = -math.log(math.exp(0.5) / (math.exp(0.5) + 1 + math.exp(1) + math.exp(1.5)))
    l1 = -math.log(math.exp(1) / (3 * math.exp(0.5) + math.exp(1)))
    assert InfoNCELoss(2.0)(batch()).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_infonce_masks_an_in_batch_positive_of_the_query():
    """Document p1 is also a positive of q0 (two rows of one query): with the keys it leaves
    q0's denominator, so it does not count as q0's negative; q1 is unchanged."""
    keys = torch.tensor([10, 11, 20, 21])  # p0, p1, n0, n1
    positives = torch.tensor([[10, 11], [11, 0]])  # q0: p0 and p1; q1: p1 (0 = padding)
    masked = SparseBatch(
        queries=Q, positives=P, negatives=N, document_keys=keys, query_positive_keys=positives
    )
    # q0 scores: 1, 0 (p1, masked), 2, 3; q1: 1, 2, 1, 1 (label 1)
    l0 = -math.log(math.exp(1) / (math.exp(1) + math.exp(2) + math.exp(3)))
    l1 = -math.log(math.exp(2) / (3 * math.exp(1) + math.exp(2)))
    assert InfoNCELoss()(masked).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # and q0 sends it no gradient: dL/dp1 is q1's term alone, (1/2) d l1 / d p1
    p = P.clone().requires_grad_(True)
    full = SparseBatch(
        queries=Q, positives=p, negatives=N, document_keys=keys, query_positive_keys=positives
    )
    (grad_masked,) = torch.autograd.grad(InfoNCELoss()(full), p)
    docs = torch.cat([p, N.flatten(0, 1)])
    l1_term = torch.nn.functional.cross_entropy(Q[1:] @ docs.T, torch.tensor([1])) / 2
    (grad_q1,) = torch.autograd.grad(l1_term, p)
    assert torch.allclose(grad_masked[1], grad_q1[1], atol=1e-6)


def test_mask_keeps_the_labelled_positive_and_ignores_padding():
    from spladeray.train.losses.infonce import false_negative_mask

    keys = torch.tensor([10, 11, 20, 21])
    positives = torch.tensor([[10, 11], [11, 0]])
    mask = false_negative_mask(keys, positives, torch.tensor([0, 1]))
    assert mask.tolist() == [[False, True, False, False], [False, False, False, False]]


def test_kl_teacher_temperature_scales_the_teacher_only():
    # T = 1 for the student, T_t = 2 for the teacher == the teacher's scores halved at T = 1
    halved = SparseBatch(queries=Q, positives=P, negatives=N, teacher={"ensemble": T / 2})
    expected = KLDistillationLoss("ensemble")(halved).item()
    assert KLDistillationLoss("ensemble", 1.0, 2.0)(batch()).item() == pytest.approx(expected)


def test_margin_mse_by_hand():
    # student margins: 1-2 = -1, 2-1 = 1; teacher margins: 2, -0.5
    expected = ((-1 - 2) ** 2 + (1 + 0.5) ** 2) / 2
    assert MarginMSELoss("ensemble")(batch()).item() == pytest.approx(expected)


def test_kl_by_hand():
    def softmax(xs):
        e = [math.exp(x) for x in xs]
        return [v / sum(e) for v in e]

    total = 0.0
    for s, t in (([1.0, 2.0], [3.0, 1.0]), ([2.0, 1.0], [2.0, 2.5])):
        ps, pt = softmax(s), softmax(t)
        total += sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True))
    assert KLDistillationLoss("ensemble")(batch()).item() == pytest.approx(total / 2, rel=1e-6)


def test_flops_and_l1_by_hand():
    w = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    # column means 2, 0, 1 -> 4 + 0 + 1
    assert FlopsRegularizer("flops")(w).item() == pytest.approx(5.0)
    # per-vector L1 3 and 3 -> mean 3
    assert FlopsRegularizer("l1")(w).item() == pytest.approx(3.0)
    # IDF-aware: idf (1, 1, 0.5) -> column means 2, 0, 0.5
    idf = torch.tensor([1.0, 1.0, 0.5])
    assert FlopsRegularizer("flops")(w, idf=idf).item() == pytest.approx(4.25)


def test_flops_quadratic_warmup_schedule():
    lam, big_t = 0.08, 100
    assert quadratic_warmup(lam, 0, big_t) == 0.0
    assert quadratic_warmup(lam, big_t // 2, big_t) == pytest.approx(lam / 4)
    assert quadratic_warmup(lam, big_t, big_t) == pytest.approx(lam)
    assert quadratic_warmup(lam, 2 * big_t, big_t) == pytest.approx(lam)
    assert quadratic_warmup(lam, 5, 0) == lam


def test_lr_schedule_warmup_then_linear_decay():
    fn = lr_multiplier(warmup=4, total=10)
    assert [round(fn(s), 3) for s in (0, 3, 4, 7, 10)] == [0.25, 1.0, 1.0, 0.5, 0.0]
    assert lr_multiplier(0, 10, "constant")(9) == 1.0


# ------------------------------------------------------------------ two gloo processes
B, V, NNEG = 2, 6, 1


def _full_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(2 * B, V, generator=g)
    p = torch.rand(2 * B, V, generator=g)
    n = torch.rand(2 * B, NNEG, V, generator=g)
    return q, p, n


def _losses(q, p, n):
    sb = SparseBatch(queries=q, positives=p, negatives=n)
    docs = torch.cat([p, n.flatten(0, 1)])
    return InfoNCELoss()(sb), FlopsRegularizer("flops")(docs), FlopsRegularizer("l1")(q)


def _keys(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s document keys (positives, then negatives) and query positives: query 0 of
    rank 0 also has rank 1's first positive (key 101) as a positive, across the gather (0 pads:
    no document has key 0)."""
    docs = torch.tensor(
        [1 + 100 * rank + i for i in range(B)] + [1000 + 100 * rank + j for j in range(B * NNEG)]
    )
    positives = torch.tensor([[1 + 100 * rank + i, 0] for i in range(B)])
    if rank == 0:
        positives[0, 1] = 101
    return docs, positives


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    q, p, n = _full_batch()
    sl = slice(rank * B, (rank + 1) * B)
    q, p, n = (x[sl].clone().requires_grad_(True) for x in (q, p, n))
    nce, flops, l1 = _losses(q, p, n)
    (nce + flops + l1).backward()
    docs_keys, positive_keys = _keys(rank)
    masked = SparseBatch(
        queries=q, positives=p, negatives=n, document_keys=docs_keys,
        query_positive_keys=positive_keys,
    )  # fmt: skip
    torch.save(
        {
            "nce_masked": InfoNCELoss()(masked).item(),
            "nce": nce.item(),
            "flops": flops.item(),
            "l1": l1.item(),
            "gq": q.grad,
            "gp": p.grad,
            "gn": n.grad,
        },
        Path(out) / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
def test_two_gloo_ranks_match_one_process_on_the_full_batch(tmp_path):
    """Rank r holds half of the batch. The regularisers equal the 1-process value on the whole
    batch (so lambdas keep their meaning at any world size); the mean of the ranks' InfoNCE
    equals the 1-process InfoNCE whose candidates are all documents of both ranks; and each
    rank's gradient divided by the world size (DDP averaging) equals the 1-process gradient."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    q, p, n = (x.clone().requires_grad_(True) for x in _full_batch())
    # one process: the candidate set is ordered rank by rank, as after the gather
    nce_parts = []
    for r in range(2):
        sl = slice(r * B, (r + 1) * B)
        docs_all = torch.cat(
            [torch.cat([p[s], n[s].flatten(0, 1)]) for s in (slice(0, B), slice(B, 2 * B))]
        )
        logits = q[sl] @ docs_all.T
        labels = torch.arange(B) + r * B * (1 + NNEG)
        nce_parts.append(torch.nn.functional.cross_entropy(logits, labels))
    nce = sum(nce_parts) / 2
    _, flops, l1 = _losses(q, p, n)
    (nce + flops + l1).backward()

    for r in ranks:
        assert r["flops"] == pytest.approx(flops.item(), rel=1e-6)
        assert r["l1"] == pytest.approx(l1.item(), rel=1e-6)
    assert (ranks[0]["nce"] + ranks[1]["nce"]) / 2 == pytest.approx(nce.item(), rel=1e-6)
    # the in-batch mask works across ranks: rank 1's first positive (global column 0 of rank 1's
    # block) leaves the denominator of rank 0's query 0 only
    with torch.no_grad():
        docs_all = torch.cat(
            [torch.cat([p[s], n[s].flatten(0, 1)]) for s in (slice(0, B), slice(B, 2 * B))]
        )
        logits = q[:B] @ docs_all.T
        logits[0, B * (1 + NNEG)] = float("-inf")
        want = torch.nn.functional.cross_entropy(logits, torch.arange(B))
    assert ranks[0]["nce_masked"] == pytest.approx(want.item(), rel=1e-6)
    assert ranks[1]["nce_masked"] == pytest.approx(nce_parts[1].item(), rel=1e-6)
    for r, rk in enumerate(ranks):
        sl = slice(r * B, (r + 1) * B)
        torch.testing.assert_close(rk["gq"] / 2, q.grad[sl])
        torch.testing.assert_close(rk["gp"] / 2, p.grad[sl])
        torch.testing.assert_close(rk["gn"] / 2, n.grad[sl])
