"""Which floating-point precision inference runs in, per device.

``model.dtype`` (``float32`` | ``bfloat16`` | ``float16`` | ``auto``) resolves here to the dtype
of the vocabulary projection and max-pool (:func:`spladeray.model.pooling.pool_logits`) and
whether the backbone runs under ``torch.autocast``. Weights always come out fp32.

``auto`` (what the shipped configs set; an unset ``model.dtype`` is ``float32``), and why:

- **CPU with native bf16** (AVX512-BF16 or AMX): ``bfloat16``. The projection is ~90% of a
  small SPLADE model's FLOPs and a bf16 GEMM runs ~3-4x faster than fp32 there; the bf16 logit
  keeps 8 significant bits, and OpenSearch's ``rank_features`` stores 9 anyway. Quality is
  guarded by ``tests/model/test_precision.py`` (SciFact nDCG@10 within 0.002 of fp32). The
  backbone stays fp32 on CPU: autocast casts every weight on every call and, for a small
  backbone, costs more than it saves (docs/model.md has the measurements).
- **CPU without native bf16**: ``float32``; emulated bf16 is slower than fp32.
- **CUDA**: ``bfloat16`` where the GPU supports it (Ampere and later), else ``float16``; both
  the backbone (autocast) and the projection. bf16 is what training runs in (the same numerics
  at serving time) and has fp32's exponent range, so no logit can overflow.

``float16`` on a CPU has no fast kernels (measured 5-20x slower than fp32); it runs fp32 with a
warning.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

logger = logging.getLogger(__name__)

Precision = Literal["float32", "bfloat16", "float16", "auto"]
PRECISIONS = ("float32", "bfloat16", "float16", "auto")


@dataclass(frozen=True)
class Plan:
    """What one forward pass runs in: ``projection`` dtype (None: fp32) and backbone autocast."""

    projection: torch.dtype | None
    backbone: torch.dtype | None

    @property
    def name(self) -> str:
        return str(self.projection or torch.float32).replace("torch.", "")


FP32 = Plan(None, None)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: be conservative
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def normalize(dtype: str | torch.dtype | None) -> Precision:
    """``torch.bfloat16`` / ``"bf16"`` / None ... -> one of :data:`PRECISIONS`."""
    if dtype is None:
        return "float32"
    name = str(dtype).replace("torch.", "")
    name = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}.get(
        name, name
    )
    if name not in PRECISIONS:
        raise ValueError(f"dtype must be one of {', '.join(PRECISIONS)}; got {dtype!r}")
    return name  # type: ignore[return-value]


def plan(precision: Precision, device: torch.device) -> Plan:
    """The :class:`Plan` for ``precision`` on ``device``."""
    if precision == "float32":
        return FP32
    if device.type == "cuda":
        if precision == "auto":
            precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        dtype = getattr(torch, precision)
        return Plan(dtype, dtype)
    if precision == "auto":
        return Plan(torch.bfloat16, None) if cpu_has_native_bf16() else FP32
    if precision == "float16":
        _warn_once("float16 has no fast CPU kernels; running float32 (use bfloat16 on CPU)")
        return FP32
    return Plan(torch.bfloat16, None)


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)
