"""A small stand-in for the Hugging Face Hub and for plain HTTPS file hosts, on 127.0.0.1.

It answers what `huggingface_hub.hf_hub_download` asks (checked against huggingface_hub 2.4's
file_download.py):

- HEAD/GET {hub}/{repo_id}/resolve/{revision}/{path} (datasets: {hub}/datasets/{repo_id}/resolve/…):
  like the Hub for an LFS file, a 302 to a storage host (here: a second port, a different origin, so
  huggingface_hub stops there as it does for the Hub's CDN) with X-Repo-Commit (the full commit the
  revision resolves to), X-Linked-Etag (the sha256) and X-Linked-Size; unknown files answer 404 with
  X-Error-Code EntryNotFound, unknown repositories RepoNotFound.
- GET/HEAD {cdn}/blobs/{sha256}: the bytes, with Content-Length, ETag and HTTP Range (206) support.
- GET/HEAD {hub}/files/{name}: a plain file URL (what GitHub raw addresses are to the real tool).

Every request is logged in `requests` (method, path) so tests can assert that none was made.
`corrupt` (keys) serves altered bytes of the same size under the true digest's headers; `cut` (key →
count) makes the next `count` transfers of that file stop half way, with the full Content-Length
announced, and close the connection. `rate` (bytes per second) paces every transfer like a slow link.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Blob:
    data: bytes
    sha256: str = ""

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.data).hexdigest()


def fake_commit(repo_id: str) -> str:
    return hashlib.sha1(repo_id.encode()).hexdigest()


@dataclass
class HubServer:
    hub_files: dict[tuple[str, str, str], Blob] = field(default_factory=dict)  # (repo_type, repo, path)
    url_files: dict[str, Blob] = field(default_factory=dict)  # name → blob
    corrupt: set[str] = field(default_factory=set)  # keys: "repo_type:repo/path" or "files/name"
    cut: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)  # Range headers received
    rate: float | None = None  # bytes per second for file bodies; None: as fast as the socket goes

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._hub = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "hub"))
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "cdn"))
        self._threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
                         for s in (self._hub, self._cdn)]

    # -- setup -------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def add_hub_file(self, repo_id: str, path: str, content: bytes | Path, repo_type: str = "model") -> None:
        data = content.read_bytes() if isinstance(content, Path) else content
        self.hub_files[(repo_type, repo_id, path)] = Blob(data)

    def add_url_file(self, name: str, content: bytes | Path) -> str:
        data = content.read_bytes() if isinstance(content, Path) else content
        self.url_files[name] = Blob(data)
        return f"{self.endpoint}/files/{name}"

    def start(self) -> HubServer:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        for s in (self._hub, self._cdn):
            s.shutdown()
            s.server_close()

    def __enter__(self) -> HubServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- bookkeeping -------------------------------------------------------------------------------

    def log(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def take_cut(self, key: str) -> bool:
        with self._lock:
            if self.cut.get(key, 0) > 0:
                self.cut[key] -= 1
                return True
            return False

    def blob_by_sha(self, sha: str) -> tuple[str, Blob] | None:
        for (kind, repo, path), blob in self.hub_files.items():
            if blob.sha256 == sha:
                return f"{kind}:{repo}/{path}", blob
        return None


def _handler(server: HubServer, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def do_GET(self) -> None:
            self._answer(head=False)

        def _answer(self, head: bool) -> None:
            path = urlsplit(self.path).path
            server.log(self.command, f"{role}:{path}")
            if self.headers.get("Range"):
                server.ranges.append(self.headers["Range"])
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if role == "cdn" and len(parts) == 2 and parts[0] == "blobs":
                found = server.blob_by_sha(parts[1])
                if found is None:
                    return self._empty(404)
                return self._send_bytes(found[0], found[1], head)
            if role == "hub" and len(parts) == 2 and parts[0] == "files":
                blob = server.url_files.get(parts[1])
                if blob is None:
                    return self._empty(404)
                return self._send_bytes(f"files/{parts[1]}", blob, head)
            if role == "hub":
                return self._resolve(parts)
            self._empty(404)

        def _resolve(self, parts: list[str]) -> None:
            repo_type = "model"
            if parts and parts[0] in ("datasets", "spaces"):
                repo_type, parts = parts[0][:-1], parts[1:]
            if len(parts) < 5 or parts[2] != "resolve":
                return self._empty(404)
            repo_id, revision, file_path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            if not any(k[0] == repo_type and k[1] == repo_id for k in server.hub_files):
                return self._empty(404, {"X-Error-Code": "RepoNotFound"})
            commit = revision if len(revision) == 40 else fake_commit(repo_id)
            blob = server.hub_files.get((repo_type, repo_id, file_path))
            if blob is None:
                return self._empty(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
            self._empty(302, {
                "Location": f"{server.cdn}/blobs/{blob.sha256}",
                "X-Repo-Commit": commit,
                "X-Linked-Etag": f'"{blob.sha256}"',
                "X-Linked-Size": str(len(blob.data)),
                "ETag": f'"{hashlib.sha1(blob.data).hexdigest()}"',
            })

        def _send_bytes(self, key: str, blob: Blob, head: bool) -> None:
            data = blob.data
            if key in server.corrupt:  # same size, different bytes
                data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
            start, status = 0, 200
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start, status = int(rng[6:-1]), 206
            body = data[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", f'"{blob.sha256}"')
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            if server.take_cut(key):  # announce everything, deliver half, hang up
                self._write(body[: len(body) // 2])
                self.close_connection = True
                return
            self._write(body)

        def _write(self, body: bytes) -> None:
            if not server.rate:
                self.wfile.write(body)
                return
            step = 8192  # small slices on a steady clock: what a slow link delivers
            start = time.monotonic()
            for i in range(0, len(body), step):
                self.wfile.write(body[i:i + step])
                self.wfile.flush()
                lag = start + (i + step) / server.rate - time.monotonic()
                if lag > 0:
                    time.sleep(lag)

        def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler
