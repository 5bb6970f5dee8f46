"""Resolve a model setting — http(s) URL, hf:// reference or local path — to a local file.

URLs are downloaded once into the models directory, atomically: the bytes go to a temporary file
in the same directory that is renamed into place only when complete, so an interrupted download
never leaves a truncated model under the final name for the next start to trip over.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

HF_SCHEME = "hf://"
_CHUNK = 1 << 20


class ModelResolutionError(RuntimeError):
    """The model setting cannot be turned into a file; the message is one line for the user."""


def resolve_model(value: str, models_dir: Path, progress: IO[str] | None = None) -> Path:
    """The local path of the model named by `value`, downloading it if needed."""
    value = value.strip()
    if not value:
        raise ModelResolutionError("empty model setting")
    parsed = urllib.parse.urlparse(value)
    if value.startswith(HF_SCHEME):
        return _resolve_hf(value)
    if parsed.scheme in ("http", "https"):
        return _resolve_url(value, models_dir, progress)
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:" on Windows is a drive, not a scheme
        raise ModelResolutionError(
            f"unsupported model location {value!r}: use an http(s) URL, hf://owner/repo/file.onnx "
            "or a local path"
        )
    path = Path(value).expanduser()
    if not path.is_file():
        raise ModelResolutionError(f"model file not found: {path}")
    return path


def _resolve_hf(value: str) -> Path:
    parts = value[len(HF_SCHEME) :].split("/")
    if len(parts) < 3 or not all(parts):
        raise ModelResolutionError(
            f"invalid Hugging Face reference {value!r}: expected hf://owner/repo/path/file.onnx"
        )
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except LocalEntryNotFoundError:
        raise ModelResolutionError(
            f"{value} is not in the Hugging Face cache and cannot be downloaded "
            "(offline, or the hub is unreachable)"
        ) from None
    except HfHubHTTPError as exc:
        raise ModelResolutionError(f"cannot download {value}: {str(exc).splitlines()[0]}") from None
    except (OSError, ValueError) as exc:
        raise ModelResolutionError(f"cannot download {value}: {exc}") from None


def _filename_from_url(url: str) -> str:
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name:
        raise ModelResolutionError(f"cannot tell a file name from the URL {url}")
    return name


def _resolve_url(url: str, models_dir: Path, progress: IO[str] | None) -> Path:
    target = models_dir / _filename_from_url(url)
    if target.is_file():
        return target
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelResolutionError(f"cannot create models directory {models_dir}: {exc}") from None
    log.info("Downloading %s to %s", url, target)
    download(url, target, progress if progress is not None else sys.stderr)
    return target


def download(url: str, target: Path, progress: IO[str] | None = None) -> None:
    """Download to `target` atomically, with a progress bar on `progress` (a terminal)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "photofield-ai"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0)
            bar = _ProgressBar(target.name, total, progress)
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
            bar.close()
            if total and bar.done != total:
                raise ModelResolutionError(
                    f"download of {url} ended early ({bar.done} of {total} bytes)"
                )
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(target)
    except urllib.error.HTTPError as exc:
        raise ModelResolutionError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelResolutionError(f"cannot download {url}: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)


class _ProgressBar:
    def __init__(self, name: str, total: int, stream: IO[str] | None) -> None:
        self.name, self.total, self.stream = name, total, stream
        self.done = 0
        self._last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.stream is not None and now - self._last >= 0.2:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        assert self.stream is not None
        mb = self.done / 1e6
        if self.total:
            frac = self.done / self.total
            filled = int(frac * 30)
            line = f"\r{self.name} [{'#' * filled}{'.' * (30 - filled)}] {frac:6.1%} {mb:.1f} MB"
        else:
            line = f"\r{self.name} {mb:.1f} MB"
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
