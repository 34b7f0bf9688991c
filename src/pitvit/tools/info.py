"""What a weight file or training checkpoint holds, read without building a model.

:func:`describe_file` reads the file once through the safe reader (no code runs; content hashes are checked when
the file carries them) and reports its format, the registered variant its shapes match, its classes and input
size, a run checkpoint's epoch and metrics, where it came from (provenance), and its digest status.
"""
from __future__ import annotations

import os
from typing import Any

from pitvit.models import read_weights
from pitvit.models.layouts import LAYOUT_TEXT, describe_state_dict
from pitvit.models.serialization import DIGEST_KEY, DIGESTS_KEY

__all__ = ["describe_file", "format_info"]


def _digest_status(ckpt: dict[str, Any], container: str) -> str:
    if ckpt.get("format") == "pitvit" and isinstance(ckpt.get(DIGESTS_KEY), dict):
        names = ", ".join(sorted(ckpt[DIGESTS_KEY]))
        return f"verified: SHA-256 of {names} match the stored ones"
    if DIGEST_KEY in (ckpt.get("safetensors_metadata") or {}) or container == "save_pretrained directory":
        return "verified: the SHA-256 of the tensors matches the stored one"
    return "none stored (files written by other programs carry none): nothing to verify"


def describe_file(path: str | os.PathLike) -> dict[str, Any]:
    """What ``path`` (a weights file, a training checkpoint, a ``save_pretrained`` folder) holds.

    Returns:
        ``file``, ``format`` (container and key layout), ``tensors``, ``variant`` (the registered variant the
        shapes match, or ``None``), ``model_name`` (as the file names it), ``architecture``, ``num_classes``,
        ``class_names`` (when stored), ``input_size`` (C, H, W: the stored preprocessing's, else what the
        position embedding fits), ``ema`` (whether EMA weights are stored too), ``digest``; for a run
        checkpoint also ``epoch``, ``step_in_epoch``, ``best_metric``, ``metrics`` (the last finished
        epoch's row); ``provenance`` when recorded.

    Raises:
        MissingPathError: nothing at ``path``.
        CheckpointError: unreadable, unsafe, damaged (a digest does not match), or not PiT weights.
    """
    w = read_weights(path)
    ckpt = w.record
    info = w.info
    pre = w.meta.get("pretrained_cfg") or {}
    size = pre.get("input_size")
    if size is None and info.get("img_size"):
        side = info["img_size"]
        h, wd = (side, side) if isinstance(side, int) else side
        size = [info.get("in_chans") or 3, h, wd]
    out: dict[str, Any] = {
        "file": str(path), "format": f"{w.container}, {LAYOUT_TEXT[w.layout]}", "tensors": len(w.state_dict),
        "variant": info.get("variant"), "model_name": w.meta.get("model_name") or None,
        "architecture": describe_state_dict(info), "num_classes": info.get("num_classes"),
        "class_names": [str(c) for c in w.meta.get("class_names") or []] or None,
        "input_size": list(size) if size else None,
        "ema": any(k in ckpt["entries"] for k in ("ema_state_dict", "model_ema", "state_dict_ema")),
        "digest": _digest_status(ckpt, w.container),
    }
    if ckpt.get("format") == "pitvit" and "epoch" in ckpt:
        out.update(epoch=int(ckpt["epoch"]), step_in_epoch=int(ckpt.get("step_in_epoch", 0)),
                   best_metric=ckpt.get("best_metric") or None, metrics=ckpt.get("metrics") or None)
    if ckpt.get("provenance"):
        out["provenance"] = ckpt["provenance"]
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items() if x is not None)
    return str(v)


def format_info(d: dict[str, Any]) -> str:
    """:func:`describe_file`'s result as ``key: value`` lines, for a person to read."""
    lines = [f"file:          {d['file']}", f"format:        {d['format']}, {d['tensors']} tensors",
             f"variant:       {d['variant'] or 'none registered matches'}"
             + (f" (the file names {d['model_name']})" if d["model_name"] and d["model_name"] != d["variant"]
                else ""),
             f"architecture:  {d['architecture']}"]
    names = d.get("class_names")
    classes = f"{d['num_classes']}" + (f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                                       if names else "")
    lines.append(f"classes:       {classes}")
    size = d.get("input_size")
    lines.append(f"input size:    {'x'.join(map(str, size)) if size else 'not recorded'}")
    if d.get("ema"):
        lines.append("ema:           EMA weights stored too (--ema reads them)")
    if "epoch" in d:
        done = f"{d['epoch']} epoch(s) done" + (f", {d['step_in_epoch']} batches of the next" if d["step_in_epoch"]
                                                else "")
        lines.append(f"run:           {done}")
        best = d.get("best_metric") or {}
        if best.get("value") is not None:
            lines.append(f"best:          {best['name']} {best['value']:.4g} (epoch {best['epoch']})")
        if d.get("metrics"):
            lines.append(f"last epoch:    {_fmt(d['metrics'])}")
    prov = d.get("provenance")
    if prov:
        git = prov.get("git")
        code = f"pitvit {prov.get('pitvit')}" + (
            f", git {git['commit'][:12]}{' (uncommitted changes)' if git.get('dirty') else ''}" if git else "")
        lines += [f"made by:       {code}",
                  f"libraries:     torch {prov.get('torch')}, timm {prov.get('timm')}, Python {prov.get('python')}",
                  f"command:       {prov.get('command')}",
                  f"machine:       {prov.get('device')}, {prov.get('processes')} process(es), {prov.get('created')}"]
    else:
        lines.append("provenance:    not recorded")
    lines.append(f"digest:        {d['digest']}")
    return "\n".join(lines)
