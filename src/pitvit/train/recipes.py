"""Recipes: YAML files of configuration sections, and ``--set key=value`` overrides, over the schema's defaults.

The recipes ship inside the package (``pitvit/configs/*.yaml``, found through :mod:`importlib.resources`, so
an installed pitvit and a clone behave alike): ``load_config("pit_ti")`` takes one by name, and
``load_config("my.yaml")`` a file of your own, whose ``base:`` may name a file beside it or a shipped recipe.
The resolved configuration is saved with every run (``RUN_DIR/config.yaml``, :func:`save_config`) and in every
checkpoint, so a run can always be reproduced from its folder.
"""
from __future__ import annotations

import importlib.resources
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pitvit.utils.errors import ConfigError
from pitvit.utils.io import open_regular, write_text

from .config import Config, config_from_dict, config_to_dict, renamed_keys

if TYPE_CHECKING:
    from importlib.abc import Traversable

__all__ = ["load_config", "apply_overrides", "save_config", "parse_set", "list_recipes", "recipe_summaries",
           "find_recipe"]


# Bounds on a recipe: a few KB in practice. An alias bomb ("billion laughs": ten aliases of ten aliases of ...)
# is a small file whose document, once its aliases are expanded, holds billions of nodes.
MAX_RECIPE_BYTES = 1 << 20
MAX_NODES = 100_000  # nodes of the document with every alias expanded
MAX_DEPTH = 64  # nesting of mappings and sequences


class _TooLarge(yaml.YAMLError):
    """A document past one of the bounds; refused before anything is built from it."""


class _Loader(yaml.SafeLoader):
    """YAML with the 1.2 core schema's booleans: only true/false are booleans; on, off, yes and no stay strings
    (``log.progress_bar: off`` is the word off), and boolean fields still accept those words (see ``_coerce``).

    Bounded: each document's node graph is measured with every alias expanded (counted once per node, so the
    measure itself costs no more than the file) before any Python object is built from it; more than
    :data:`MAX_NODES` nodes, deeper than :data:`MAX_DEPTH`, or an alias inside itself is refused."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # PyYAML composes recursively: a deeply nested flow list would exhaust Python's stack before any check
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooLarge(f"it nests deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        _measure(node)
        return node


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _measure(root: Any) -> None:
    """Raise :class:`_TooLarge` when ``root`` expands past the bounds (see :class:`_Loader`)."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, depth)
    busy: set[int] = set()

    def visit(node: Any) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise _TooLarge("an alias refers to a node that contains it (a recursive structure)")
        children: list[Any] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        busy.add(key)
        n, depth = 1, 0
        for child in children:
            cn, cd = visit(child)
            n, depth = n + cn, max(depth, cd)
            if n > MAX_NODES:
                raise _TooLarge(f"it expands to more than {MAX_NODES} values once its aliases are followed (an "
                                f"alias bomb?)")
        busy.discard(key)
        if depth + 1 > MAX_DEPTH:
            raise _TooLarge(f"it nests deeper than {MAX_DEPTH} levels")
        sizes[key] = (n, depth + 1)
        return sizes[key]

    if root is not None:
        visit(root)


def _load_yaml(text: str) -> Any:
    if len(text) > MAX_RECIPE_BYTES:
        raise _TooLarge(f"it is larger than {MAX_RECIPE_BYTES >> 20} MiB")
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _read_text(source: Path | Traversable) -> str:
    """A recipe's text: a regular file (never a FIFO or device) of at most MAX_RECIPE_BYTES."""
    if not isinstance(source, Path):
        return source.read_text(encoding="utf-8")  # a shipped recipe
    with open_regular(source) as f:
        data = f.read(MAX_RECIPE_BYTES + 1)
    if len(data) > MAX_RECIPE_BYTES:
        raise _TooLarge(f"it is larger than {MAX_RECIPE_BYTES >> 20} MiB")
    return data.decode("utf-8")


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------------------- recipes
_SUFFIX = ".yaml"


def _shipped() -> Traversable:
    """The folder of recipes inside the installed package (a plain folder, or a zip's, alike)."""
    return importlib.resources.files("pitvit").joinpath("configs")


def list_recipes() -> list[str]:
    """The names of the recipes shipped with pitvit, sorted: what ``--config NAME`` accepts."""
    return sorted(e.name[: -len(_SUFFIX)] for e in _shipped().iterdir() if e.name.endswith(_SUFFIX))


def recipe_summaries() -> dict[str, str]:
    """Each shipped recipe's name and what its header says first (the comment lines before ``command:``)."""
    out = {}
    for name in list_recipes():
        lead = []
        for line in _shipped().joinpath(name + _SUFFIX).read_text(encoding="utf-8").splitlines():
            if not line.startswith("#") or line.startswith("#  "):
                break
            lead.append(line.lstrip("#").strip())
        out[name] = " ".join(lead)
    return out


def _shipped_recipe(name: str) -> Traversable | None:
    stem = name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else name
    if "/" in stem or os.sep in stem or stem not in list_recipes():
        return None
    return _shipped().joinpath(stem + _SUFFIX)


def find_recipe(spec: str | os.PathLike) -> Path | Traversable:
    """The recipe ``spec`` names: a YAML file that exists, else a shipped recipe of that name.

    ``pit_ti`` and ``pit_ti.yaml`` both name the shipped recipe unless a file of that name is in the working
    directory.

    Raises:
        ConfigError: neither a file nor a shipped recipe; the message lists the shipped ones.
    """
    path = Path(spec)
    if path.is_file() or (path.exists() and not path.is_dir()):
        return path  # a FIFO or device too: reading it refuses it by name (_read_text), it is not "not found"
    shipped = _shipped_recipe(str(spec))
    if shipped is None:
        raise ConfigError(f"recipe {str(spec)!r} not found: no such file, and no shipped recipe of that name; "
                          f"shipped recipes: {', '.join(list_recipes())} (give a name, e.g. --config pit_ti, "
                          f"or the path of a YAML file)")
    return shipped


def _folder_of(source: Path | Traversable) -> Path | Traversable:
    """Where a recipe's ``base:`` is looked for first: its own folder (the shipped folder for a shipped one)."""
    return source.resolve().parent if isinstance(source, Path) else _shipped()


def _base_recipe(base: str, source: Path | Traversable, key: str) -> Path | Traversable:
    beside = _folder_of(source).joinpath(base)
    if beside.is_file():
        return beside
    shipped = _shipped_recipe(base)
    if shipped is None:
        raise ConfigError(f"{key}: base recipe {base!r} is neither beside it nor a shipped recipe "
                          f"({', '.join(list_recipes())})")
    return shipped


def _read_recipe(source: Path | Traversable, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A recipe's sections merged over its ``base:`` chain."""
    key = str(source.resolve() if isinstance(source, Path) else source)
    if key in seen:
        raise ConfigError(f"recipe inheritance loops: {' -> '.join(seen + (key,))}; remove one of the base: lines")
    try:
        data = _load_yaml(_read_text(source)) or {}
    except _TooLarge as e:
        raise ConfigError(f"{key}: refused: {e}; a recipe is a small mapping of sections") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{key}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: cannot read the recipe: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: a recipe must be a mapping of sections, got {type(data).__name__}")
    data.pop("provenance", None)  # a run's config.yaml says where it came from; that is no setting
    data = renamed_keys(data, where=key)
    base = data.pop("base", None)
    if base:
        parent = _read_recipe(_base_recipe(str(base), source, key), seen + (key,))
        parent.pop("name", None)  # a recipe is named by itself (or its file), never after its base
        data = _deep_merge(parent, data)
    return data


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["optim.lr=1e-3", "ema.enabled=false"]`` -> a nested dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = _load_yaml(raw) if raw.strip() else ""
        except _TooLarge as e:
            raise ConfigError(f"--set {key}: refused: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({getattr(e, 'problem', None) or e})"
                              ) from None
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {p!r} was set to a value above, it cannot also hold keys")
        node[parts[-1]] = value
    return out


def apply_overrides(cfg: Config, overrides: dict[str, Any] | list[str]) -> Config:
    """A copy of ``cfg`` with overrides applied (a nested dict, or ``key=value`` strings)."""
    where = "--set" if isinstance(overrides, list) else "overrides"
    if isinstance(overrides, list):
        overrides = parse_set(overrides)
    return config_from_dict(_deep_merge(config_to_dict(cfg), renamed_keys(overrides, where=where)))


def load_config(recipe: str | os.PathLike | None = None,
                overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Defaults, then the recipe (its ``base:`` chain first), then ``overrides``.

    Args:
        recipe: a shipped recipe's name (``pit_ti``, see :func:`list_recipes`) or the path of a YAML file.
        overrides: ``key=value`` strings (``--set``) or a nested dict.

    Raises:
        ConfigError: an unknown recipe, key or value; the message says which and what is valid.
    """
    data: dict[str, Any] = {}
    if recipe:
        source = find_recipe(recipe)
        data = _read_recipe(source)
        data.setdefault("name", Path(source.name).stem)
    if overrides:
        where = "--set" if isinstance(overrides, list) else "overrides"
        overrides = parse_set(overrides) if isinstance(overrides, list) else overrides
        data = _deep_merge(data, renamed_keys(overrides, where=where))
    return config_from_dict(data)


def save_config(cfg: Config, path: str | Path, provenance: dict[str, Any] | None = None) -> None:
    """Write the resolved configuration as YAML, with the run's ``provenance`` record (which
    :func:`load_config` skips: the file is a recipe that reproduces the run)."""
    data = config_to_dict(cfg)
    if provenance is not None:
        data["provenance"] = provenance
    write_text(path, yaml.safe_dump(data, sort_keys=False))
