"""Download public source files (see ``manifest.json``) with resume, progress and checksum checks.

:func:`fetch` downloads into ``<dest>/<filename>.part``, resumes an existing ``.part`` with an HTTP
``Range`` request, verifies the sha256 when one is known and only then renames the file into place
(atomically, ``os.replace``). On a checksum mismatch the ``.part`` file is deleted (resuming a corrupt
partial file could never succeed) and :class:`ChecksumError` is raised; an existing destination file
is never touched by a failed download.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cellformer.errors import UserError, did_you_mean

MANIFEST_PATH = Path(__file__).with_name("manifest.json")

CHUNK = 1 << 16
USER_AGENT = "cellformer-fetch/0.1 (+https://github.com/)"


class ChecksumError(UserError):
    """The downloaded bytes do not have the expected sha256."""


class UnknownSourceError(UserError, KeyError):
    """A name that is neither a URL nor a manifest entry (also a ``KeyError``, as a lookup failure)."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


@dataclass(frozen=True)
class ManifestEntry:
    """One public file: where it lives, what it is and which importer reads it."""

    name: str
    url: str
    filename: str
    size: int | None
    sha256: str | None
    licence: str
    citation: str
    format: str
    importer: str = ""
    member: str | None = None
    notes: str = ""


def load_manifest(path: str | Path = MANIFEST_PATH) -> dict[str, ManifestEntry]:
    """The manifest's entries by name."""
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    fields = set(ManifestEntry.__dataclass_fields__)
    return {e["name"]: ManifestEntry(**{k: v for k, v in e.items() if k in fields}) for e in raw["files"]}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _resolve(name_or_url: str, sha256: str | None) -> tuple[str, str, str | None]:
    """``(url, filename, sha256)`` for a manifest name or a URL."""
    manifest = load_manifest()
    if name_or_url in manifest:
        e = manifest[name_or_url]
        return e.url, e.filename, sha256 or e.sha256
    parsed = urllib.parse.urlparse(name_or_url)
    if parsed.scheme in {"http", "https", "file", "ftp"}:
        filename = Path(urllib.parse.unquote(parsed.path)).name or "download"
        return name_or_url, filename, sha256
    raise UnknownSourceError(
        f"{name_or_url!r} is neither a URL nor a manifest entry; known entries: {', '.join(manifest)}"
        f"{did_you_mean(name_or_url, manifest)}"
    )


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def fetch(
    name_or_url: str,
    dest_dir: str | Path,
    sha256: str | None = None,
    progress: bool = True,
    force: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Download a manifest entry (by name) or a URL into ``dest_dir`` and return the file's path.

    Args:
        name_or_url: a name from ``manifest.json`` (see :func:`load_manifest`) or an http(s) URL.
        dest_dir: directory for the file (created if needed).
        sha256: expected hex digest; defaults to the manifest's (None = not checked).
        progress: show a tqdm progress bar.
        force: download again even when the destination exists (and matches).
        timeout: socket timeout in seconds.

    An existing destination file is returned as is when its sha256 matches, or when no sha256 is known
    (pass ``force=True`` to refresh it). A partial ``<filename>.part`` left by an interrupted download is
    resumed with an HTTP Range request (the server may answer 200 instead, then the download restarts).
    The result is verified before it is renamed into place; a mismatch deletes the ``.part``, raises
    :class:`ChecksumError` and leaves any existing destination file untouched.
    """
    url, filename, expected = _resolve(name_or_url, sha256)
    expected = expected.lower() if expected else None
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / filename
    part = dest_dir / (filename + ".part")
    if dest.exists() and not force and (expected is None or sha256_file(dest) == expected):
        return dest

    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:
            # the server has nothing beyond what we hold: the partial file is complete
            resp = None
        else:
            raise
    if resp is not None:
        with resp:
            status = getattr(resp, "status", 200)
            mode = "ab"
            if start and status == 206:
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != start:
                    raise OSError(f"{url}: server answered an unexpected Content-Range {m and m.group(0)!r}")
            elif start:
                start, mode = 0, "wb"  # Range ignored: start over
            else:
                mode = "wb"
            length = resp.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            with (
                open(part, mode) as out,
                tqdm(
                    total=total,
                    initial=start,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=filename,
                    disable=not progress,
                ) as bar,
            ):
                for block in iter(lambda: resp.read(CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
            if total is not None and part.stat().st_size != total:
                raise OSError(f"{url}: download ended at {part.stat().st_size} of {total} bytes; run again to resume")
    if expected is not None:
        got = sha256_file(part)
        if got != expected:
            part.unlink()
            raise ChecksumError(
                f"{url}: sha256 {got} does not match the expected {expected}; the partial file was deleted"
                + (f" and {dest} was left as it was" if dest.exists() else "")
            )
    os.replace(part, dest)
    return dest
