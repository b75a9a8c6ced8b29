"""fetch(): fresh, resumed (HTTP Range) and checksum-failing downloads from a local HTTP server."""

from __future__ import annotations

import argparse
import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cellformer.data.importers.cli import register
from cellformer.data.importers.fetch import ChecksumError, fetch, load_manifest

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves ``files`` with support for ``Range: bytes=N-`` (206 + Content-Range)."""

    files: dict[str, bytes] = {}
    log: list[tuple[str, str | None]] = []
    honour_range = True

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        body = self.files.get(self.path)
        rng = self.headers.get("Range")
        type(self).log.append((self.path, rng))
        if body is None:
            self.send_error(404)
            return
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and self.honour_range:
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            chunk = body[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            chunk = body
            self.send_response(200)
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(chunk)

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@pytest.fixture()
def server():
    handler = type("Handler", (_Handler,), {"files": {"/data/file.bin": PAYLOAD}, "log": [], "honour_range": True})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/data/file.bin"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_fresh_download_verifies(server, tmp_path):
    handler, url = server
    path = fetch(url, tmp_path, sha256=SHA, progress=False, timeout=10)
    assert path == tmp_path / "file.bin" and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "file.bin.part").exists()
    assert handler.log == [("/data/file.bin", None)]
    # already there and verified: no second request
    assert fetch(url, tmp_path, sha256=SHA, progress=False, timeout=10) == path
    assert len(handler.log) == 1


def test_resume_uses_range(server, tmp_path):
    handler, url = server
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:30000])
    path = fetch(url, tmp_path, sha256=SHA, progress=False, timeout=10)
    assert path.read_bytes() == PAYLOAD
    assert handler.log == [("/data/file.bin", "bytes=30000-")]
    assert not (tmp_path / "file.bin.part").exists()


def test_resume_when_server_ignores_range(server, tmp_path):
    handler, url = server
    handler.honour_range = False
    (tmp_path / "file.bin.part").write_bytes(b"stale bytes that must not survive")
    path = fetch(url, tmp_path, sha256=SHA, progress=False, timeout=10)
    assert path.read_bytes() == PAYLOAD and handler.log[0][1] is not None


def test_complete_part_file_416(server, tmp_path):
    handler, url = server
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD)
    assert fetch(url, tmp_path, sha256=SHA, progress=False, timeout=10).read_bytes() == PAYLOAD


def test_checksum_mismatch_keeps_existing_file(server, tmp_path):
    handler, url = server
    old = tmp_path / "file.bin"
    old.write_bytes(b"the previous, good file")
    with pytest.raises(ChecksumError, match="does not match"):
        fetch(url, tmp_path, sha256="0" * 64, progress=False, timeout=10)
    assert old.read_bytes() == b"the previous, good file"
    assert not (tmp_path / "file.bin.part").exists()
    assert len(handler.log) == 1  # the download was attempted


def test_existing_file_without_checksum_is_kept(server, tmp_path):
    handler, url = server
    (tmp_path / "file.bin").write_bytes(b"local")
    assert fetch(url, tmp_path, progress=False, timeout=10).read_bytes() == b"local"
    assert handler.log == []
    assert fetch(url, tmp_path, progress=False, force=True, timeout=10).read_bytes() == PAYLOAD


def test_manifest_entries():
    m = load_manifest()
    assert {"string-v12-yeast-detailed", "biogrid-organism-tab3", "costanzo2016-pairwise"} <= set(m)
    assert {"kuzmin2018-data-s1", "kuzmin2020-tables"} <= set(m)
    formats = {"string-detailed", "biogrid-tab3", "costanzo2016", "kuzmin2018", "kuzmin2020"}
    formats |= {"npy-splits", "genotype-table"}  # genotype sources
    for e in m.values():
        assert e.url.startswith("https://") and e.licence and e.citation and e.format in formats
        assert e.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", e.sha256)
        assert e.size is None or e.size > 0
    assert m["string-v12-yeast-detailed"].licence == "CC BY 4.0"
    with pytest.raises(KeyError, match="known entries"):
        fetch("no-such-entry", "/nonexistent", progress=False)


def test_cli_fetch(server, tmp_path, capsys):
    _, url = server
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    register(sub)
    args = p.parse_args(["fetch", url, "--dest", str(tmp_path), "--sha256", SHA, "--quiet"])
    assert args.func(args) == 0
    assert SHA in capsys.readouterr().out and (tmp_path / "file.bin").read_bytes() == PAYLOAD
    args = p.parse_args(["fetch", "--list"])
    assert args.func(args) == 0
    assert "string-v12-yeast-detailed" in capsys.readouterr().out
    from cellformer.data.cli import main as data_main

    assert data_main(["fetch", url, "--dest", str(tmp_path / "x"), "--sha256", "1" * 64, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
