"""MaxPooledProjection (the training path of SPLADE-max): values and gradients equal the naive
``amax`` over full ``[tokens, vocab]`` logits, with chunking, an empty text and a tied decoder."""

from __future__ import annotations

import pytest
import torch

from spladeray.model import pooling
from spladeray.model.encoder import SpladeEncoder
from spladeray.model.pooling import MaxPooledProjection, max_rows_, pool_full_logits, pool_logits

from helpers import build_tiny_mlm, no_special, tiny_tokenizer


def _naive(tokens, weight, bias, lengths):
    """Reference: full logits per text, masked, activation, amax (the textbook SPLADE-max)."""
    rows, start = [], 0
    for n in lengths:
        logits = tokens[start : start + n] @ weight.t() + bias
        start += n
        if n == 0:
            rows.append(torch.zeros(weight.shape[0], dtype=tokens.dtype))
        else:
            rows.append(torch.log1p(torch.relu(logits)).amax(dim=0))
    return torch.stack(rows)


@pytest.fixture(params=["per_text", "padded"])
def max_strategy(request, monkeypatch):
    """Both forward poolings on CPU: per text (CPU's) and padded (a GPU's, by
    ``PADDED_MAX_DEVICES``), so the GPU's path is exercised here before a GPU runs it."""
    if request.param == "padded":
        monkeypatch.setattr(pooling, "PADDED_MAX_DEVICES", ("cuda", "cpu"))
    return request.param


@pytest.mark.parametrize("chunk_tokens", [3, 512])
def test_values_and_gradients_equal_naive_amax(chunk_tokens, max_strategy):
    torch.manual_seed(0)
    lengths = [5, 0, 7, 1, 4]
    vocab, hidden = 50, 8
    tokens = torch.randn(sum(lengths), hidden, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, hidden, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(vocab, dtype=torch.float64) * 0.1 - 4.0  # most dimensions inactive
    upstream = torch.randn(len(lengths), vocab, dtype=torch.float64)

    pooled = MaxPooledProjection.apply(tokens, weight, lengths, chunk_tokens)
    fast = torch.log1p(torch.relu(pooled + bias))
    fast[1] = 0.0  # an empty text is a zero vector (pool_logits does the same)
    (fast * upstream).sum().backward()
    fast_grads = tokens.grad.clone(), weight.grad.clone()
    tokens.grad = weight.grad = None

    naive = _naive(tokens, weight, bias, lengths)
    (naive * upstream).sum().backward()
    assert torch.allclose(fast.detach(), naive.detach(), atol=1e-12)
    assert torch.allclose(fast_grads[0], tokens.grad, atol=1e-10)
    assert torch.allclose(fast_grads[1], weight.grad, atol=1e-10)
    # dimensions inactive in every text send no gradient at all (the sparse backward)
    inactive = (naive == 0).all(dim=0)
    assert 0 < int(inactive.sum()) < vocab
    assert not fast_grads[1][inactive].any()


def test_gradcheck(max_strategy):
    torch.manual_seed(1)
    lengths = [3, 2]
    tokens = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t, w: MaxPooledProjection.apply(t, w, lengths, 2), (tokens, weight)
    )


def test_padded_segments_bound_the_padded_rows():
    assert pooling._padded_segments([4, 4, 4, 1, 9, 2], 8) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert pooling._padded_segments([], 8) == []
    assert pooling._padded_rows([2, 0, 3], 3, torch.device("cpu")).tolist() == [0, 1, 6, 7, 8]


def test_encoder_training_gradients_equal_full_logits(splade_tiny, tmp_path):
    """The whole encoder in training mode (tied decoder/embedding weights): every parameter's
    gradient equals the one from naive pooling over the model's full MLM logits."""
    path = build_tiny_mlm("bert", tiny_tokenizer(splade_tiny), tmp_path / "bert")
    enc = SpladeEncoder.from_pretrained(str(path)).eval()  # eval: no dropout, deterministic
    batch = enc.tokenize(["protein folding in cells", "a b", "vitamin d " * 30])
    params = [p for p in enc.parameters() if p.requires_grad]

    pool_logits_out = enc(batch["input_ids"], batch["attention_mask"])
    fast = torch.autograd.grad((pool_logits_out**2).sum(), params, allow_unused=True)
    logits = enc.mlm(**batch).logits
    naive_out = no_special(enc, pool_full_logits(logits, batch["attention_mask"]))
    naive = torch.autograd.grad((naive_out**2).sum(), params, allow_unused=True)

    assert torch.allclose(pool_logits_out, naive_out, atol=1e-5)
    for a, b in zip(fast, naive, strict=True):
        if b is None:
            assert a is None or not a.any()
            continue
        # float32 sums in a different order: equal to 1e-5 of the gradient's scale
        assert (a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-7


def test_inference_path_unchanged_without_grad():
    """Under no_grad the buffer-reusing inference path runs; both agree."""
    torch.manual_seed(2)
    hidden = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    decoder = torch.nn.Linear(8, 40)
    with torch.no_grad():
        infer = pool_logits(hidden, mask, torch.nn.Identity(), decoder)
    train = pool_logits(hidden, mask, torch.nn.Identity(), decoder)
    assert train.requires_grad and torch.allclose(infer, train.detach(), atol=1e-6)


@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 250])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_row_fold_equals_amax(rows, dtype):
    """The inference pooling's halving fold picks exactly amax's values, odd counts included."""
    torch.manual_seed(rows)
    x = torch.randn(rows, 97).to(dtype)
    expected = x.amax(dim=0)
    assert torch.equal(max_rows_(x.clone()), expected)


def test_inference_chunks_never_overwrite_pooled_rows():
    """Texts sharing a reused projection buffer across several chunks keep their own maxima."""
    torch.manual_seed(3)
    hidden = torch.randn(5, 9, 8)
    mask = torch.ones(5, 9, dtype=torch.long)
    mask[1, 4:] = 0
    mask[3, 1:] = 0
    decoder = torch.nn.Linear(8, 50)
    reference = pool_full_logits(decoder(hidden), mask)
    with torch.no_grad():
        for chunk_tokens in (1, 10, 1000):
            pooled = pool_logits(
                hidden, mask, torch.nn.Identity(), decoder, chunk_tokens=chunk_tokens
            )
            assert torch.allclose(pooled, reference, atol=1e-6)


def test_bf16_inputs_give_bf16_gradients_close_to_fp32():
    """Under BF16 autocast the projection sees bf16 tokens; gradients accumulate in fp32."""
    torch.manual_seed(3)
    lengths = [6, 4]
    tokens = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    upstream = torch.randn(2, 30)
    MaxPooledProjection.apply(tokens, weight, lengths, 512).mul(upstream).sum().backward()
    ref_tokens, ref_weight = tokens.grad.clone(), weight.grad.clone()
    tokens.grad = weight.grad = None
    low = tokens.detach().bfloat16().requires_grad_(True)
    out = MaxPooledProjection.apply(low, weight, lengths, 512)
    assert out.dtype == torch.bfloat16
    out.float().mul(upstream).sum().backward()
    assert low.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.float32
    assert torch.allclose(low.grad.float(), ref_tokens, atol=0.1, rtol=0.05)
    assert torch.allclose(weight.grad, ref_weight, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("bias_shift", [-4.0, 4.0])  # few active entries / every entry active
@pytest.mark.parametrize("density", [0.0, None, 1.1])  # always dense / the shipped rule / never
def test_backward_both_sides_of_the_crossover_equal_autograd(monkeypatch, bias_shift, density):
    """The sparse (gathers + index_add) and the dense (two matmuls) backward both equal autograd's
    gradient of the naive amax, on vectors with few and with all dimensions active."""
    from spladeray.model import pooling

    if density is not None:
        monkeypatch.setattr(pooling, "DENSE_BACKWARD_DENSITY", density)
    monkeypatch.setattr(pooling, "SPARSE_BACKWARD_ENTRIES", 7)  # several pieces
    torch.manual_seed(2)
    lengths = [4, 0, 6, 3]
    vocab, hidden = 40, 8
    tokens = torch.randn(sum(lengths), hidden, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, hidden, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(vocab, dtype=torch.float64) * 0.1 + bias_shift
    upstream = torch.randn(len(lengths), vocab, dtype=torch.float64)

    pooled = MaxPooledProjection.apply(tokens, weight, lengths, 5)
    fast = torch.log1p(torch.relu(pooled + bias))
    fast[1] = 0.0
    (fast * upstream).sum().backward()
    fast_grads = tokens.grad.clone(), weight.grad.clone()
    tokens.grad = weight.grad = None
    naive = _naive(tokens, weight, bias, lengths)
    (naive * upstream).sum().backward()
    assert torch.allclose(fast.detach(), naive.detach(), atol=1e-12)
    assert torch.allclose(fast_grads[0], tokens.grad, atol=1e-10)
    assert torch.allclose(fast_grads[1], weight.grad, atol=1e-10)


def test_dense_backward_is_taken_above_the_crossover(monkeypatch):
    """With every dimension active the dense path runs (the sparse one is not called), below the
    crossover the sparse one; same gradient either way (the test above)."""
    from spladeray.model import pooling

    calls = []
    for name in ("_dense_backward", "_sparse_backward"):
        original = getattr(pooling, name)
        monkeypatch.setattr(
            pooling, name, lambda *a, _o=original, _n=name, **k: (calls.append(_n), _o(*a, **k))[1]
        )
    tokens = torch.randn(6, 4, requires_grad=True)
    weight = torch.randn(10, 4, requires_grad=True)
    for upstream, expected in (
        (torch.ones(2, 10), "_dense_backward"),
        (torch.zeros(2, 10), "_sparse_backward"),
    ):
        MaxPooledProjection.apply(tokens, weight, [3, 3], 512).mul(upstream).sum().backward()
        assert calls[-1] == expected


def test_bf16_dense_backward_is_close_to_fp32():
    """The dense backward runs its matmuls in the tokens' dtype (bf16 under autocast): within
    bf16 rounding of the fp32 gradient."""
    torch.manual_seed(3)
    lengths = [7, 5]
    tokens = torch.randn(12, 16)
    weight = torch.randn(64, 16)
    upstream = torch.randn(2, 64)
    grads = []
    for dtype in (torch.float32, torch.bfloat16):
        t = tokens.to(dtype).detach().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        MaxPooledProjection.apply(t, w, lengths, 512).float().mul(upstream).sum().backward()
        grads.append((t.grad.float(), w.grad.float()))
    for fp32, bf16 in zip(grads[0], grads[1], strict=True):
        assert (bf16 - fp32).norm() / fp32.norm() < 2e-2


def test_host_lengths_and_token_index_give_the_same_vectors_and_gradients():
    """The collator's host-side ``lengths`` / ``token_index`` (no device read of the mask) give
    exactly what pool_logits computes from the mask itself."""
    torch.manual_seed(4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    decoder = torch.nn.Linear(6, 20)
    out = []
    for host in (False, True):
        hidden = torch.randn(
            3, 4, 6, generator=torch.Generator().manual_seed(5), requires_grad=True
        )
        extra = (
            dict(lengths=mask.sum(1).tolist(), token_index=mask.flatten().nonzero().squeeze(1))
            if host
            else {}
        )
        v = pool_logits(hidden, mask, torch.nn.Identity(), decoder, chunk_tokens=2, **extra)
        v.sum().backward()
        out.append((v.detach(), hidden.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
