"""SPLADE pooling without the ``[batch, seq, vocab]`` tensor.

SPLADE-max is ``w_j = max_i log(1 + relu(logit_ij))`` over the unmasked tokens ``i`` of a text.
Because ``x -> log(1 + relu(x))`` is monotone non-decreasing, ``max_i f(x_i) = f(max_i x_i)``
exactly (the same float is picked), so we max-pool the raw logits and apply the activation once
per text on ``[vocab]`` instead of on every token. The vocabulary projection runs only on real
(unpadded) tokens, a few hundred at a time, so peak memory is ``chunk_tokens x vocab`` floats
instead of ``batch x seq x vocab``. Sum pooling (SPLADE v1) cannot commute, so it applies the
activation per chunk and sums.

Gradients are the same as the naive form: max pooling routes the gradient to the arg-max token
either way, and the activation's derivative is evaluated at the same value.

Training (max pooling, linear decoder) goes through :class:`MaxPooledProjection`, which keeps
only the arg-max token of each (text, vocabulary) pair instead of every chunk's ``[chunk,
vocab]`` logits, and computes the backward pass sparsely: the activation's derivative is zero
wherever the pooled weight is zero, so only the active dimensions of each vector (a few hundred
of 30k) carry a gradient, and the two dense ``[tokens, vocab]`` backward matmuls become
``index_add`` over those entries. torch's autograd cannot know that sparsity, hence the custom
function (``python bench/train_step.py`` measures it against plain autograd).

Reduced precision (inference): with ``compute_dtype=torch.bfloat16`` (or ``float16`` on a GPU)
the projection multiplies bf16 tokens by a cached bf16 copy of the decoder weight (laid out
``[hidden, vocab]`` contiguous, the layout oneDNN's bf16 kernels run fastest on) into a bf16
buffer, and max-pools in bf16 (half the memory traffic of fp32). Max-pooling picks one of the
values, so it adds no rounding; the pooled ``[batch, vocab]`` logits are then cast to fp32, the
bias is added and the activation applied in fp32. The weights that come out are fp32 whose only
rounding is the bf16 logit (8 significant bits; OpenSearch's ``rank_features`` keeps 9).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Pooling = Literal["max", "sum"]
Activation = Literal["relu", "log1p_relu"]


def splade_activation(x: torch.Tensor, activation: Activation = "relu") -> torch.Tensor:
    """``log1p(relu(x))``; ``log1p_relu`` applies ``log1p`` twice (OpenSearch v3 models)."""
    y = torch.log1p(torch.relu(x))
    if activation == "log1p_relu":
        y = torch.log1p(y)
    return y


def projection_weight(linear: nn.Linear, dtype: torch.dtype) -> torch.Tensor:
    """``linear.weight.t()`` (``[hidden, vocab]``) in ``dtype`` for the inference projection.

    fp32 returns the transposed view (fp32 GEMM is fastest on it). A reduced dtype returns a
    contiguous copy, made once and kept on the module until the weight changes (its storage or
    its ``_version``, which moves with every in-place update such as an optimizer step).
    """
    weight = linear.weight
    if dtype == weight.dtype:
        return weight.t()
    key = (weight.data_ptr(), weight._version, dtype, weight.device)
    cached = linear.__dict__.get("_spladeray_projection")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, weight.detach().t().to(dtype).contiguous())
        linear.__dict__["_spladeray_projection"] = cached  # not a buffer: never saved
    return cached[1]


ROW_BUCKET = 16  # inference projections run on a multiple of this many rows (see pool_logits)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def max_rows_(x: torch.Tensor) -> torch.Tensor:
    """``x.amax(dim=0)`` for a scratch ``[rows, vocab]`` tensor, overwriting ``x``; returns ``x[0]``.

    A halving fold of elementwise ``maximum`` into the top half: ``log2(rows)`` vectorised passes
    over contiguous rows. torch's ``amax(dim=0)`` reduces across rows in a slower kernel: for
    ``[250, 30522]`` it measured 2.8 ms (bf16) / 3.0 ms (fp32) against 1.6 / 2.6 ms for the fold
    (1 thread here), and the pooling was 30% of a bf16 document batch. Max picks one of the
    values, so the result equals ``amax`` exactly. Inference only (it writes into ``x``).
    """
    n = x.shape[0]
    while n > 1:
        half = n // 2
        torch.maximum(x[:half], x[n - half : n], out=x[:half])
        n -= half  # odd n: the middle row stays in place and joins the next pass
    return x[0]


def _segments(lengths: list[int], chunk_tokens: int) -> list[tuple[int, int]]:
    """Group consecutive texts into runs of about ``chunk_tokens`` tokens: (first, end) pairs."""
    groups, start, total = [], 0, 0
    for i, n in enumerate(lengths):
        total += n
        if total >= chunk_tokens:
            groups.append((start, i + 1))
            start, total = i + 1, 0
    if start < len(lengths):
        groups.append((start, len(lengths)))
    return groups


def pool_logits(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    transform: nn.Module,
    decoder: nn.Module,
    *,
    pooling: Pooling = "max",
    activation: Activation = "relu",
    chunk_tokens: int = 512,
    compute_dtype: torch.dtype | None = None,
    lengths: list[int] | None = None,
    token_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """SPLADE vectors ``[batch, vocab]`` from backbone hidden states ``[batch, seq, hidden]``.

    Only unmasked positions are projected to the vocabulary; padding never costs a matmul.
    ``compute_dtype`` (inference only) runs the projection and max-pool in that dtype and
    returns fp32 weights (see the module docstring); ``None`` keeps the tokens' dtype.
    ``lengths`` (unmasked tokens per text) and ``token_index`` (flat positions of the unmasked
    tokens), when the caller has them from the host mask (training's collator), replace reading
    the mask back from the device: two host syncs fewer per call on a GPU.
    """
    if lengths is None:
        lengths = attention_mask.bool().sum(dim=1).tolist()
    if token_index is not None:
        selected = hidden.flatten(0, 1).index_select(0, token_index.to(hidden.device))
    else:
        selected = hidden[attention_mask.bool()]
    tokens = transform(selected)  # [sum(lengths), hidden], texts back to back
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    # For max pooling the decoder's bias is the same for every token of a text, so
    # ``max_i (x_i W^T + b) = max_i (x_i W^T) + b``: multiply without the bias (addmm would first
    # copy the bias into every [chunk, vocab] output, 17% of the time measured) and add it once.
    linear = decoder if isinstance(decoder, nn.Linear) else getattr(decoder, "linear", None)
    deferred_bias, scratch = None, False
    if pooling == "max" and isinstance(linear, nn.Linear) and not torch.is_grad_enabled():
        # Inference: one output buffer reused by every chunk. A fresh [chunk, vocab] tensor per
        # chunk is a fresh mmap whose page faults cost as much as a third of the matmul.
        if compute_dtype is not None:
            tokens = tokens.to(compute_dtype)
        weight_t, deferred_bias = projection_weight(linear, tokens.dtype), linear.bias
        longest = max(
            (offsets[e] - offsets[f] for f, e in _segments(lengths, chunk_tokens)), default=0
        )
        # Row counts are rounded up to ROW_BUCKET (zero rows appended once; a chunk's extra rows
        # are its neighbour's tokens or zeros, and their logits are never read): oneDNN caches
        # one primitive per matmul shape, and a new row count per chunk grew a replica's RSS by
        # 40% in 60 s of bench/load.py (ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 made it 3%, but then
        # every call builds its primitive); with buckets the cache holds a few dozen shapes.
        tokens = torch.cat([tokens, tokens.new_zeros(ROW_BUCKET - 1, tokens.shape[1])])
        buffer = tokens.new_empty((_round_up(longest, ROW_BUCKET), weight_t.shape[1]))
        scratch = True  # the buffer's rows may be overwritten by the pooling (max_rows_)

        def project(lo: int, hi: int) -> torch.Tensor:
            rows = _round_up(hi - lo, ROW_BUCKET)
            return torch.mm(tokens[lo : lo + rows], weight_t, out=buffer[:rows])[: hi - lo]
    elif pooling == "max" and isinstance(linear, nn.Linear):
        pooled = MaxPooledProjection.apply(tokens, linear.weight, lengths, chunk_tokens)
        if linear.bias is not None:
            pooled = pooled + linear.bias.to(pooled.dtype)
        return splade_activation(pooled, activation)
    else:

        def project(lo: int, hi: int) -> torch.Tensor:
            return decoder(tokens[lo:hi])

    rows: list[torch.Tensor] = []
    for first, end in _segments(lengths, chunk_tokens):
        logits = project(offsets[first], offsets[end])  # [chunk, vocab]
        if pooling == "sum":
            logits = splade_activation(logits.float() if compute_dtype else logits, activation)
        base = offsets[first]
        for i in range(first, end):
            segment = logits[offsets[i] - base : offsets[i + 1] - base]
            if segment.shape[0] == 0:  # an empty text: a zero vector, never NaN
                rows.append(logits.new_zeros(logits.shape[1]))
            elif pooling == "max" and scratch:
                rows.append(max_rows_(segment).clone())  # before the next chunk reuses it
            elif pooling == "max":
                rows.append(segment.amax(dim=0))
            else:
                rows.append(segment.sum(dim=0))
    pooled = torch.stack(rows)
    if compute_dtype is not None:
        pooled = pooled.float()
    if pooling == "max":
        if deferred_bias is not None:
            pooled = pooled + deferred_bias.to(pooled.dtype)
        pooled = splade_activation(pooled, activation)
    return pooled


def pool_full_logits(
    logits: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    pooling: Pooling = "max",
    activation: Activation = "relu",
) -> torch.Tensor:
    """The reference (naive) SPLADE pooling on full ``[batch, seq, vocab]`` logits.

    Used for architectures without a fast path and as the yardstick in tests.
    """
    weights = splade_activation(logits, activation) * attention_mask.unsqueeze(-1).to(logits.dtype)
    return weights.amax(dim=1) if pooling == "max" else weights.sum(dim=1)


def _index_add_fp32(like: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``zeros_like(like).index_add_(0, index, values)`` summed in fp32, returned in ``like``'s dtype."""
    out = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
    return out.index_add_(0, index, values).to(like.dtype)


DENSE_BACKWARD_DENSITY = 0.005
"""Above this fraction of active (token, vocabulary) entries, ``K / (tokens x vocab)``,
:class:`MaxPooledProjection` backpropagates with two dense matmuls instead of gathers and
``index_add``. ``python bench/pooling_backward.py`` (CPU, fp32, 16 texts x 64 tokens, hidden 128,
2026-12-07 on a loaded 2-core machine) put the crossover at about 0.005 (sparse/dense time 0.92
at 0.0047, 2.8 at 0.0156 = every dimension active, 0.32 at 0.0016); on a GPU the matmuls gain
more than the atomics, so the crossover there is lower still (not measured: no GPU here). A
trained SPLADE model (a few hundred of 30k dimensions per text) stays on the sparse path; a
plain masked LM (thousands) takes the dense one."""

SPARSE_BACKWARD_ENTRIES = 1 << 18
"""The sparse backward's gathers run on this many entries at a time (``[entries, hidden]`` fp32
temporaries: 768 MiB at hidden 768), never on all ``K`` at once."""


PADDED_MAX_DEVICES = ("cuda",)
"""Device types on which :class:`MaxPooledProjection`'s forward pools a chunk with one padded
``max`` instead of one ``max`` per text. Not on CPU: ``python bench/pooling_forward.py`` (2-core
CPU, 64 texts of up to 128 tokens, 2026-12-08) measured per-text / padded at 0.80-0.83 (hidden
128 fp32 and 768 bf16); the ``scatter_reduce`` pooling that #30 first put here was 1.3-1.5x the
padded one (2.2x the per-text one at hidden 128). Tests run the padded path on CPU by setting
this."""


def _padded_segments(lengths: list[int], chunk_tokens: int) -> list[tuple[int, int]]:
    """Consecutive texts in runs whose padded size (texts x longest) stays within
    ``chunk_tokens`` rows (a longer text alone): (first, end) pairs."""
    groups, start, longest = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and (i - start + 1) * max(longest, n) > chunk_tokens:
            groups.append((start, i))
            start, longest = i, 0
        longest = max(longest, n)
    if start < len(lengths):
        groups.append((start, len(lengths)))
    return groups


def _padded_rows(lengths: list[int], longest: int, device: torch.device) -> torch.Tensor:
    """``[sum(lengths)]`` long: the row of each token in a ``[texts x longest]`` padded layout,
    built on the host (no device sync), copied without blocking from pinned memory to a GPU."""
    rows = torch.cat([torch.arange(n) + i * longest for i, n in enumerate(lengths)])
    if device.type == "cuda":
        return rows.pin_memory().to(device, non_blocking=True)
    return rows.to(device)


class MaxPooledProjection(torch.autograd.Function):
    """``out[b, v] = max_{t in text b} tokens[t] . weight[v]`` (0 for an empty text), with a
    backward that uses the sparsity of the gradient when there is some.

    Forward projects about ``chunk_tokens`` tokens at a time without recording the graph and
    keeps the arg-max token of every ``(b, v)``. How it pools depends on the device
    (:data:`PADDED_MAX_DEVICES`): on a GPU the chunk's logits go into a ``[texts, longest,
    vocab]`` buffer padded with ``-inf`` and one ``max(dim=1)`` pools every text (a fixed number
    of kernels per chunk, none per text, no device-to-host sync: the lengths are host ints); on
    a CPU, where a kernel costs nothing to launch, one ``max(dim=0)`` per text reads the logits
    once instead of three times.
    Backward, for the ``K`` nonzero entries ``g[b, v]`` of the incoming gradient (the active
    dimensions, since the SPLADE activation's derivative vanishes elsewhere), with
    ``t = argmax[b, v]``::

        d tokens[t] += g[b, v] * weight[v]        d weight[v] += g[b, v] * tokens[t]

    which is the gradient of the naive ``amax`` over ``[tokens, vocab]`` logits (the arg-max
    token takes all of it). Two ways to compute it, chosen by ``K``:

    - sparse (``K <= DENSE_BACKWARD_DENSITY x tokens x vocab``, a trained SPLADE model: a few
      hundred active dimensions of 30k): gathers and ``index_add`` in ``O(K x hidden)``, in
      pieces of :data:`SPARSE_BACKWARD_ENTRIES` entries;
    - dense (a plain masked LM, whose vectors have thousands of active dimensions): the
      ``[tokens, vocab]`` matrix ``G`` with ``g[b, v]`` at row ``argmax[b, v]``, one chunk of
      texts at a time, and ``d tokens = G @ weight``, ``d weight += G^T @ tokens``: two matmuls
      in the tokens' dtype (bf16 under autocast), the cost of the forward's projection.

    The choice reads ``K`` on the host: the one device sync of the backward.
    """

    @staticmethod
    def forward(ctx, tokens, weight, lengths, chunk_tokens):  # noqa: D102
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        vocab = weight.shape[0]
        device = tokens.device
        pooled = tokens.new_zeros((len(lengths), vocab))
        argmax = torch.zeros((len(lengths), vocab), dtype=torch.long, device=device)
        weight_t = weight.t().to(tokens.dtype)
        padded_max = device.type in PADDED_MAX_DEVICES
        groups = _padded_segments if padded_max else _segments
        for first, end in groups(lengths, chunk_tokens):
            lo, hi = offsets[first], offsets[end]
            if hi == lo:
                continue  # only empty texts: zero vectors
            logits = torch.mm(tokens[lo:hi], weight_t)  # [chunk tokens, vocab]
            if padded_max:  # a fixed number of kernels per chunk
                longest = max(lengths[first:end])
                padded = logits.new_full(((end - first) * longest, vocab), float("-inf"))
                padded.index_copy_(0, _padded_rows(lengths[first:end], longest, device), logits)
                values, index = padded.view(end - first, longest, vocab).max(dim=1)
                starts = torch.tensor(offsets[first:end], dtype=torch.long).unsqueeze(1)
                pooled[first:end] = values
                argmax[first:end] = index + starts.to(device, non_blocking=True)
                continue
            for i in range(first, end):  # one max per text: a single pass over the logits
                if lengths[i]:
                    values, index = logits[offsets[i] - lo : offsets[i + 1] - lo].max(dim=0)
                    pooled[i] = values
                    argmax[i] = index + offsets[i]
        empty = [i for i, n in enumerate(lengths) if n == 0]
        if empty:
            pooled[empty] = 0
            argmax[empty] = 0
        ctx.save_for_backward(tokens, weight, argmax)
        ctx.empty = empty
        ctx.lengths, ctx.chunk_tokens = lengths, chunk_tokens
        return pooled

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        tokens, weight, argmax = ctx.saved_tensors
        if ctx.empty:
            grad = grad.clone()
            grad[ctx.empty] = 0
        need_tokens, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        k = int(torch.count_nonzero(grad))  # the backward's one host sync
        if k > DENSE_BACKWARD_DENSITY * tokens.shape[0] * weight.shape[0]:
            grad_tokens, grad_weight = _dense_backward(
                grad,
                tokens,
                weight,
                argmax,
                ctx.lengths,
                ctx.chunk_tokens,
                need_tokens=need_tokens,
                need_weight=need_weight,
            )
        else:
            grad_tokens, grad_weight = _sparse_backward(
                grad, tokens, weight, argmax, need_tokens=need_tokens, need_weight=need_weight
            )
        return grad_tokens, grad_weight, None, None


def _sparse_backward(grad, tokens, weight, argmax, *, need_tokens, need_weight):
    """Gathers and ``index_add`` over the nonzero entries of ``grad``, summed in fp32 (at
    least: fp64 inputs stay fp64)."""
    rows, cols = grad.nonzero(as_tuple=True)
    acc = torch.promote_types(torch.promote_types(tokens.dtype, weight.dtype), torch.float32)
    acc_tokens = torch.zeros(tokens.shape, dtype=acc, device=tokens.device)
    acc_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
    for lo in range(0, rows.shape[0], SPARSE_BACKWARD_ENTRIES):
        r, c = rows[lo : lo + SPARSE_BACKWARD_ENTRIES], cols[lo : lo + SPARSE_BACKWARD_ENTRIES]
        g = grad[r, c].unsqueeze(1).to(acc)
        token_rows = argmax[r, c]
        if need_tokens:
            acc_tokens.index_add_(0, token_rows, g * weight[c].to(acc))
        if need_weight:
            acc_weight.index_add_(0, c, g * tokens[token_rows].to(acc))
    return (
        acc_tokens.to(tokens.dtype) if need_tokens else None,
        acc_weight.to(weight.dtype) if need_weight else None,
    )


def _dense_backward(
    grad, tokens, weight, argmax, lengths, chunk_tokens, *, need_tokens, need_weight
):
    """``G @ weight`` and ``G^T @ tokens`` per chunk of texts, ``G`` the ``[chunk, vocab]``
    gradient of the logits (``grad[b, v]`` at the arg-max row, zero elsewhere)."""
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    dtype = tokens.dtype
    weight_c = weight.to(dtype)
    grad_tokens = torch.zeros_like(tokens) if need_tokens else None
    acc = torch.promote_types(weight.dtype, torch.float32)
    acc_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
    g = grad.to(dtype)
    for first, end in _segments(lengths, chunk_tokens):
        lo, hi = offsets[first], offsets[end]
        if hi == lo:
            continue
        dense = tokens.new_zeros((hi - lo, weight.shape[0]))
        # rows of different texts never collide; empty texts (grad 0) add nothing
        dense.scatter_add_(0, (argmax[first:end] - lo).clamp_(min=0), g[first:end])
        if need_tokens:
            torch.mm(dense, weight_c, out=grad_tokens[lo:hi])
        if need_weight:
            acc_weight += torch.mm(dense.t(), tokens[lo:hi]).to(acc)
    return grad_tokens, acc_weight.to(weight.dtype) if need_weight else None
