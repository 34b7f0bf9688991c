"""PiT: the Pooling-based Vision Transformer.

Heo et al., "Rethinking Spatial Dimensions of Vision Transformers", ICCV 2021 (arXiv 2103.16302).

A convolutional stem cuts overlapping patches, three stages of pre-norm transformer blocks run on the
class token(s) plus the spatial tokens, and between stages a depthwise strided convolution halves the
token grid and doubles the width (a linear layer does the same for the class tokens). The state-dict
keys are those of the official release (``naver-ai/pit``), so official checkpoints load as they are.

Beyond the official model: any input resolution (the position embedding is resized bicubically),
gradient checkpointing, ``forward_intermediates`` and ``prune_intermediate_layers`` for dense backbones, a
distilled-training switch, and timm's model protocol (``torch.jit.script`` and ``torch.fx`` included).
"""
# No ``from __future__ import annotations`` here: TorchScript and torch.fx read the forward methods'
# annotations as objects, hence typing's Optional/Tuple/List rather than ``X | None``.
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pitvit.utils.errors import ConfigError
from pitvit.utils.keyed import hash_keys, uniform_from_keys

__all__ = ["PiTConfig", "PiT", "Attention", "DropPath", "keyed_drop_path", "resize_pos_embed", "token_grid",
           "grid_img_size", "POOL_TYPES",
           "STEM_KEY", "PATCH_KEY"]

# The state-dict keys of the first convolutions: the optional stem's (stem_channels > 0), then the patch one
STEM_KEY, PATCH_KEY = "patch_embed.stem.0.weight", "patch_embed.conv.weight"

POOL_TYPES = ("token", "")  # read the class token(s) / return every class token unpooled


def _pair(x: Union[int, Tuple[int, int], List[int]]) -> Tuple[int, int]:
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ConfigError(f"expected an int or a (height, width) pair, got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)


def _check_pool(global_pool: str, distilled: bool) -> None:
    if global_pool not in POOL_TYPES:
        raise ConfigError(f"global_pool must be one of {POOL_TYPES}, got {global_pool!r}")
    if distilled and global_pool != "token":
        raise ConfigError("a distilled PiT reads its two class tokens with global_pool='token'")


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
        global_pool: ``"token"``: the head reads the class token (the official model); ``""``: the head runs
            on every class token and the model returns ``(batch, tokens, outputs)`` (timm's option).
        drop_rate: dropout after the position embedding, in the MLPs and projections, and before the head.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth; block ``i`` of ``N`` gets ``drop_path_rate * i / N`` (official rule).
        stem_channels: 0 (published PiT): the stem is the one patch convolution. ``N > 0``: a 3x3 convolution to
            ``N`` channels, BatchNorm and GELU run first, at the input's full resolution, and the patch
            convolution reads their ``N`` channels (a convolutional stem, after Xiao et al. 2021, *Early
            Convolutions Help Transformers See Better*, arXiv 2106.14881). Not in any published checkpoint.
    """

    patch_size: int = 16
    stride: int = 8
    base_dims: Tuple[int, ...] = (32, 32, 32)
    depth: Tuple[int, ...] = (2, 6, 4)
    heads: Tuple[int, ...] = (2, 4, 8)
    mlp_ratio: float = 4.0
    distilled: bool = False
    img_size: Any = 224
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "token"
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    stem_channels: int = 0

    def __post_init__(self) -> None:
        for name in ("base_dims", "depth", "heads"):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, tuple(int(v) for v in value))
            except (TypeError, ValueError):
                raise ConfigError(f"{name} needs one integer per stage, got {value!r}") from None
        try:
            object.__setattr__(self, "img_size", _pair(self.img_size))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"img_size must be an int or a (height, width) pair, got {self.img_size!r}") from e
        if not len(self.base_dims) == len(self.depth) == len(self.heads) >= 1:
            raise ConfigError(
                f"base_dims, depth and heads need one entry per stage, got "
                f"{self.base_dims}, {self.depth}, {self.heads}")
        if self.patch_size < self.stride or self.stride < 1:
            raise ConfigError(f"need patch_size >= stride >= 1, got {self.patch_size} and {self.stride}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.in_chans < 1:
            raise ConfigError(f"in_chans must be >= 1, got {self.in_chans}")
        if self.stem_channels < 0:
            raise ConfigError(f"stem_channels must be >= 0 (0: the published patch convolution alone), "
                              f"got {self.stem_channels}")
        _check_pool(self.global_pool, self.distilled)
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        grid = token_grid(self.img_size, self.patch_size, self.stride)
        if min(grid) < 1:
            raise ConfigError(
                f"img_size {self.img_size} is smaller than the stem's patch ({self.patch_size} px)")

    @property
    def widths(self) -> Tuple[int, ...]:
        return tuple(d * h for d, h in zip(self.base_dims, self.heads))

    @property
    def num_tokens(self) -> int:
        return 2 if self.distilled else 1

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def replace(self, **changes: Any) -> "PiTConfig":
        return replace(self, **changes)


def token_grid(img_size: Union[int, Tuple[int, int]], patch_size: int, stride: int) -> Tuple[int, int]:
    """Token grid after the stem (no padding): ``floor((size - patch) / stride) + 1`` per side."""
    h, w = _pair(img_size)
    return (h - patch_size) // stride + 1, (w - patch_size) // stride + 1


def grid_img_size(grid: Tuple[int, int], patch_size: int, stride: int) -> Tuple[int, int]:
    """The smallest input size whose stem makes ``grid`` tokens (the inverse of :func:`token_grid`):
    ``(g - 1) * stride + patch`` per side."""
    return tuple((g - 1) * stride + patch_size for g in grid)  # type: ignore[return-value]


def _pos_embed_at(pos_embed: torch.Tensor, h: int, w: int, always: bool) -> torch.Tensor:
    # One scriptable home for the resize. `always` skips the "same size" shortcut, a Python branch on the
    # input's shape that a tracer would freeze (bicubic to the same size is an exact identity).
    if not always and pos_embed.shape[-2] == h and pos_embed.shape[-1] == w:
        return pos_embed
    out = F.interpolate(pos_embed.float(), size=(h, w), mode="bicubic", align_corners=False)
    return out.to(pos_embed.dtype)


def _check_input(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected input (batch, {in_chans}, height, width), got {list(x.shape)}")
    return x


# torch.fx records these as calls instead of tracing into them, so a traced graph keeps the any-size resize
# and the input check (both branch on shapes, which symbolic tracing cannot follow).
torch.fx.wrap("_pos_embed_at")
torch.fx.wrap("_check_input")


def resize_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of an NCHW position embedding ``(1, C, H, W)`` to ``grid`` (identity when equal)."""
    return _pos_embed_at(pos_embed, int(grid[0]), int(grid[1]), False)


def _factory(device: Any, dtype: Any) -> Dict[str, Any]:
    return {"device": device, "dtype": dtype}


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016), scaled by ``1 / keep`` so the expectation is unchanged
    (timm's ``DropPath``).

    By default each sample's keep/drop is a Bernoulli draw from torch's generator. Inside
    :func:`keyed_drop_path` it compares a uniform ``draws[i]`` that is a function of sample ``i``'s key and of
    this module's ``salt`` (its block and branch): the same sample at the same step keeps or drops the same blocks
    on any device and in any batch split, which makes N processes draw what one process draws.
    """

    draws: Optional[torch.Tensor]

    def __init__(self, rate: float, salt: int = 0) -> None:
        super().__init__()
        self.rate = rate
        self.salt = salt
        self.draws = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        shape = [x.shape[0]] + [1] * (x.dim() - 1)
        draws = self.draws
        if draws is None:
            mask = x.new_empty(shape).bernoulli_(keep)
        else:
            mask = (draws < keep).to(x.dtype).view(shape)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4f}"


@contextlib.contextmanager
def keyed_drop_path(model: nn.Module, keys: Optional[torch.Tensor]) -> Iterator[None]:
    """Key every :class:`DropPath` of ``model`` by ``keys`` (one non-negative int64 per sample of the next
    batches, on the model's device) for the duration of the block; ``None`` leaves the ordinary random draws.

    The caller decides what a key encodes (training keys it by seed, step and the sample's place in the global
    batch); the mask of sample ``i`` in a block is a hash of ``keys[i]`` and the block's place in the model. The
    uniforms of every block are drawn here at once (two hash passes over ``blocks x batch``), not per block.
    """
    mods = [m for m in model.modules() if isinstance(m, DropPath)]
    if keys is not None and mods:
        salts = torch.tensor([m.salt for m in mods], dtype=torch.int64, device=keys.device)
        folded = hash_keys(keys, 0x5EED)  # 32 bits, so that a 16-bit salt fits beside them
        draws = uniform_from_keys((folded[None, :] << 16) | salts[:, None], 0xD809)
        for m, row in zip(mods, draws):
            m.draws = row
    try:
        yield
    finally:
        for m in mods:
            m.draws = None


class Attention(nn.Module):
    """Multi-head self-attention over ``(batch, tokens, dim)``: ``softmax(q k^T / sqrt(d)) v`` through SDPA.

    Args:
        dim: token width.
        heads: attention heads (each of width ``dim // heads``).
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(self, dim: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = _factory(device, dtype)
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True, **dd)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        # SDPA's default scale is head_dim ** -0.5, the official one.
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = _factory(device, dtype)
        self.fc1 = nn.Linear(dim, hidden, **dd)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop: float, attn_drop: float,
                 drop_path: float, salt: int = 0, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = _factory(device, dtype)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.attn = Attention(dim, heads, attn_drop, drop, **dd)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop, **dd)
        # one module per branch, each with its own salt, so the two draws of a block differ when keyed
        self.drop_path1 = DropPath(drop_path, 2 * salt) if drop_path > 0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path, 2 * salt + 1) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class Stage(nn.Module):
    """Transformer blocks over ``[class tokens; flattened map]``; returns the map (NCHW) and the tokens."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, drop: float,
                 attn_drop: float, drop_path: List[float], first_block: int = 0, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        dd = _factory(device, dtype)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, drop, attn_drop, drop_path[i], first_block + i, **dd) for i in range(depth))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, cls_tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        t = cls_tokens.shape[1]
        x = torch.cat((cls_tokens, x.flatten(2).transpose(1, 2)), dim=1)
        for blk in self.blocks:
            if torch.jit.is_scripting() or not (self.grad_checkpointing and self.training
                                                and torch.is_grad_enabled()):
                x = blk(x)
            else:
                x = checkpoint(blk, x, use_reentrant=False)
        cls_tokens, x = x[:, :t], x[:, t:]
        return x.transpose(1, 2).reshape(b, c, h, w), cls_tokens


class Pool(nn.Module):
    """Halve the grid and double the width: depthwise 3x3/2 conv on the map, a linear on the tokens."""

    def __init__(self, dim_in: int, dim_out: int, stride: int = 2, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = _factory(device, dtype)
        self.conv = nn.Conv2d(dim_in, dim_out, kernel_size=stride + 1, stride=stride,
                              padding=stride // 2, groups=dim_in, bias=True, **dd)
        self.fc = nn.Linear(dim_in, dim_out, **dd)

    def forward(self, x: torch.Tensor, cls_tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.conv(x), self.fc(cls_tokens)


class PatchEmbed(nn.Module):
    """The patch convolution, after an optional convolutional stem (``stem_channels``, see :class:`PiTConfig`)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, stride: int, stem_channels: int = 0,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = _factory(device, dtype)
        self.stem = None
        if stem_channels:
            self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_channels, 3, padding=1, bias=False, **dd),
                                      nn.BatchNorm2d(stem_channels, **dd), nn.GELU())
        self.conv = nn.Conv2d(stem_channels or in_chans, dim, kernel_size=patch_size, stride=stride, padding=0,
                              bias=True, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x if self.stem is None else self.stem(x))


def _take_indices(num_stages: int, indices: Optional[Union[int, List[int], Tuple[int, ...]]]) -> List[int]:
    """Stage indices as timm reads them: ``None`` all, an int ``n`` the last ``n``, a sequence as given
    (negative counts from the end)."""
    if indices is None:
        take = list(range(num_stages))
    elif isinstance(indices, int):
        take = list(range(num_stages - indices, num_stages))
    else:
        take = [i + num_stages if i < 0 else i for i in indices]
    if not take or min(take) < 0 or max(take) >= num_stages:
        raise ValueError(f"stage indices must lie in [0, {num_stages}), got {indices!r}")
    return take


class PiT(nn.Module):
    """Pooling-based Vision Transformer.

    Args:
        cfg: the architecture (see :class:`PiTConfig`).
        device: where to create the parameters (``"meta"`` allocates nothing).
        dtype: the parameters' dtype.

    The model runs at any input size of at least one patch: when the stem's grid differs from the stored
    position embedding's, the embedding is resized bicubically on the fly (``set_input_size`` makes a new
    size permanent; ``set_dynamic_img_size`` makes a traced or exported graph keep the resize for every
    size). Distilled variants return ``(cls_logits, dist_logits)`` only while training in distilled-training
    mode (``set_distilled_training(True)``), otherwise the mean of the two heads.
    """

    # TorchScript compiles properties; this one only serves Python callers (timm's builder and tests).
    __jit_unused_properties__ = ["default_cfg"]

    def __init__(self, cfg: PiTConfig, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = _factory(device, dtype)
        self.cfg = cfg
        widths = cfg.widths
        self.num_classes = cfg.num_classes
        self.in_chans = cfg.in_chans
        self.global_pool = cfg.global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = widths[-1]
        self.num_prefix_tokens = cfg.num_tokens
        self.distilled_training = False
        self.dynamic_img_size = False
        self.grad_checkpointing = False

        grid = token_grid(cfg.img_size, cfg.patch_size, cfg.stride)
        self.pos_embed = nn.Parameter(torch.zeros(1, widths[0], *grid, **dd))
        self.patch_embed = PatchEmbed(cfg.in_chans, widths[0], cfg.patch_size, cfg.stride, cfg.stem_channels, **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, cfg.num_tokens, widths[0], **dd))
        self.pos_drop = nn.Dropout(cfg.drop_rate)

        total = sum(cfg.depth)
        rates = [cfg.drop_path_rate * i / total for i in range(total)]  # official rule, not linspace
        self.transformers = nn.ModuleList()
        self.pools = nn.ModuleList()
        start = 0
        for s, (d, h) in enumerate(zip(cfg.depth, cfg.heads)):
            self.transformers.append(Stage(widths[s], d, h, cfg.mlp_ratio, cfg.drop_rate, cfg.attn_drop_rate,
                                           rates[start:start + d], start, **dd))
            start += d
            if s < len(cfg.depth) - 1:
                self.pools.append(Pool(widths[s], widths[s + 1], **dd))
        self.norm = nn.LayerNorm(widths[-1], eps=1e-6, **dd)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = self._new_head(cfg.num_classes, dd)
        self.head_dist = None
        if cfg.distilled:
            self.head_dist = self._new_head(cfg.num_classes, dd)

        # Official init: truncated normal for the embeddings, unit LayerNorms, PyTorch defaults elsewhere.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

        reduction = cfg.stride
        self.feature_info = []
        for s, w in enumerate(widths):
            self.feature_info.append({"num_chs": w, "reduction": reduction, "module": f"transformers.{s}"})
            reduction *= 2

    def _new_head(self, num_classes: int, dd: Dict[str, Any]) -> nn.Module:
        return nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()

    # ------------------------------------------------------------------ protocol
    @property
    def default_cfg(self) -> Any:
        """timm's older name for ``pretrained_cfg``."""
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, value: Any) -> None:
        self.pretrained_cfg = value

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.transformers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        if enable and self.head_dist is None:
            raise ValueError("set_distilled_training(True) needs a distilled variant (pit_*_distilled)")
        self.distilled_training = enable

    @torch.jit.ignore
    def set_dynamic_img_size(self, enable: bool = True) -> None:
        """Always resize the position embedding to the input's grid, also at the stored size.

        Eager results are the same either way (resizing to the same size is an exact identity). Switch it on
        before tracing or exporting with a free height and width (``torch.export``, ONNX): otherwise the graph
        holds the "same size, no resize" shortcut of the example input's shape.
        """
        self.dynamic_img_size = enable

    @torch.jit.ignore
    def get_classifier(self) -> Union[nn.Module, Tuple[nn.Module, nn.Module]]:
        """The head, or ``(head, head_dist)`` for a distilled model (as timm returns them)."""
        return self.head if self.head_dist is None else (self.head, self.head_dist)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head(s) with fresh ones for ``num_classes`` outputs (0: no head, pooled features).

        The new head(s) take the model's device, dtype and training mode. ``global_pool`` (``"token"`` or
        ``""``, see :class:`PiTConfig`) changes how the head reads the class tokens; ``None`` keeps it.
        """
        if global_pool is not None:
            _check_pool(global_pool, self.head_dist is not None)
            self.global_pool = global_pool
        self.num_classes = num_classes
        if self.head_dist is not None or not self.cfg.distilled:  # else pruned: no PiTConfig describes it
            self.cfg = self.cfg.replace(num_classes=num_classes, global_pool=self.global_pool)
        dd = _factory(self.pos_embed.device, self.pos_embed.dtype)
        self.head = self._new_head(num_classes, dd).train(self.training)
        if self.head_dist is not None:
            self.head_dist = self._new_head(num_classes, dd).train(self.training)

    def set_input_size(self, img_size: Union[int, Tuple[int, int]]) -> None:
        """Store the position embedding for a new input size (bicubic resize of the current one)."""
        cfg = self.cfg.replace(img_size=img_size)
        grid = token_grid(cfg.img_size, cfg.patch_size, cfg.stride)
        old = self.pos_embed
        with torch.no_grad():
            self.pos_embed = nn.Parameter(resize_pos_embed(old.detach(), grid), requires_grad=old.requires_grad)
        self.cfg = cfg

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop what the requested stage outputs do not need (timm's protocol, for feature extractors).

        Stages after the last requested one go; the final norm (it only serves the class tokens) goes with
        the head or with any stage; the head(s) go unless ``prune_head=False`` and no stage was dropped.

        Returns:
            The stage indices to pass to :meth:`forward_intermediates`.
        """
        take = _take_indices(len(self.transformers), indices)
        last = max(take)
        prune_end = last < len(self.transformers) - 1
        if prune_norm or prune_head or prune_end:
            self.norm = nn.Identity()
        self.transformers = self.transformers[:last + 1]
        self.pools = self.pools[:last]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_head or prune_end:
            self.head_dist = None
            self.distilled_training = False
            self.reset_classifier(0, "")
        return take

    # ------------------------------------------------------------------ forward
    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.patch_embed(_check_input(x, self.in_chans))
        x = self.pos_drop(x + _pos_embed_at(self.pos_embed, x.shape[-2], x.shape[-1], self.dynamic_img_size))
        return x, self.cls_token.expand(x.shape[0], -1, -1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images to the normalized class token(s): ``(batch, 1 or 2, width)``."""
        x, cls_tokens = self._embed(x)
        # Each stage but the last, then its pooling; written with zip because TorchScript cannot index a
        # ModuleList with a loop variable.
        for stage, pool in zip(self.transformers, self.pools):
            x, cls_tokens = stage(x, cls_tokens)
            x, cls_tokens = pool(x, cls_tokens)
        x, cls_tokens = self.transformers[-1](x, cls_tokens)
        return self.norm(cls_tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class token(s) to logits. ``pre_logits=True`` returns the features the head(s) would read.

        A distilled model in distilled-training mode returns ``(cls_logits, dist_logits)`` while training.
        """
        if self.head_dist is None:
            if self.global_pool == "token":
                x = x[:, 0]
            x = self.head_drop(x)
            return x if pre_logits else self.head(x)
        x_cls, x_dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
        if pre_logits:
            return (x_cls + x_dist) / 2
        x_cls, x_dist = self.head(x_cls), self.head_dist(x_dist)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return x_cls, x_dist  # type: ignore[return-value]
        return (x_cls + x_dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs as NCHW maps (strides in ``feature_info``), and the final class tokens.

        Args:
            indices: which stages (a list), or the last ``n`` stages (an int); default all.
            norm: unused; the final norm applies to class tokens only (kept for timm's signature).
            stop_early: stop after the last requested stage; the class tokens returned are then that
                stage's, without the final norm (which belongs to the last stage's width).
            output_fmt: only ``"NCHW"``.
            intermediates_only: return the list of maps alone.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        n = len(self.transformers)
        take = _take_indices(n, indices)
        last = max(take) if stop_early else n - 1
        out = []
        x, cls_tokens = self._embed(x)
        for s, stage in enumerate(self.transformers[:last + 1]):
            if s > 0:
                x, cls_tokens = self.pools[s - 1](x, cls_tokens)
            x, cls_tokens = stage(x, cls_tokens)
            if s in take:
                out.append(x)
        if intermediates_only:
            return out
        return (self.norm(cls_tokens) if last == n - 1 else cls_tokens), out

    def extra_repr(self) -> str:
        c = self.cfg
        return f"img_size={c.img_size}, widths={c.widths}, depth={c.depth}, distilled={c.distilled}"
