"""Class names: ImageNet-1k's, from timm's bundled tables (offline), or those a checkpoint carries."""
from __future__ import annotations

from functools import lru_cache

from torch import nn

from pitvit.utils.errors import CheckpointError

__all__ = ["imagenet_class_names", "class_names_for"]


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names by label index, short form ("tench", "goldfish", ...)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    # Descriptions list synonyms ("tench, Tinca tinca"); the first one reads best in a table.
    return tuple(info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes()))


def class_names_for(model: nn.Module) -> list[str]:
    """The names of ``model``'s outputs, by index.

    A checkpoint's own ``class_names`` (set on the model as ``model.class_names`` by the loader) win;
    otherwise a 1000-way head is taken to be ImageNet-1k's; otherwise the indices themselves.
    """
    names = getattr(model, "class_names", None)
    n = getattr(model, "num_classes", 0)
    if names:
        if len(names) != n:
            raise CheckpointError(f"the checkpoint names {len(names)} classes but the model has {n} outputs")
        return list(names)
    if n == 1000:
        return list(imagenet_class_names())
    return [str(i) for i in range(n)]
