"""Resolve a model setting — http(s) URL, hf:// reference or local path — to a local file.

URLs are downloaded once into the models directory, atomically: the bytes go to a temporary file
in the same directory that is renamed into place only when complete, so an interrupted download
never leaves a truncated model under the final name for the next start to trip over.
"""

from __future__ import annotations

import hashlib
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


class ModelDownloadError(ModelResolutionError):
    """The file had to be downloaded and could not be (offline, unreachable, refused)."""


SIDECAR = ".sha256"  # next to a downloaded file: the digest of what was downloaded


def split_sha256(value: str) -> tuple[str, str | None]:
    """`location#sha256=<hex>` pins the file's content; returns (location, hex or None)."""
    location, _, fragment = value.partition("#")
    if not fragment:
        return value, None
    key, _, digest = fragment.partition("=")
    digest = digest.strip().lower()
    if key != "sha256" or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ModelResolutionError(
            f"invalid model pin {fragment!r} in {value!r}: expected #sha256=<64 hex digits>"
        )
    return location, digest


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str | None, what: str) -> None:
    if expected is not None and (actual := file_sha256(path)) != expected:
        raise ModelResolutionError(
            f"{what} has sha256 {actual}, expected {expected} (corrupt or changed upstream)"
        )


def resolve_model(
    value: str, models_dir: Path, progress: IO[str] | None = None, verify: bool = False
) -> Path:
    """The local path of the model named by `value`, downloading it if needed. A
    `#sha256=<hex>` suffix makes the file's content checked; `verify` also re-checks a file
    downloaded before against the digest recorded then (a shared cache's integrity)."""
    value, sha256 = split_sha256(value.strip())
    path = _resolve_location(value, models_dir, progress, sha256, verify)
    _check_sha256(path, sha256, str(path))
    return path


def _resolve_location(
    value: str, models_dir: Path, progress: IO[str] | None, sha256: str | None, verify: bool
) -> Path:
    if not value:
        raise ModelResolutionError("empty model setting")
    parsed = urllib.parse.urlparse(value)
    if value.startswith(HF_SCHEME):
        return _resolve_hf(value)
    if parsed.scheme in ("http", "https"):
        return _resolve_url(value, models_dir, progress, sha256, verify)
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
        raise ModelDownloadError(
            f"{value} is not in the Hugging Face cache and cannot be downloaded "
            "(offline, or the hub is unreachable)"
        ) from None
    except HfHubHTTPError as exc:
        raise ModelDownloadError(f"cannot download {value}: {str(exc).splitlines()[0]}") from None
    except (OSError, ValueError) as exc:
        raise ModelDownloadError(f"cannot download {value}: {exc}") from None


def _filename_from_url(url: str) -> str:
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name:
        raise ModelResolutionError(f"cannot tell a file name from the URL {url}")
    return name


def verify_sidecar(path: Path) -> bool:
    """Whether `path` still has the content it was downloaded with (its .sha256 sidecar);
    a file without one (copied in by hand) is taken as it is."""
    sidecar = path.with_name(path.name + SIDECAR)
    if not sidecar.is_file():
        return True
    expected = sidecar.read_text().split()[0].strip().lower()
    if file_sha256(path) == expected:
        return True
    log.warning("%s does not match its recorded sha256: downloading it again", path)
    return False


def _resolve_url(
    url: str,
    models_dir: Path,
    progress: IO[str] | None,
    sha256: str | None = None,
    verify: bool = False,
) -> Path:
    target = models_dir / _filename_from_url(url)
    if target.is_file() and (not verify or verify_sidecar(target)):
        return target
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelResolutionError(f"cannot create models directory {models_dir}: {exc}") from None
    log.info("Downloading %s to %s", url, target)
    download(url, target, progress if progress is not None else sys.stderr, sha256)
    return target


def download(
    url: str, target: Path, progress: IO[str] | None = None, sha256: str | None = None
) -> None:
    """Download to `target` atomically, with a progress bar on `progress` (a terminal); with
    `sha256`, a file whose content differs is never put in place."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "photofield-ai"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0)
            bar = _ProgressBar(target.name, total, progress)
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            bar.close()
            if total and bar.done != total:
                raise ModelResolutionError(
                    f"download of {url} ended early ({bar.done} of {total} bytes)"
                )
            out.flush()
            os.fsync(out.fileno())
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ModelResolutionError(
                f"download of {url} has sha256 {digest.hexdigest()}, expected {sha256} "
                "(corrupt or changed upstream)"
            )
        target.with_name(target.name + SIDECAR).write_text(f"{digest.hexdigest()}  {target.name}\n")
        tmp.replace(target)
    except urllib.error.HTTPError as exc:
        raise ModelDownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelDownloadError(f"cannot download {url}: {reason}") from None
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
