"""Finding model files: a local directory, or a Hugging Face hub repository (cached or downloaded).

A *source* is either a path to a local directory holding the same files as the published repo, or a
hub repo id such as ``"yuvalkirstain/PickScore_v1"``. With no network (``HF_HUB_OFFLINE=1`` or no
route) a file that is not in the local hub cache fails at once with :class:`ModelSourceError`,
naming the source and saying how to provide it.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Iterable

from .errors import CheckpointError, ModelSourceError


def is_local(source: str | os.PathLike) -> bool:
    return Path(source).expanduser().is_dir()


def _help(source: str, what: str) -> str:
    return (
        f"Download it where you have network access (e.g. `hf download {source}`) and "
        f"copy the hub cache, or put the files ({what}) in a directory and pass it as the model "
        f"(`--model DIR` on the command line, `model=DIR` in Python)."
    )


def find_file(source: str | os.PathLike, candidates: Iterable[str], *, what: str) -> Path:
    """Return the first of ``candidates`` (relative file names) present in ``source``.

    For a local directory the files are looked up directly; for a hub id each candidate is fetched
    with ``hf_hub_download`` (cache first). ``what`` describes the file for error messages.
    """
    candidates = list(candidates)
    if is_local(source):
        root = Path(source).expanduser()
        for name in candidates:
            if (root / name).is_file():
                return root / name
        raise ModelSourceError(f"{root}: no {what} found (looked for {', '.join(candidates)})")
    source = str(source)
    if os.sep in source and not _looks_like_repo_id(source):
        raise ModelSourceError(f"{source}: no such directory (and not a hub repo id like 'owner/name')")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    last: Exception | None = None
    for name in candidates:
        try:
            return Path(hf_hub_download(source, name, local_files_only=not hub_reachable()))
        except LocalEntryNotFoundError:  # subclass of EntryNotFoundError: test it first
            raise ModelSourceError(
                f"Model '{source}' ({what}: {name}) is not in the local hub cache and the hub cannot be "
                f"reached (offline). " + _help(source, what)
            ) from None
        except EntryNotFoundError as exc:
            last = exc
            continue
        except HFValidationError:
            raise ModelSourceError(f"'{source}' is neither a local directory nor a valid hub repo id") from None
        except RepositoryNotFoundError:
            raise ModelSourceError(f"'{source}' is neither a local directory nor a hub repository. " + _help(source, what)) from None
        except OSError as exc:  # network errors surface as OSError subclasses
            raise ModelSourceError(f"Model '{source}' could not be fetched: {exc}. " + _help(source, what)) from None
    raise ModelSourceError(f"hub repo '{source}' has no {what} (looked for {', '.join(candidates)}); last error: {last}")


def local_dir(source: str | os.PathLike, allow_patterns: list[str], *, what: str) -> Path:
    """A local directory with the files of ``source`` matching ``allow_patterns`` (for from_pretrained)."""
    if is_local(source):
        return Path(source).expanduser()
    source = str(source)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(source, allow_patterns=allow_patterns, local_files_only=not hub_reachable()))
    except LocalEntryNotFoundError:
        raise ModelSourceError(
            f"Model '{source}' ({what}) is not in the local hub cache and the hub cannot be reached (offline). "
            + _help(source, what)
        ) from None
    except RepositoryNotFoundError:
        raise ModelSourceError(f"'{source}' is neither a local directory nor a hub repository. " + _help(source, what)) from None
    except HFValidationError:
        raise ModelSourceError(f"'{source}' is neither a local directory nor a valid hub repo id") from None
    except OSError as exc:
        raise ModelSourceError(f"Model '{source}' could not be fetched: {exc}. " + _help(source, what)) from None


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint answers a TCP connection, so that a missing route fails at once
    instead of after the client's retries. ``HF_HUB_OFFLINE=1`` short-cuts to False."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_repo_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


CONFIG_FILES = ("config.json", "preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json",
                "generation_config.json", "open_clip_config.json", "model.safetensors.index.json")


def read_json(path: str | os.PathLike, what: str = "configuration") -> dict:
    """A JSON object from ``path``; a :class:`CheckpointError` naming the file when it is unreadable,
    not JSON, or not an object."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read the {what}: {exc}") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: the {what} is not valid JSON ({exc}); the file is corrupt or truncated") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: the {what} must be a JSON object, found {type(value).__name__}")
    return value


def check_safetensors(path: str | os.PathLike) -> None:
    """Read the header of a safetensors file (cheap); a :class:`CheckpointError` naming it when the file
    is corrupt or truncated."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except Exception as exc:  # SafetensorError, OSError: header too large, incomplete metadata, ...
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); the file is corrupt or "
                              f"truncated") from None


def check_model_dir(directory: str | os.PathLike) -> None:
    """Check the JSON configs and safetensors weights of a model directory before a ``from_pretrained``,
    so that a corrupt file is named instead of surfacing as a library traceback."""
    directory = Path(directory)
    for name in CONFIG_FILES:
        if (directory / name).is_file():
            read_json(directory / name, name)
    for path in sorted(directory.glob("*.safetensors")):
        check_safetensors(path)
