"""Published weights by name: ``hf-hub:OWNER/NAME[@REVISION]`` references, fetched with ``huggingface_hub``.

timm hosts the eight ImageNet-1k PiT checkpoints (converted from the official release) as
``timm/pit_{ti,xs,s,b}[_distilled]_224.in1k``; each variant's ``PretrainedCfg.hf_hub_id`` names its
repository, so ``create_model("pit_ti", pretrained=True)`` means ``weights="hf-hub:timm/pit_ti_224.in1k"``.

A file is downloaded only when a reference is asked for, by ``huggingface_hub`` into its standard cache
(``HF_HUB_CACHE``, else ``HF_HOME/hub``, by default ``~/.cache/huggingface/hub``) with its progress bar; an
interrupted download resumes. Once cached, the file is used without the network, also with
``HF_HUB_OFFLINE=1``. ``HF_ENDPOINT`` picks another server (a mirror). These variables are read when a file
is asked for, not only when ``huggingface_hub`` is first imported, so setting them at run time works too.

When the server cannot be reached, ``huggingface_hub`` retries with back-off for tens of seconds per file
before it gives up. pitvit first asks the server once for the file's metadata, with a short timeout
(``HF_HUB_ETAG_TIMEOUT`` seconds when set, else :data:`PROBE_TIMEOUT`) and no retries; when that fails for want
of a connection, only the cache is looked at, so a reference that is not cached fails within seconds.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pitvit.utils.errors import CheckpointError, ConfigError, first_line

__all__ = ["HUB_PREFIX", "WEIGHT_FILES", "is_hub_reference", "parse_hub_reference", "download"]

HUB_PREFIX = "hf-hub:"
PROBE_TIMEOUT = 3.0  # seconds to wait for the server before falling back to the cache
# What a repository may hold, in order of preference (timm's repositories have both).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_hub_reference(source: Any) -> bool:
    """Whether ``source`` is an ``hf-hub:`` reference rather than a path or a state dict."""
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def parse_hub_reference(ref: str) -> tuple[str, str | None]:
    """``"hf-hub:OWNER/NAME[@REVISION]"`` -> ``(repo_id, revision or None)``.

    Raises:
        ConfigError: not of that form.
    """
    body = ref[len(HUB_PREFIX):] if ref.startswith(HUB_PREFIX) else ref
    repo_id, _, revision = body.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or (_ and not revision):
        raise ConfigError(f"{ref!r} is not a Hub reference; write hf-hub:OWNER/NAME or hf-hub:OWNER/NAME@REVISION "
                          f"(for example hf-hub:timm/pit_ti_224.in1k)")
    return repo_id, revision or None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or str(constants.ENDPOINT)


def _cache_dir() -> str:
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return str(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    return _truthy(value) if value is not None else bool(constants.HF_HUB_OFFLINE)


def _url(repo_id: str, revision: str | None, filename: str) -> str:
    return f"{_endpoint()}/{repo_id}/resolve/{revision or 'main'}/{filename}"


def _unreachable(url: str) -> Exception | None:
    """The error of one metadata request to ``url`` when it got no answer at all (no connection, a timeout);
    ``None`` when the server answered, whatever it said (a missing file is for the download to report)."""
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.errors import HfHubHTTPError

    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or PROBE_TIMEOUT)
    try:
        get_hf_file_metadata(url, timeout=timeout)
    except HfHubHTTPError:
        return None
    except (TypeError, NameError, AttributeError):
        raise  # a bug, not the network
    except Exception as e:  # httpx's connection and timeout errors, an OSError from the resolver
        return e
    return None


def download(ref: str) -> Path:
    """The local file of a Hub reference: from the cache, else downloaded into it.

    Raises:
        ConfigError: a malformed reference.
        CheckpointError: the file is neither cached nor downloadable (offline, no network, no such repository
            or file, an interrupted transfer); the one-line message names the file and how to pass a local copy.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                       RevisionNotFoundError)

    repo_id, revision = parse_hub_reference(ref)
    url = _url(repo_id, revision, WEIGHT_FILES[0])
    own_copy = (f"download {url} yourself and pass the file's path instead (weights=PATH in Python, "
                f"--weights PATH on the command line)")
    not_cached: Exception | None = None
    offline = _offline()
    if not offline:
        not_cached = _unreachable(url)
        offline = not_cached is not None  # nobody answers: the cache or nothing, without minutes of retries
    for filename in WEIGHT_FILES:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, library_name="pitvit",
                                        endpoint=_endpoint(), cache_dir=_cache_dir(), local_files_only=offline))
        except LocalEntryNotFoundError as e:
            not_cached = not_cached or e  # offline or no connection: another file name may still be cached
        except (RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise CheckpointError(f"{ref}: no such repository or revision at {_endpoint()} "
                                  f"({type(e).__name__}); check the name, or {own_copy}") from e
        except EntryNotFoundError:
            continue  # not in this repository: try the next file name
        except (TypeError, NameError, AttributeError):
            raise  # a bug, not the network
        except Exception as e:  # the transfer itself: HTTP errors, dropped connections, a size check that failed
            raise CheckpointError(f"{ref}: downloading {filename} failed ({type(e).__name__}: {first_line(e)}); "
                                  f"run again to resume, or {own_copy}") from e
    if not_cached is not None:
        why = "HF_HUB_OFFLINE is set" if _offline() else f"no connection: {first_line(not_cached)}"
        raise CheckpointError(f"{ref}: {WEIGHT_FILES[0]} is not in the Hugging Face cache ({_cache_dir()}) and "
                              f"cannot be downloaded ({why}); {own_copy}") from not_cached
    raise CheckpointError(f"{ref}: the repository holds none of {', '.join(WEIGHT_FILES)}; pass a local file "
                          f"instead (weights=PATH, --weights PATH)")

