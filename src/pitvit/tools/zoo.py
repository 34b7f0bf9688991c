"""Model statistics: parameters and multiply-accumulates, and the model zoo table."""
from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from pitvit.models import create_model, get_pretrained_cfg, list_models
from pitvit.models.pit import Attention
from pitvit.utils.errors import ConfigError
from pitvit.utils.names import ZOO_FORMATS

__all__ = ["count_params", "count_macs", "zoo_rows", "format_zoo", "ZOO_FORMATS"]


def count_params(model: nn.Module) -> int:
    """All parameters, trainable or not."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, img_size: int | tuple[int, int] | None = None) -> int:
    """Multiply-accumulates of one forward pass on one image, counted from the layers actually run.

    Linear and Conv2d layers are counted from their input and output shapes; attention adds the two
    batched products ``q @ k^T`` and ``attn @ v`` (``2 * heads * tokens^2 * head_dim``), which profilers
    that only see matmul kernels miss when SDPA runs fused. Norms, activations and additions are ignored,
    as in the paper's and timm's figures.
    """
    cfg = model.cfg
    size = cfg.img_size if img_size is None else img_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    total = 0

    def linear(m, inp, out):
        nonlocal total
        total += out.numel() // out.shape[-1] * m.in_features * m.out_features

    def conv(m, inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1]
        total += out.numel() * (m.in_channels // m.groups) * k

    def attention(m, inp, out):
        nonlocal total
        b, n, c = inp[0].shape
        total += 2 * b * n * n * c

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, Attention):
            hooks.append(m.register_forward_hook(attention))
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters())
        model(torch.zeros(1, cfg.in_chans, *size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total


def zoo_rows(pattern: str = "*") -> list[dict[str, Any]]:
    """One row per registered variant matching ``pattern``: parameters, GMACs, input, crop, paper top-1, timm name.

    Raises:
        ConfigError: no registered variant matches (the message lists them).
    """
    names = list_models(pattern)
    if not names:
        raise ConfigError(f"no registered model matches {pattern!r}; registered: {', '.join(list_models())}")
    rows = []
    for name in names:
        pre = get_pretrained_cfg(name)
        model = create_model(name)
        rows.append({
            "model": name,
            "params": count_params(model),
            "gmacs": round(count_macs(model) / 1e9, 3),
            "input": "x".join(str(v) for v in pre.input_size),
            "crop_pct": pre.crop_pct,
            "paper_top1": pre.paper_top1,
            "timm": pre.timm_name,
        })
    return rows


def format_zoo(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    """:func:`zoo_rows` as an aligned text table, a Markdown table or JSON."""
    if fmt == "json":
        return json.dumps(rows, indent=1)
    if fmt not in ZOO_FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(ZOO_FORMATS)}")
    cols = ["model", "params", "gmacs", "input", "crop_pct", "paper_top1", "timm"]
    cells = [[("-" if r[c] in (None, "") else f"{r[c]:,}" if c == "params" else str(r[c])) for c in cols]
             for r in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in [cols] + cells)
