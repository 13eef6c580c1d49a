"""Finding named pretrained weights: the local cache first, then (when allowed) a download that fails fast.

Named weights (an OpenCLIP tag, a torchvision weights enum, a Hugging Face hub name) live in the caches the
libraries already use (``~/.cache/huggingface``, ``~/.cache/clip``, ``~/.cache/torch/hub``), so weights a
user already has are found without network. Downloads are off when ``ROBUSTSIG_OFFLINE``, ``HF_HUB_OFFLINE``
or ``TRANSFORMERS_OFFLINE`` is set (or ``allow_download=False``); then a missing file is an
:class:`~robustsig.errors.InputError` that says what was looked for and where, instead of a hang or a
library's stack trace.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from robustsig._progress import progress_enabled
from robustsig.errors import InputError

OFFLINE_VARIABLES = ("ROBUSTSIG_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
NETWORK_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 5.0


def downloads_allowed(allow_download: bool | None = None) -> bool:
    """``allow_download`` when given, else False exactly when one of :data:`OFFLINE_VARIABLES` is set to a
    true value (``1``, ``true``, ``yes``, ``on``)."""
    if allow_download is not None:
        return allow_download
    return not any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
                   for name in OFFLINE_VARIABLES)


def offline_hint(what: str, example: str = "openclip:ViT-B-32@/path/to/weights.safetensors") -> str:
    """How to get past a missing download."""
    return (f"Download {what} on a machine with network access (into the same cache), or point the spec at a "
            f"local copy (e.g. '{example}')")


@contextmanager
def network_timeout(seconds: float = NETWORK_TIMEOUT_S) -> Iterator[None]:
    """Give sockets opened inside the block a timeout, so that a download without network fails instead of
    hanging (urllib has none by default)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why ``url``'s host cannot be reached (DNS or TCP), or ``None`` when it can. One quick probe spares the
    minute of retries that download libraries spend on a machine without network."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as err:
        return f"cannot reach {parts.hostname}:{port} ({err})"
    return None


def hf_hub_file(repo_id: str, filenames: Sequence[str], *, what: str, allow_download: bool,
                cache_dir: str | None = None) -> str:
    """Path of the first of ``filenames`` found in a Hugging Face hub repo: cached copy first, then a download.

    Args:
        repo_id: ``org/name``.
        filenames: candidates in order of preference (e.g. the safetensors file before the pickle).
        what: what the file is, for messages (``"OpenCLIP weights 'ViT-B-32@openai'"``).
        allow_download: try the network when no candidate is cached.
        cache_dir: the hub cache (default: huggingface_hub's).
    """
    from huggingface_hub import constants, hf_hub_download

    for filename in filenames:
        try:
            return hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=True)
        except Exception:  # noqa: BLE001 - any failure here just means "not cached"
            continue
    tried = ", ".join(f"{repo_id}/{name}" for name in filenames)
    cache = cache_dir or constants.HF_HUB_CACHE
    if not allow_download:
        raise InputError(f"cannot load {what}: {tried} is not in the Hugging Face cache ({cache}) and downloads are "
                         f"off ({'/'.join(OFFLINE_VARIABLES)} set or allow_download=False). {offline_hint(what)}")
    offline = unreachable(constants.ENDPOINT)
    if offline:
        raise InputError(f"cannot load {what}: {tried} is not in the Hugging Face cache ({cache}) and {offline}. "
                         f"{offline_hint(what)}")
    errors = []
    with network_timeout():
        for filename in filenames:
            try:
                return hf_hub_download(repo_id, filename, cache_dir=cache_dir)
            except Exception as err:  # noqa: BLE001 - hub, HTTP and socket errors all mean "not downloadable"
                errors.append(f"{filename}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    raise InputError(f"cannot load {what}: {tried} is not cached ({cache}) and downloading failed "
                     f"({'; '.join(errors)}). {offline_hint(what)}")


def url_file(url: str, cache_dir: str | os.PathLike, *, what: str, allow_download: bool) -> str:
    """Path of ``cache_dir/<basename of url>``, downloading it first when absent and allowed."""
    target = Path(cache_dir).expanduser() / os.path.basename(url)
    if target.is_file():
        return str(target)
    if not allow_download:
        raise InputError(f"cannot load {what}: {target} is not there and downloads are off "
                         f"({'/'.join(OFFLINE_VARIABLES)} set or allow_download=False); it comes from {url}. "
                         f"{offline_hint(what)}")
    offline = unreachable(url)
    if offline:
        raise InputError(f"cannot load {what}: {target} is not there and {offline}; it comes from {url}. "
                         f"{offline_hint(what)}")
    import torch.hub

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with network_timeout():
            torch.hub.download_url_to_file(url, str(target), progress=progress_enabled())
    except Exception as err:  # noqa: BLE001 - urllib, HTTP and socket errors all mean "not downloadable"
        raise InputError(f"cannot load {what}: {target} is not there and downloading {url} failed "
                         f"({type(err).__name__}: {err}). {offline_hint(what)}") from None
    return str(target)
