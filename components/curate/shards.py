"""curate's outputs as numbered JSONL shards: ``<kind>-00000-of-00004.jsonl`` (``kind``: scored,
sft, preference, judge_failures), each at most ``shard_rows`` lines.

Rows are written to local files in the work folder as they are produced (``ShardWriter``), then
published under the output folder with their final names, once the count is known. The manifest
lists them (``result.shards``) and the completion marker comes last, so a reader that lists a
finished output's shards from its manifest (``distilflow.records.output_shards``) never sees a
half-written set. An output with no rows has no shard.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

from distilflow import uri as uris

KINDS = ("scored", "sft", "preference", "judge_failures")


def shard_name(kind: str, index: int, count: int) -> str:
    return f"{kind}-{index:05d}-of-{count:05d}.jsonl"


class ShardWriter:
    """Lines into ``<workdir>/<kind>-NNNNN.jsonl`` files of at most ``shard_rows`` lines each (None:
    one file). Each ``write`` call is one line, ending in a newline, as ``file.write`` is used for JSONL."""

    def __init__(self, workdir: str, kind: str, shard_rows: int | None = None, binary: bool = False):
        self.workdir, self.kind, self.shard_rows = workdir, kind, shard_rows
        self.binary = binary  # lines are bytes (UTF-8 JSON), written as they are
        self.paths: list[str] = []
        self.rows = 0
        self._file: Any = None
        self._in_file = 0

    def write(self, line: Any) -> None:
        if self._file is None or (self.shard_rows and self._in_file >= self.shard_rows):
            self._next()
        self._file.write(line)
        self._in_file += 1
        self.rows += 1

    def _next(self) -> None:
        if self._file is not None:
            self._file.close()
        path = os.path.join(self.workdir, f"{self.kind}-{len(self.paths):05d}.jsonl")
        if self.binary:
            self._file = open(path, "wb", buffering=1 << 22)  # noqa: SIM115 (closed in _next/close)
        else:
            self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed in _next/close)
        self.paths.append(path)
        self._in_file = 0

    def close(self) -> list[str]:
        """Close the open shard; return the local shard paths, in order."""
        if self._file is not None:
            self._file.close()
            self._file = None
        return self.paths

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def concatenate(paths: list[str], dest: str) -> None:
    """The shards one after the other in one local file (the single-file layout)."""
    with open(dest, "wb") as out:
        for path in paths:
            with open(path, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)


def remove_stale(folder: str, kind: str, single_file: bool) -> None:
    """Drop the shards of ``kind`` an earlier run left in ``folder`` (another count would leave some
    behind), and its single file unless one is written again."""
    fs, path = uris.filesystem(folder)
    root = path.rstrip("/")
    if not uris.is_local(folder):
        fs.invalidate_cache(root)
    pattern = re.compile(rf"{re.escape(kind)}-\d{{5}}-of-\d{{5}}\.jsonl")
    for found in fs.glob(f"{root}/{kind}-*-of-*.jsonl"):
        if pattern.fullmatch(found.rstrip("/").rsplit("/", 1)[-1]):
            fs.rm(found)
    if not single_file and fs.exists(f"{root}/{kind}.jsonl"):
        fs.rm(f"{root}/{kind}.jsonl")
