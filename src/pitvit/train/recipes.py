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
from pitvit.utils.io import write_text

from .config import Config, config_from_dict, config_to_dict

if TYPE_CHECKING:
    from importlib.abc import Traversable

__all__ = ["load_config", "apply_overrides", "save_config", "parse_set", "list_recipes", "recipe_summaries",
           "find_recipe"]


class _Loader(yaml.SafeLoader):
    """YAML with the 1.2 core schema's booleans: only true/false are booleans; on, off, yes and no stay strings
    (``log.progress_bar: off`` is the word off), and boolean fields still accept those words (see ``_coerce``)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


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
    if path.is_file():
        return path
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
        data = _load_yaml(source.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{key}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: cannot read the recipe: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: a recipe must be a mapping of sections, got {type(data).__name__}")
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
    if isinstance(overrides, list):
        overrides = parse_set(overrides)
    return config_from_dict(_deep_merge(config_to_dict(cfg), overrides))


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
        data = _deep_merge(data, parse_set(overrides) if isinstance(overrides, list) else overrides)
    return config_from_dict(data)


def save_config(cfg: Config, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
