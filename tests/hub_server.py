"""A tiny stand-in for the Hugging Face Hub on 127.0.0.1: serves one folder as a model repo, the way the Hub does
(repo info API, then HEAD/GET on /resolve/ with commit and ETag headers), so huggingface_hub's real download and
cache code runs against it."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repo_id: str, folder: Path):
        self.repo_id, self.folder = repo_id, folder
        self.files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _handle(self, head: bool):
                hub.requests.append(f"{self.command} {self.path}")
                path = self.path.split("?")[0]
                if path.startswith(f"/api/models/{hub.repo_id}/tree/"):
                    body = json.dumps([
                        {"type": "file", "path": name, "size": p.stat().st_size, "oid": hub.blob_id(name)}
                        for name, p in hub.files.items()
                    ]).encode()
                    return self._send(200, body, {"Content-Type": "application/json"}, head)
                if path.startswith(f"/api/models/{hub.repo_id}"):
                    body = json.dumps({
                        "id": hub.repo_id, "modelId": hub.repo_id, "sha": COMMIT, "private": False,
                        "siblings": [{"rfilename": f} for f in hub.files],
                    }).encode()
                    return self._send(200, body, {"Content-Type": "application/json"}, head)
                prefix = f"/{hub.repo_id}/resolve/"
                if path.startswith(prefix):
                    _, _, name = path[len(prefix):].partition("/")
                    if name not in hub.files:
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                    data = hub.files[name].read_bytes()
                    etag = '"' + hub.blob_id(name) + '"'
                    return self._send(200, data, {"X-Repo-Commit": COMMIT, "ETag": etag,
                                                  "Content-Type": "application/octet-stream"}, head)
                return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)

            def do_GET(self):
                self._handle(False)

            def do_HEAD(self):
                self._handle(True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def blob_id(self, name: str) -> str:
        data = self.files[name].read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
