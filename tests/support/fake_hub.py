"""A Hugging Face hub of a few files on 127.0.0.1, for tests that download without the
network: it answers what huggingface_hub asks for a file, `HEAD` then `GET`
`/{repo_id}/resolve/{revision}/{filename}`, with the headers it checks (X-Repo-Commit, ETag,
Content-Length, X-Error-Code). Point HF_ENDPOINT at `hub.url`."""

from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]):
        """repos: {repo_id: {filename: content}}."""
        self.repos = repos
        self.requests: list[tuple[str, str]] = []  # (method, path), in order
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        self.requests.append((request.command, request.path))
        repo_id, revision, filename = _parse(request.path)
        files = self.repos.get(repo_id) if repo_id else None
        if files is None:
            return _send(request, 404, {"X-Error-Code": "RepoNotFound"})
        if filename not in files:
            return _send(request, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
        content = files[filename]
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
                   "Content-Length": str(len(content)), "Content-Type": "application/octet-stream"}
        _send(request, 200, headers, content if body else b"")


def _parse(path: str):
    """(repo_id, revision, filename) of `/{org}/{name}/resolve/{revision}/{filename}`."""
    parts = unquote(path.split("?", 1)[0]).lstrip("/").split("/")
    if len(parts) < 5 or parts[2] != "resolve":
        return None, None, None
    return f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])


def _send(request: BaseHTTPRequestHandler, status: int, headers: dict, content: bytes = b"") -> None:
    request.send_response(status)
    headers.setdefault("Content-Length", str(len(content)))
    for key, value in headers.items():
        request.send_header(key, value)
    request.end_headers()
    if content:
        request.wfile.write(content)


def closed_port_url() -> str:
    """An endpoint on 127.0.0.1 where nothing listens: every connection is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def fake_hub_cache(cache: Path, repo_id: str, files: dict) -> None:
    """The layout huggingface_hub's cache uses: refs/main -> snapshots/<commit>/<file>."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
