"""A content-addressed cache of teacher answers under any fsspec URI.

The key is the sha256 of the teacher's backend and model and the full request (messages, sampling
parameters, seed, chat-template arguments) plus the sample index, so the same question asked of the
same model the same way is answered once, whichever run, pipeline or stage asks. An entry is one
JSON object at ``<uri>/<key[:2]>/<key>.json`` holding the request, the raw answer and a checksum of
the answer; it is written atomically (``distilflow.uri.write_bytes``). An entry that does not parse,
belongs to another key or fails its checksum (a torn write on a store without atomic renames, a
truncated copy) is reported and treated as missing, so the request is sent again and the entry
rewritten. Requests carry no credentials: the API key never reaches the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from typing import Any

from distilflow import uri as uris

VERSION = 1


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def cache_key(backend: str, model: str, request: dict[str, Any], sample: int) -> str:
    """sha256 of what determines an answer: backend, model, request body and sample index."""
    body = {k: v for k, v in request.items() if k != "model"}
    return hashlib.sha256(
        _canonical({"v": VERSION, "backend": backend, "model": model, "request": body, "sample": sample})
    ).hexdigest()


class TeacherCache:
    """Get and put raw teacher answers by key; counts hits, misses and corrupt entries."""

    def __init__(self, uri: str):
        self.uri = uri
        self.hits = self.misses = self.corrupt = 0
        # a local cache is read and written with plain file calls (no fsspec lookup per entry: distill
        # does one get and one put per request); folders already made are remembered
        self._local = uris.local_path(uri) if uris.is_local(uri) else None
        self._made: set[str] = set()

    def path(self, key: str) -> str:
        return uris.join(self.uri, key[:2], f"{key}.json")

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached answer for ``key``, or None when absent or unusable (then it is redone)."""
        path = self.path(key)
        try:
            if self._local is not None:
                with open(os.path.join(self._local, key[:2], f"{key}.json"), "rb") as f:
                    raw = f.read()
            else:
                raw = uris.read_bytes(path)
        except FileNotFoundError:
            self.misses += 1
            return None
        try:
            entry = json.loads(raw)
            answer = entry["answer"]
            ok = entry["key"] == key and entry["sha256"] == hashlib.sha256(_canonical(answer)).hexdigest()
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            self.corrupt += 1
            self.misses += 1
            print(f"[cache] {path}: corrupt or partial entry; asking the teacher again", flush=True)
            return None
        self.hits += 1
        return answer

    def put(self, key: str, model: str, request: dict[str, Any], answer: dict[str, Any]) -> None:
        entry = {
            "version": VERSION,
            "key": key,
            "model": model,
            "request": request,
            "answer": answer,
            "sha256": hashlib.sha256(_canonical(answer)).hexdigest(),
        }
        data = json.dumps(entry, ensure_ascii=False).encode("utf-8")
        path = self.path(key)
        if not uris.is_local(path):
            uris.write_bytes(path, data)  # an object PUT is visible only once complete
            return
        # Write beside the target and rename (atomic on POSIX). No fsync: a killed process loses
        # nothing the kernel already holds, and what a power loss could tear (an empty or partial
        # entry) fails the checksum in get() and is asked again. fsync would cost ~4 ms an answer.
        local = uris.local_path(path)
        folder = os.path.dirname(local)
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        tmp = f"{local}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, local)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
