"""A loopback Hugging Face hub: the file API ``huggingface_hub.HfFileSystem`` (1.x) calls for a dataset.

The endpoints are the ones ``HfApi`` and ``HfFileSystemFile`` request (huggingface_hub 1.33,
``hf_api.py`` and ``hf_file_system.py``):

- ``GET /api/datasets/{org}/{name}[/revision/{rev}]``: the repository at a revision (``dataset_info``,
  called by ``resolve_path`` to check that the repository and revision exist); 404 with the hub's
  ``X-Error-Code: RepoNotFound`` or ``RevisionNotFound``;
- ``GET /api/datasets/{org}/{name}/tree/{rev}[/{path}]?recursive=&expand=``: a folder listing
  (``list_repo_tree``); 404 ``EntryNotFound`` for a path that is no folder;
- ``POST /api/datasets/{org}/{name}/paths-info/{rev}``: form fields ``paths`` (repeated) and
  ``expand`` (``get_paths_info``); a body without ``paths`` is a 400, as on the hub;
- ``GET /datasets/{org}/{name}/resolve/{rev}/{path}``: the file, with ``Range: bytes=a-b`` answered
  206 with ``Content-Range`` (``HfFileSystemFile._fetch_range``) or whole (streamed reads, ``get_file``).

Revisions are branch names or commit shas; ``refs/convert/parquet``-style refs arrive quoted and are
unquoted. With ``token`` set the repository is private: a request without ``Authorization: Bearer
<token>`` gets 401 ``X-Error-Code: RepoNotFound`` (the hub does not say a private repository exists).
Every request is recorded (method, path, authorization) for the tests.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes.loopback import LoopbackHandler, LoopbackServer


class HubDataset:
    """One dataset repository: ``{revision: {path: bytes}}``; ``main`` is the default branch."""

    def __init__(self, repo_id: str, files: dict[str, bytes], revision: str = "main") -> None:
        self.repo_id = repo_id
        self.revisions: dict[str, dict[str, bytes]] = {}
        self.shas: dict[str, str] = {}
        self.add_revision(revision, files)

    def add_revision(self, revision: str, files: dict[str, bytes]) -> str:
        sha = hashlib.sha1(repr(sorted((p, hashlib.sha1(b).hexdigest()) for p, b in files.items())).encode())
        self.revisions[revision] = dict(files)
        self.shas[revision] = sha.hexdigest()
        self.revisions[self.shas[revision]] = self.revisions[revision]  # a commit sha resolves too
        self.shas[self.shas[revision]] = self.shas[revision]
        return self.shas[revision]


def _entry(path: str, files: dict[str, bytes]) -> dict[str, Any] | None:
    """The hub's tree entry of ``path`` (a file or a folder), or None when there is neither."""
    if path in files:
        data = files[path]
        return {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
    if any(name.startswith(path.rstrip("/") + "/") for name in files) or path == "":
        return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()}
    return None


def _children(folder: str, files: dict[str, bytes], recursive: bool) -> list[dict[str, Any]]:
    prefix = folder.rstrip("/") + "/" if folder else ""
    found: dict[str, dict[str, Any]] = {}
    for name in files:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :].split("/")
        for depth in range(1, len(rest) + 1 if recursive else 2):
            sub = prefix + "/".join(rest[:depth])
            entry = _entry(sub, files)
            if entry is not None:
                found[sub] = entry
    return sorted(found.values(), key=lambda e: e["path"])


class FakeHub(LoopbackServer):
    """A hub with dataset repositories; ``url`` is what ``HF_ENDPOINT`` points at."""

    def __init__(self, token: str | None = None) -> None:
        self.datasets: dict[str, HubDataset] = {}
        self.token = token
        self.requests: list[dict[str, Any]] = []

    def add(self, repo_id: str, files: dict[str, bytes], revision: str = "main") -> str:
        """Add (or extend with a revision) a dataset; returns the revision's commit sha."""
        if repo_id in self.datasets:
            return self.datasets[repo_id].add_revision(revision, files)
        self.datasets[repo_id] = HubDataset(repo_id, files, revision)
        return self.datasets[repo_id].shas[revision]

    def handler(self) -> type[LoopbackHandler]:
        hub = self

        class Handler(LoopbackHandler):
            def _error(self, code: int, error_code: str, message: str) -> None:
                self._send(code, {"error": message}, headers={"X-Error-Code": error_code})

            def _repo(self, repo_id: str, revision: str) -> dict[str, bytes] | None:
                """The files at ``revision``, or None after answering the hub's error."""
                dataset = hub.datasets.get(repo_id)
                if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self._error(401, "RepoNotFound", f"Repository not found: {repo_id}")
                    return None
                if dataset is None:
                    self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
                    return None
                if revision not in dataset.revisions:
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                    return None
                return dataset.revisions[revision]

            def _record(self) -> None:
                hub.requests.append(
                    {
                        "method": self.command,
                        "path": urlsplit(self.path).path,
                        "authorization": self.headers.get("Authorization"),
                    }
                )

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._record()
                url = urlsplit(self.path)
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                if parts[:2] == ["api", "datasets"] and len(parts) >= 4:
                    self._api_get(parts[2:], parse_qs(url.query))
                elif parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
                    self._resolve("/".join(parts[1:3]), parts[4], "/".join(parts[5:]))
                else:
                    self._error(404, "EntryNotFound", f"no route {url.path}")

            def _api_get(self, parts: list[str], query: dict[str, list[str]]) -> None:
                repo_id = "/".join(parts[:2])
                if len(parts) == 2 or parts[2] == "revision":
                    revision = parts[3] if len(parts) > 3 else "main"
                    if self._repo(repo_id, revision) is None:
                        return
                    files = hub.datasets[repo_id].revisions[revision]
                    siblings = [{"rfilename": name} for name in sorted(files)]
                    sha = hub.datasets[repo_id].shas[revision]
                    self._send(
                        200, {"id": repo_id, "sha": sha, "private": bool(hub.token), "siblings": siblings}
                    )
                elif parts[2] == "tree" and len(parts) >= 4:
                    files = self._repo(repo_id, parts[3])
                    if files is None:
                        return
                    folder = "/".join(parts[4:])
                    entry = _entry(folder, files)
                    if entry is None or entry["type"] != "directory":
                        self._error(404, "EntryNotFound", f"{folder} does not exist on {parts[3]}")
                        return
                    recursive = query.get("recursive", ["False"])[0].lower() == "true"
                    self._send(200, _children(folder, files, recursive))
                else:
                    self._error(404, "EntryNotFound", f"no route /api/datasets/{'/'.join(parts)}")

            def _resolve(self, repo_id: str, revision: str, path: str) -> None:
                files = self._repo(repo_id, revision)
                if files is None:
                    return
                if path not in files:
                    self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
                    return
                data = files[path]
                headers = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "Accept-Ranges": "bytes"}
                headers["X-Repo-Commit"] = hub.datasets[repo_id].shas[revision]
                wanted = self.headers.get("Range")
                if not wanted:
                    self._send(200, data, headers=headers, content_type="application/octet-stream")
                    return
                start_text, _, end_text = wanted.removeprefix("bytes=").partition("-")
                start = int(start_text)
                end = min(int(end_text), len(data) - 1) if end_text else len(data) - 1
                if start >= len(data):
                    self._error(416, "RangeNotSatisfiable", f"{wanted} is past the end ({len(data)} bytes)")
                    return
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                self._send(
                    206, data[start : end + 1], headers=headers, content_type="application/octet-stream"
                )

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self._record()
                parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
                if not (parts[:2] == ["api", "datasets"] and len(parts) == 6 and parts[4] == "paths-info"):
                    self._error(404, "EntryNotFound", f"no route {self.path}")
                    return
                repo_id = "/".join(parts[2:4])
                body = parse_qs(self._read_body().decode(), keep_blank_values=True)
                if self.headers.get("Content-Type", "").split(";")[0] != "application/x-www-form-urlencoded":
                    self._error(400, "BadRequest", "paths-info takes a form body (paths=..., expand=...)")
                    return
                if "paths" not in body:
                    self._error(400, "BadRequest", "paths-info: missing form field 'paths'")
                    return
                files = self._repo(repo_id, parts[5])
                if files is None:
                    return
                found = [_entry(path, files) for path in body["paths"]]
                self._send(200, [entry for entry in found if entry is not None])

        return Handler
