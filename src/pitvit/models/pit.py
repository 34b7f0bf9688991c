"""PiT: the Pooling-based Vision Transformer.

Heo et al., "Rethinking Spatial Dimensions of Vision Transformers", ICCV 2021 (arXiv 2103.16302).

A convolutional stem cuts overlapping patches, three stages of pre-norm transformer blocks run on the
class token(s) plus the spatial tokens, and between stages a depthwise strided convolution halves the
token grid and doubles the width (a linear layer does the same for the class tokens). The state-dict
keys are those of the official release (``naver-ai/pit``), so official checkpoints load as they are.

Beyond the official model: any input resolution (the position embedding is resized bicubically),
gradient checkpointing, ``forward_intermediates`` for dense backbones, and a distilled-training switch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["PiTConfig", "PiT", "resize_pos_embed", "token_grid"]


def _pair(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"expected an int or a (height, width) pair, got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)


@dataclass(frozen=True)
class PiTConfig:
    """Architecture hyper-parameters: everything that decides the graph and the parameter shapes.

    Attributes:
        patch_size: kernel of the stem convolution (the patch is larger than the stride: patches overlap).
        stride: stride of the stem convolution.
        base_dims: head dimension per stage; the width of stage ``i`` is ``base_dims[i] * heads[i]``.
        depth: transformer blocks per stage.
        heads: attention heads per stage.
        mlp_ratio: hidden width of the MLP over the token width.
        distilled: a second (distillation) token and head, as in DeiT.
        img_size: the input size the position embedding is stored for (an int or (height, width)).
        in_chans: input channels.
        num_classes: classifier outputs; 0 builds no head (the model returns pooled features).
        drop_rate: dropout after the position embedding, in the MLPs and projections, and before the head.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth; block ``i`` of ``N`` gets ``drop_path_rate * i / N`` (official rule).
    """

    patch_size: int = 16
    stride: int = 8
    base_dims: tuple[int, ...] = (32, 32, 32)
    depth: tuple[int, ...] = (2, 6, 4)
    heads: tuple[int, ...] = (2, 4, 8)
    mlp_ratio: float = 4.0
    distilled: bool = False
    img_size: Any = 224
    in_chans: int = 3
    num_classes: int = 1000
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("base_dims", "depth", "heads"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(self, "img_size", _pair(self.img_size))
        if not len(self.base_dims) == len(self.depth) == len(self.heads) >= 1:
            raise ValueError(
                f"base_dims, depth and heads need one entry per stage, got "
                f"{self.base_dims}, {self.depth}, {self.heads}")
        if self.patch_size < self.stride or self.stride < 1:
            raise ValueError(f"need patch_size >= stride >= 1, got {self.patch_size} and {self.stride}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        grid = token_grid(self.img_size, self.patch_size, self.stride)
        if min(grid) < 1:
            raise ValueError(
                f"img_size {self.img_size} is smaller than the stem's patch ({self.patch_size} px)")

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(d * h for d, h in zip(self.base_dims, self.heads))

    @property
    def num_tokens(self) -> int:
        return 2 if self.distilled else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def replace(self, **changes: Any) -> "PiTConfig":
        return replace(self, **changes)


def token_grid(img_size: int | tuple[int, int], patch_size: int, stride: int) -> tuple[int, int]:
    """Token grid after the stem (no padding): ``floor((size - patch) / stride) + 1`` per side."""
    h, w = _pair(img_size)
    return (h - patch_size) // stride + 1, (w - patch_size) // stride + 1


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of an NCHW position embedding ``(1, C, H, W)`` to ``grid`` (identity when equal)."""
    if tuple(pos_embed.shape[-2:]) == tuple(grid):
        return pos_embed
    dtype = pos_embed.dtype
    out = F.interpolate(pos_embed.float(), size=tuple(grid), mode="bicubic", align_corners=False)
    return out.to(dtype)


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016), scaled so the expectation is unchanged."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4f}"


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        # SDPA's default scale is head_dim ** -0.5, the official one.
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop: float, attn_drop: float,
                 drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Stage(nn.Module):
    """Transformer blocks over ``[class tokens; flattened map]``; returns the map (NCHW) and the tokens."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, drop: float,
                 attn_drop: float, drop_path: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, drop, attn_drop, drop_path[i]) for i in range(depth))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, cls_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        t = cls_tokens.shape[1]
        x = torch.cat((cls_tokens, x.flatten(2).transpose(1, 2)), dim=1)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        cls_tokens, x = x[:, :t], x[:, t:]
        return x.transpose(1, 2).reshape(b, c, h, w), cls_tokens


class Pool(nn.Module):
    """Halve the grid and double the width: depthwise 3x3/2 conv on the map, a linear on the tokens."""

    def __init__(self, dim_in: int, dim_out: int, stride: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim_in, dim_out, kernel_size=stride + 1, stride=stride,
                              padding=stride // 2, groups=dim_in, bias=True)
        self.fc = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor, cls_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(x), self.fc(cls_tokens)


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=stride, padding=0, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PiT(nn.Module):
    """Pooling-based Vision Transformer.

    Args:
        cfg: the architecture (see :class:`PiTConfig`).

    The model runs at any input size of at least one patch: when the stem's grid differs from the stored
    position embedding's, the embedding is resized bicubically on the fly (``set_input_size`` makes a new
    size permanent). Distilled variants return ``(cls_logits, dist_logits)`` only while training in
    distilled-training mode (``set_distilled_training(True)``), otherwise the mean of the two heads.
    """

    def __init__(self, cfg: PiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = cfg.widths
        self.num_classes = cfg.num_classes
        self.num_features = self.embed_dim = widths[-1]
        self.num_prefix_tokens = cfg.num_tokens
        self.distilled_training = False
        self.grad_checkpointing = False

        grid = token_grid(cfg.img_size, cfg.patch_size, cfg.stride)
        self.pos_embed = nn.Parameter(torch.zeros(1, widths[0], *grid))
        self.patch_embed = PatchEmbed(cfg.in_chans, widths[0], cfg.patch_size, cfg.stride)
        self.cls_token = nn.Parameter(torch.zeros(1, cfg.num_tokens, widths[0]))
        self.pos_drop = nn.Dropout(cfg.drop_rate)

        total = sum(cfg.depth)
        rates = [cfg.drop_path_rate * i / total for i in range(total)]  # official rule, not linspace
        self.transformers = nn.ModuleList()
        self.pools = nn.ModuleList()
        start = 0
        for s, (d, h) in enumerate(zip(cfg.depth, cfg.heads)):
            self.transformers.append(Stage(widths[s], d, h, cfg.mlp_ratio, cfg.drop_rate, cfg.attn_drop_rate,
                                           rates[start:start + d]))
            start += d
            if s < len(cfg.depth) - 1:
                self.pools.append(Pool(widths[s], widths[s + 1]))
        self.norm = nn.LayerNorm(widths[-1], eps=1e-6)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(widths[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.head_dist: nn.Module | None = None
        if cfg.distilled:
            self.head_dist = nn.Linear(widths[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()

        # Official init: truncated normal for the embeddings, unit LayerNorms, PyTorch defaults elsewhere.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

        reduction = cfg.stride
        self.feature_info: list[dict[str, Any]] = []
        for s, w in enumerate(widths):
            self.feature_info.append({"num_chs": w, "reduction": reduction, "module": f"transformers.{s}"})
            reduction *= 2

    # ------------------------------------------------------------------ protocol
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.transformers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        if enable and not self.cfg.distilled:
            raise ValueError("set_distilled_training(True) needs a distilled variant (pit_*_distilled)")
        self.distilled_training = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head(s) with fresh ones for ``num_classes`` outputs (0: no head, pooled features)."""
        self.num_classes = num_classes
        self.cfg = self.cfg.replace(num_classes=num_classes)
        dev = self.norm.weight.device
        self.head = nn.Linear(self.embed_dim, num_classes).to(dev) if num_classes > 0 else nn.Identity()
        if self.head_dist is not None:
            self.head_dist = nn.Linear(self.embed_dim, num_classes).to(dev) if num_classes > 0 else nn.Identity()

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Store the position embedding for a new input size (bicubic resize of the current one)."""
        cfg = self.cfg.replace(img_size=img_size)
        grid = token_grid(cfg.img_size, cfg.patch_size, cfg.stride)
        with torch.no_grad():
            self.pos_embed = nn.Parameter(resize_pos_embed(self.pos_embed.data, grid))
        self.cfg = cfg

    # ------------------------------------------------------------------ forward
    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_chans:
            raise ValueError(f"expected input (batch, {self.cfg.in_chans}, height, width), got {tuple(x.shape)}")
        x = self.patch_embed(x)
        x = self.pos_drop(x + resize_pos_embed(self.pos_embed, x.shape[-2:]))
        return x, self.cls_token.expand(x.shape[0], -1, -1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images to the normalized class token(s): ``(batch, 1 or 2, width)``."""
        x, cls_tokens = self._embed(x)
        for s, stage in enumerate(self.transformers):
            if s > 0:
                x, cls_tokens = self.pools[s - 1](x, cls_tokens)
            x, cls_tokens = stage(x, cls_tokens)
        return self.norm(cls_tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Class token(s) to logits. ``pre_logits=True`` returns the features the head(s) would read."""
        if self.head_dist is None:
            x = self.head_drop(x[:, 0])
            return x if pre_logits else self.head(x)
        x_cls, x_dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
        if pre_logits:
            return (x_cls + x_dist) / 2
        x_cls, x_dist = self.head(x_cls), self.head_dist(x_dist)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return x_cls, x_dist
        return (x_cls + x_dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs as NCHW maps (strides in ``feature_info``), and the final class tokens.

        Args:
            indices: which stages (a list), or the last ``n`` stages (an int); default all.
            norm: unused; the final norm applies to class tokens only (kept for timm's signature).
            stop_early: stop after the last requested stage (no final tokens are computed).
            output_fmt: only ``"NCHW"``.
            intermediates_only: return the list of maps alone.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        n = len(self.transformers)
        if indices is None:
            take = list(range(n))
        elif isinstance(indices, int):
            take = list(range(n - indices, n))
        else:
            take = [i + n if i < 0 else i for i in indices]
        if not take or min(take) < 0 or max(take) >= n:
            raise ValueError(f"stage indices must lie in [0, {n}), got {indices!r}")
        last = max(take) if stop_early else n - 1
        out = []
        x, cls_tokens = self._embed(x)
        for s in range(last + 1):
            if s > 0:
                x, cls_tokens = self.pools[s - 1](x, cls_tokens)
            x, cls_tokens = self.transformers[s](x, cls_tokens)
            if s in take:
                out.append(x)
        if intermediates_only:
            return out
        return self.norm(cls_tokens), out

    def extra_repr(self) -> str:
        c = self.cfg
        return f"img_size={c.img_size}, widths={c.widths}, depth={c.depth}, distilled={c.distilled}"
