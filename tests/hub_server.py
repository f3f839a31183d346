"""A small Hub-compatible HTTP server on loopback, for testing ``embedkit push`` without the internet.

It implements just the endpoints that ``huggingface_hub`` calls for ``create_repo``, ``create_branch``,
``repo_info``, ``upload_folder`` (``validate-yaml``, ``preupload`` answering every file ``regular``, the
ndjson ``commit``) and ``snapshot_download`` (``tree`` listing, ``HEAD``/``GET`` on ``resolve``), and
``dataset_info`` for the dataset repos listed in ``HubState.datasets``. File contents live on disk under
``root/blobs/<git sha1>``; commits are snapshots {path: blob sha1}.

Every request must carry ``Authorization: Bearer <token>``; a wrong or missing token gets the Hub's 401
(except huggingface_hub's own token-less background look-ups, listed in ``PUBLIC`` and answered 404).
``drop_commits = True`` makes the server read half of each commit request and then close the connection
without answering (a connection dropped mid-upload), until it is set back to ``False``; ``fail_deletes = True``
answers every ``delete_repo`` with HTTP 500 (the Hub failing while a push cleans up after itself).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# Asked by huggingface_hub itself, without a token (its agent-harness registry); answered 404 here.
PUBLIC = ("/api/agent-harnesses",)
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubState:
    """Repos, branches, commits and blobs of the fake Hub (blobs on disk)."""

    def __init__(self, root: Path, token: str, user: str = "tester") -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.token = token
        self.user = user
        self.lock = threading.Lock()
        self.repos: dict[str, dict[str, Any]] = {}  # repo_id -> {private, branches: {name: sha}}
        self.commits: dict[str, dict[str, str]] = {}  # commit sha -> {path: blob sha1}
        self.requests: list[tuple[str, str, bool]] = []  # (method, path, authorized)
        self.drop_commits = False
        self.dropped = 0
        self.fail_deletes = False
        self.deleted: list[str] = []  # repo ids deleted through the API
        self.datasets: dict[str, dict[str, str]] = {}  # dataset repo id -> {path: blob sha1} (info requests only)

    def put_blob(self, data: bytes) -> str:
        sha = git_blob_sha1(data)
        path = self.root / "blobs" / sha
        if not path.exists():
            path.write_bytes(data)
        return sha

    def blob(self, sha: str) -> bytes:
        return (self.root / "blobs" / sha).read_bytes()

    def new_commit(self, files: dict[str, str], parent: str | None, message: str) -> str:
        sha = hashlib.sha1(json.dumps([parent, message, sorted(files.items())]).encode()).hexdigest()
        self.commits[sha] = dict(files)
        return sha

    def resolve(self, repo_id: str, revision: str) -> str | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        if revision in repo["branches"]:
            return repo["branches"][revision]
        return revision if revision in self.commits else None

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        """The files at a branch head, for assertions: {path: bytes}."""
        sha = self.repos[repo_id]["branches"][branch]
        return {path: self.blob(blob) for path, blob in self.commits[sha].items()}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
        return

    # -- plumbing ------------------------------------------------------------------------------------------

    @property
    def state(self) -> HubState:
        return self.server.state

    def _body(self, limit: int | None = None) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length if limit is None else min(limit, length))

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None,
              body: bytes | None = None) -> None:
        data = body if body is not None else (json.dumps(payload).encode() if payload is not None else b"")
        self.send_response(status)
        if body is None:
            self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        extra = {"X-Error-Message": message, **(headers or {})}
        if code:
            extra["X-Error-Code"] = code
        self._send(status, {"error": message}, extra)

    def _authorized(self) -> bool:
        if urlsplit(self.path).path in PUBLIC:
            return True  # not recorded: huggingface_hub's own background look-ups, answered 404
        ok = self.headers.get("Authorization", "") == f"Bearer {self.state.token}"
        self.state.requests.append((self.command, urlsplit(self.path).path, ok))
        if not ok:
            self._body()  # consume the request so the client reads the answer
            self._error(401, "Invalid credentials in Authorization header")
        return ok

    def _route(self) -> None:
        if not self._authorized():
            return
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        routes = [
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", r"/api/repos/create", self._create_repo),
            ("DELETE", r"/api/repos/delete", self._delete_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?", self._repo_info),
            ("GET", r"/api/datasets/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?", self._dataset_info),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<rev>[^/]+)", self._create_branch),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", self._commit),
            ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", self._tree),
            ("GET", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
            ("HEAD", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
        ]
        for method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if method == self.command and match:
                args = {k: unquote(v) if v else v for k, v in match.groupdict().items()}
                with self.state.lock:
                    handler(query=query, **args)
                return
        self._body()
        self._error(404, f"no such endpoint: {self.command} {path}")

    do_GET = do_POST = do_HEAD = do_DELETE = _route  # noqa: N815 - BaseHTTPRequestHandler's naming

    def _repo_or_404(self, repo: str, rev: str | None = "main") -> str | None:
        if repo not in self.state.repos:
            self._error(404, "Repository not found", code="RepoNotFound")
            return None
        sha = self.state.resolve(repo, rev or "main")
        if sha is None:
            self._error(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        return sha

    # -- endpoints -----------------------------------------------------------------------------------------

    def _whoami(self, query: dict) -> None:
        self._send(200, {"type": "user", "name": self.state.user, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"role": "write", "displayName": "test"}}})

    def _create_repo(self, query: dict) -> None:
        payload = json.loads(self._body() or b"{}")
        repo_id = f"{payload.get('organization') or self.state.user}/{payload['name']}"
        url = f"{self.server.url}/{repo_id}"
        if repo_id in self.state.repos:
            message = "You already created this model repo"
            self._send(409, {"error": message, "url": url}, {"X-Error-Message": message})
            return
        blob = self.state.put_blob(GITATTRIBUTES)
        sha = self.state.new_commit({".gitattributes": blob}, None, "initial commit")
        self.state.repos[repo_id] = {"private": payload.get("visibility") == "private", "branches": {"main": sha}}
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, query: dict) -> None:
        payload = json.loads(self._body() or b"{}")
        repo_id = f"{payload.get('organization') or self.state.user}/{payload['name']}"
        if self.state.fail_deletes:
            self._error(500, "Internal Error - We're working hard to fix this as soon as possible!")
            return
        if repo_id not in self.state.repos:
            self._error(404, "Repository not found", code="RepoNotFound")
            return
        del self.state.repos[repo_id]
        self.state.deleted.append(repo_id)
        self._send(200, {})

    def _validate_yaml(self, query: dict) -> None:
        self._body()
        self._send(200, {"errors": [], "warnings": []})

    def _repo_info(self, query: dict, repo: str, rev: str | None) -> None:
        sha = self._repo_or_404(repo, rev)
        if sha is None:
            return
        files = self.state.commits[sha]
        self._send(200, {"id": repo, "modelId": repo, "sha": sha, "private": self.state.repos[repo]["private"],
                         "siblings": [{"rfilename": p} for p in sorted(files)], "tags": [], "downloads": 0})

    def _dataset_info(self, query: dict, repo: str, rev: str | None) -> None:
        if repo not in self.state.datasets:
            self._error(404, "Repository not found", code="RepoNotFound")
            return
        files = self.state.datasets[repo]
        sha = hashlib.sha1(json.dumps(sorted(files.items())).encode()).hexdigest()
        self._send(200, {"id": repo, "sha": sha, "private": False, "tags": [], "downloads": 0,
                         "siblings": [{"rfilename": p} for p in sorted(files)]})

    def _create_branch(self, query: dict, repo: str, rev: str) -> None:
        payload = json.loads(self._body() or b"{}")
        start = self._repo_or_404(repo, payload.get("startingPoint") or "main")
        if start is None:
            return
        if rev in self.state.repos[repo]["branches"]:
            self._error(409, f"Reference already exists: refs/heads/{rev}")
            return
        self.state.repos[repo]["branches"][rev] = start
        self._send(200, {})

    def _preupload(self, query: dict, repo: str, rev: str) -> None:
        payload = json.loads(self._body() or b"{}")
        sha = self._repo_or_404(repo, rev)
        if sha is None:
            return
        existing = self.state.commits[sha]
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": existing.get(f["path"])}
                 for f in payload.get("files", [])]
        self._send(200, {"files": files, "commitOid": sha})

    def _commit(self, query: dict, repo: str, rev: str) -> None:
        if self.state.drop_commits:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length // 2)
            self.state.dropped += 1
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        parent = self._repo_or_404(repo, rev)
        if parent is None:
            return
        if rev not in self.state.repos[repo]["branches"]:
            self._error(400, f"Cannot commit to a commit id: {rev}")
            return
        files = dict(self.state.commits[parent])
        header: dict[str, Any] = {}
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                content = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else \
                    value["content"].encode()
                files[value["path"]] = self.state.put_blob(content)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: s for p, s in files.items() if not p.startswith(prefix)}
            else:
                self._error(400, f"unsupported commit operation {key!r} (this test server takes regular files only)")
                return
        if header.get("parentCommit") and header["parentCommit"] != parent:
            self._error(412, "A commit has happened since. Please refresh and try again.")
            return
        sha = self.state.new_commit(files, parent, header.get("summary", ""))
        self.state.repos[repo]["branches"][rev] = sha
        self._send(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.server.url}/{repo}/commit/{sha}",
                         "hookOutput": ""})

    def _tree(self, query: dict, repo: str, rev: str, sub: str | None) -> None:
        sha = self._repo_or_404(repo, rev)
        if sha is None:
            return
        prefix = (sub.rstrip("/") + "/") if sub else ""
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, folders = [], set()
        for path, blob in sorted(self.state.commits[sha].items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                folders.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
            size = (self.state.root / "blobs" / blob).stat().st_size
            entries.append({"type": "file", "path": path, "size": size, "oid": blob})
        entries += [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()}
                    for f in sorted(folders)]
        self._send(200, entries)

    def _resolve(self, query: dict, repo: str, rev: str, file: str) -> None:
        sha = self._repo_or_404(repo, rev)
        if sha is None:
            return
        blob = self.state.commits[sha].get(file)
        if blob is None:
            self._error(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": sha})
            return
        data = self.state.blob(blob)
        self._send(200, body=data, headers={"X-Repo-Commit": sha, "ETag": f'"{blob}"',
                                            "Content-Type": "application/octet-stream"})


class HubServer(ThreadingHTTPServer):
    """``with HubServer(root, token) as hub: ...`` serves on ``hub.url`` (127.0.0.1, a free port)."""

    daemon_threads = True

    def __init__(self, root: str | Path, token: str) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.state = HubState(Path(root), token)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, name="fake-hub", daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
