"""The seed projects' architectures and languages: a Korean ModernBERT and a Norwegian XLM-R.

Tiny random masked LMs are built here (transformers configs, no hub) with tiny tokenizers built
here too (the ``tokenizers`` library): a SentencePiece-style Unigram vocabulary with ``▁`` pieces
for XLM-R, a WordPiece vocabulary with ``##`` pieces for ModernBERT, both holding Korean (Hangul)
and Norwegian (æ, ø, å) tokens. For each architecture: the fast path equals naive SPLADE-max, a
training step through ``MaxPooledProjection`` has autograd's gradients, the TorchScript export
reproduces the encoder, and the tokens round-trip through the OpenSearch backend (osmem) as
feature names and come back in ``/search``'s ``explain`` (which reads them with ``index.get``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from spladeray.model import SpladeEncoder
from spladeray.model.pooling import pool_full_logits

from helpers import no_special

KOREAN = ["한국어 검색 모델은 희소 벡터를 만든다", "안녕하세요 서울"]
NORWEGIAN = ["Blåbær er søte og gode på sommeren", "Norsk søk med sparsomme vektorer og ærlig øl"]
TEXTS = KOREAN + NORWEGIAN + ["", "blåbær 한국어"]

# SentencePiece-style pieces: "▁" marks a word start (XLM-R, the Korean seed's tokenizer family)
SP_PIECES = [
    "▁한국어", "▁검색", "▁모델", "은", "▁희소", "▁벡터", "를", "▁만든다", "▁안녕하세요", "▁서울",
    "▁blåbær", "▁er", "▁søte", "▁og", "▁gode", "▁på", "▁sommeren", "▁norsk", "▁søk", "▁med",
    "▁sparsom", "me", "▁vektor", "er", "▁ærlig", "▁øl", "▁",
]  # fmt: skip
# WordPiece: "##" marks a continuation (BERT-style vocabularies, e.g. a Korean ModernBERT)
WP_PIECES = [
    "한국어", "검색", "모델", "##은", "희소", "벡터", "##를", "만든다", "안녕하세요", "서울",
    "blåbær", "er", "søte", "og", "gode", "på", "sommeren", "norsk", "søk", "med", "sparsom",
    "##me", "vektor", "##er", "ærlig", "øl",
]  # fmt: skip


def _characters() -> list[str]:
    return sorted({c for t in TEXTS for c in t.lower() if not c.isspace()})


def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """XLM-R-style: Unigram over ``▁`` pieces, ``<s> text </s>``, pad id 1."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    pieces = SP_PIECES + [c for c in _characters() if c not in SP_PIECES] + ["<mask>"]
    vocab = [(s, 0.0) for s in specials] + [(p, -1.0 - 0.01 * i) for i, p in enumerate(pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """BERT-style: WordPiece with ``##`` continuations, ``[CLS] text [SEP]``."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = _characters()
    pieces = WP_PIECES + [c for c in chars if c not in WP_PIECES]
    pieces += [f"##{c}" for c in chars if f"##{c}" not in pieces]
    vocab = {t: i for i, t in enumerate(specials + pieces)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    )


def build_model(arch: str, out: Path) -> Path:
    """A tiny random masked LM of the seed's family, saved with its tokenizer."""
    from transformers import (
        ModernBertConfig,
        ModernBertForMaskedLM,
        XLMRobertaConfig,
        XLMRobertaForMaskedLM,
    )

    torch.manual_seed(0)
    if arch == "modernbert":
        tok = wordpiece_tokenizer()
        config = ModernBertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=128,
            local_attention=16,
            pad_token_id=tok.pad_token_id,
            cls_token_id=tok.cls_token_id,
            sep_token_id=tok.sep_token_id,
            bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id,
        )
        model = ModernBertForMaskedLM(config)
    else:
        tok = sentencepiece_tokenizer()
        config = XLMRobertaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=130,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        model = XLMRobertaForMaskedLM(config)
    # a visible bias, so that pooling with a deferred bias is exercised too
    with torch.no_grad():
        decoder = model.decoder if arch == "modernbert" else model.lm_head.decoder
        if decoder.bias is not None:
            decoder.bias.uniform_(-0.5, 0.5)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=["modernbert", "xlmr"])
def seed_model(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, build_model(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def encoder(seed_model) -> SpladeEncoder:
    return SpladeEncoder.from_pretrained(str(seed_model[1]), max_document_length=64)


def test_tokenizers_keep_korean_norwegian_and_sentencepiece_pieces(encoder, seed_model):
    tokens = encoder.tokenizer.tokenize(" ".join(KOREAN + NORWEGIAN))
    unk = encoder.tokenizer.unk_token
    assert unk not in tokens
    if seed_model[0] == "xlmr":
        assert {"▁한국어", "▁blåbær", "▁søk", "▁ærlig", "▁øl"} <= set(tokens)
    else:
        assert {"한국어", "##은", "blåbær", "søk", "ærlig", "øl"} <= set(tokens)
    assert type(encoder.mlm).__name__ in ("ModernBertForMaskedLM", "XLMRobertaForMaskedLM")


def test_fast_path_equals_naive_splade_max(encoder):
    assert encoder._parts is not None, "no fast path for this architecture"
    batch = encoder.tokenize(TEXTS)
    with torch.inference_mode():
        fast = encoder(batch["input_ids"], batch["attention_mask"])
        logits = encoder.mlm(**batch).logits
        naive = no_special(encoder, pool_full_logits(logits, batch["attention_mask"]))
    assert fast.shape == (len(TEXTS), encoder.vocab_size)
    assert (naive > 0).any(dim=1).all()
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=1e-5)
    # and the bulk path (sorted, length-bucketed batches) gives the same vectors
    bulk = torch.from_numpy(encoder.encode_documents_csr(TEXTS, batch_size=2).toarray())
    torch.testing.assert_close(bulk, naive, atol=1e-5, rtol=1e-5)


def test_training_step_gradients_equal_autograd(seed_model):
    """A training step through MaxPooledProjection: every parameter's gradient equals autograd's
    through the model's full MLM logits (naive SPLADE-max)."""
    from spladeray.model import pooling

    enc = SpladeEncoder.from_pretrained(str(seed_model[1]), max_document_length=64).eval()
    batch = enc.tokenize(TEXTS)
    params = [p for p in enc.parameters() if p.requires_grad]
    calls = []
    original = pooling.MaxPooledProjection.apply

    def counting(*args):  # records that the custom autograd function is on the path
        calls.append(1)
        return original(*args)

    pooling.MaxPooledProjection.apply = counting
    try:
        fast_out = enc(batch["input_ids"], batch["attention_mask"])
    finally:
        pooling.MaxPooledProjection.apply = original
    assert calls, "the training path did not use MaxPooledProjection"
    fast = torch.autograd.grad((fast_out**2).sum(), params, allow_unused=True)
    naive_out = no_special(enc, pool_full_logits(enc.mlm(**batch).logits, batch["attention_mask"]))
    naive = torch.autograd.grad((naive_out**2).sum(), params, allow_unused=True)
    torch.testing.assert_close(fast_out, naive_out, atol=1e-5, rtol=1e-5)
    checked = 0
    for a, b in zip(fast, naive, strict=True):
        if b is None:
            assert a is None or not a.any()
            continue
        assert a is not None
        assert (a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-7
        checked += 1
    assert checked > 10
    # and the optimizer step itself runs
    torch.optim.SGD(params, lr=0.1).step()


def test_torchscript_export_parity(encoder, seed_model):
    """Both trace with parity. XLM-R's trace is device-portable; ModernBERT's rotary position
    embedding builds its positions with ``torch.arange(seq_len)`` and moves ``inv_freq`` to the
    trace device, so the trace pins those two tensors to CPU: the ML Commons zip works on CPU ML
    nodes only (the export says so and sets ``device_portable: false``; docs/serve.md)."""
    from spladeray.model.export import compare_with_encoder, pinned_devices, trace_encoder

    scripted = trace_encoder(encoder, example_texts=TEXTS)
    assert compare_with_encoder(scripted, encoder, TEXTS) <= 1e-4
    pinned = pinned_devices(scripted)
    if seed_model[0] == "modernbert":
        assert pinned and all("arange" in line or "inv_freq" in line for line in pinned), pinned
    else:
        assert not pinned


def test_tokens_round_trip_through_opensearch_and_explain(encoder, osmem, seed_model):
    """Korean and Norwegian tokens (and ``▁`` pieces) are stored as rank_features names, searched
    with, read back by ``get`` exactly and matched in the explanation /search builds from
    ``index.get`` (serving.api.Ingress._explain)."""
    from spladeray.config import OpenSearchConfig
    from spladeray.index.opensearch import OpenSearchIndex
    from spladeray.model.sparse import sparse_dot

    clone = osmem.clone()
    try:
        index = OpenSearchIndex.from_config(
            OpenSearchConfig(hosts=[clone.url], username_env=None, password_env=None)
        )
        name = f"seeds-{seed_model[0]}"
        index.create(name)
        docs = KOREAN + NORWEGIAN
        vectors = encoder.encode_documents(docs)
        own = {p: 1.0 + i / 10 for i, p in enumerate(SP_PIECES[:12] + WP_PIECES[:4])}
        result = index.add(
            name,
            ["ko0", "ko1", "no0", "no1", "pieces"],
            [*vectors, own],
            [{"text": t} for t in docs] + [{"text": "pieces"}],
        )
        assert result.indexed == 5 and result.failed == []
        index.refresh(name)
        for doc_id, vec in zip(
            ["ko0", "ko1", "no0", "no1", "pieces"], [*vectors, own], strict=True
        ):
            stored = index.get(name, doc_id)
            assert set(stored) == set(vec)
            for token, weight in vec.items():  # Lucene keeps 9 significant bits
                assert stored[token] == pytest.approx(weight, rel=1e-2)
        names = {t for v in vectors for t in v}
        assert any(any("\uac00" <= c <= "\ud7a3" for c in t) for t in names)  # Hangul
        assert any(any(c in "æøå" for c in t) for t in names)
        assert "▁한국어" in own and "▁blåbær" in own and "##은" in own

        for text in (KOREAN[0], NORWEGIAN[0]):
            qvec = encoder.encode_queries([text])[0]
            hits = index.search(name, qvec, size=5)
            assert hits
            for hit in hits:
                dvec = index.get(name, hit.id)
                explanation = {t: w * dvec[t] for t, w in qvec.items() if t in dvec}
                assert explanation
                assert hit.score == pytest.approx(sum(explanation.values()), rel=0.02)
                assert hit.score == pytest.approx(sparse_dot(qvec, dvec), rel=0.02)
        # a query made of the pieces themselves finds the document holding them, token by token
        query = {"▁한국어": 1.0, "▁blåbær": 2.0, "##은": 0.5}
        top = index.search(name, query, size=1)[0]
        assert top.id == "pieces"
        dvec = index.get(name, "pieces")
        assert {t for t in query if t in dvec} == set(query)
        index.delete(name)
    finally:
        clone.close()


# ---------------------------------------------------------------------- trust_remote_code

CUSTOM_CODE = """
from transformers import BertConfig, BertForMaskedLM


class TinyCustomConfig(BertConfig):
    model_type = "tiny-custom-bert"


class TinyCustomForMaskedLM(BertForMaskedLM):
    config_class = TinyCustomConfig
"""


@pytest.fixture(scope="module")
def remote_code_dir(tmp_path_factory) -> Path:
    """A model directory whose config.json maps to Python shipped in the directory (auto_map),
    like ltg/norbert3 on the hub: loading it runs that code."""
    from transformers import BertConfig, BertForMaskedLM

    out = tmp_path_factory.mktemp("custom")
    tok = wordpiece_tokenizer()
    torch.manual_seed(0)
    BertForMaskedLM(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "tiny_custom.py").write_text(CUSTOM_CODE)
    config = json.loads((out / "config.json").read_text())
    config["model_type"] = "tiny-custom-bert"
    config["architectures"] = ["TinyCustomForMaskedLM"]
    config["auto_map"] = {
        "AutoConfig": "tiny_custom.TinyCustomConfig",
        "AutoModelForMaskedLM": "tiny_custom.TinyCustomForMaskedLM",
    }
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_remote_code_needs_the_explicit_flag(remote_code_dir):
    from spladeray.config import parse_config
    from spladeray.model.loading import RemoteCodeError, load_encoder_from_config

    cfg = parse_config({"model": {"path": str(remote_code_dir)}})
    assert cfg.model.trust_remote_code is False
    with pytest.raises(RemoteCodeError, match="trust_remote_code: true") as err:
        load_encoder_from_config(cfg.model)
    assert "tiny_custom.TinyCustomForMaskedLM" in str(err.value)
    with pytest.raises(RemoteCodeError):
        SpladeEncoder.from_pretrained(str(remote_code_dir))

    cfg = parse_config({"model": {"path": str(remote_code_dir), "trust_remote_code": True}})
    enc = load_encoder_from_config(cfg.model)
    assert type(enc.mlm).__name__ == "TinyCustomForMaskedLM"
    vec = enc.encode_documents(["blåbær 한국어"])[0]
    assert vec and not enc.random_head
