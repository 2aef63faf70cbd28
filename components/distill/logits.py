"""distill's white-box artifact: the teacher's top-k log-probabilities of every answer, in Parquet.

One row per trace (``id`` = the trace's id) with the prompt it answered and, for each token of the
answer in the teacher's tokenizer (the stop token included when the answer stopped), the token's id
and log-probability and the ``k`` likeliest tokens at that position with theirs:

| column | type | meaning |
|---|---|---|
| ``id``, ``problem_id``, ``sample``, ``teacher`` | string, string, int32, string | the trace |
| ``prompt`` | string | the chat the teacher answered (JSON list of messages) |
| ``ids`` | list<int32> | the answer's tokens (T) |
| ``logprobs`` | list<float32> | log p of each token (T) |
| ``top_ids`` | list<int32> | the top-k token ids, position-major (T * k) |
| ``top_logprobs`` | list<float32 or float16> | their log-probabilities (T * k); -inf pads a short position |

The log-probabilities are the teacher's raw distribution (temperature 1, before top-p), whatever the
sampling temperature. While the stage runs, each batch of answers is written as
``parts/<key>/logits-NNNNN.parquet`` *before* its traces shard (the traces shard is the commit), so a
resumed run never holds a trace without its logits. ``assemble`` then writes ``logits/part-NNNNN.parquet``
holding exactly the traces of ``traces.jsonl``, one part at a time (memory: one part), and counts
tokens and bytes. pyarrow is imported inside the functions.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, Field

from distilflow import uri as uris
from distilflow.errors import DistilflowError

FOLDER = "logits"
META_K, META_DTYPE = b"distilflow.top_k", b"distilflow.dtype"


class LogitsSummary(BaseModel):
    """Where distill's logits are and what they hold (in its result and manifest)."""

    files: list[str] = Field(description="Parquet shards, in order (URIs)")
    rows: int = Field(description="Traces with logits")
    tokens: int = Field(description="Answer tokens scored (positions)")
    bytes: int = Field(description="Bytes of the Parquet shards")
    top_k: int = Field(description="Log-probabilities kept per position")
    dtype: str = Field(description="Storage type of the top-k log-probabilities")
    tokenizer_fingerprint: str = Field(description="sha256 of the teacher tokenizer's vocabulary (token, id)")
    vocab_size: int = Field(description="Tokens in the teacher's vocabulary")
    sampling: dict[str, dict[str, Any]] = Field(
        description="Each teacher's sampling settings (the logprobs are its raw distribution whatever these are)"
    )
    source: str = Field(
        description="generated: the teacher's own answers; scored: given answers (answers_uri)"
    )

    @property
    def bytes_per_million_tokens(self) -> float:
        return self.bytes / self.tokens * 1e6 if self.tokens else 0.0


def row_of(trace: Any, chat: list[dict], logits: dict[str, Any]) -> dict[str, Any]:
    """A Parquet row from a trace, its prompt and its ``TokenLogprobs.to_json``."""
    from distilflow.teachers.logprobs import TokenLogprobs

    found = TokenLogprobs.from_json(logits)
    return {
        "id": trace.id,
        "problem_id": trace.problem_id,
        "sample": trace.sample,
        "teacher": trace.teacher,
        "prompt": json.dumps(chat, ensure_ascii=False),
        "ids": found.ids,
        "logprobs": found.logprobs,
        "top_ids": found.top_ids.reshape(-1),
        "top_logprobs": found.top_logprobs.reshape(-1),
        "k": found.k,
    }


def _schema(dtype: str, k: int) -> Any:
    import pyarrow as pa

    value = pa.float16() if dtype == "float16" else pa.float32()
    fields = [
        ("id", pa.string()),
        ("problem_id", pa.string()),
        ("sample", pa.int32()),
        ("teacher", pa.string()),
        ("prompt", pa.string()),
        ("ids", pa.list_(pa.int32())),
        ("logprobs", pa.list_(pa.float32())),
        ("top_ids", pa.list_(pa.int32())),
        ("top_logprobs", pa.list_(value)),
    ]
    return pa.schema(fields, metadata={META_K: str(k).encode(), META_DTYPE: dtype.encode()})


def write_part(uri: str, rows: list[dict[str, Any]], k: int, dtype: str) -> int:
    """Write ``rows`` (``row_of``) as one Parquet file (zstd); return its size in bytes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = [r["id"] for r in rows if r["k"] != k]
    if bad:
        raise DistilflowError(
            f"logits of {bad[:3]} hold {rows[0]['k']} log-probabilities per position, not {k}"
        )
    schema = _schema(dtype, k)
    np_value = np.float16 if dtype == "float16" else np.float32
    columns = {name: [r[name] for r in rows] for name in schema.names}
    columns["top_logprobs"] = [np.asarray(v, dtype=np_value) for v in columns["top_logprobs"]]
    table = pa.Table.from_pydict(columns, schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    data = buffer.getvalue()
    uris.write_bytes(uri, data)
    return len(data)


def read_table(uri: str) -> Any:
    """One Parquet file of logits as a pyarrow Table (its metadata holds k and the dtype)."""
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(uris.read_bytes(uri)))


def top_k_of(table: Any) -> int:
    return int((table.schema.metadata or {})[META_K])


def iter_rows(uri: str) -> Iterator[dict[str, Any]]:
    """The rows of one Parquet file of logits, with numpy arrays (``top_*`` as ``(T, k)``)."""
    import numpy as np

    table = read_table(uri)
    k = top_k_of(table)
    for batch in table.to_batches(max_chunksize=64):
        for row in batch.to_pylist():
            t = len(row["ids"])
            yield {
                **row,
                "ids": np.asarray(row["ids"], dtype=np.int64),
                "logprobs": np.asarray(row["logprobs"], dtype=np.float32),
                "top_ids": np.asarray(row["top_ids"], dtype=np.int64).reshape(t, k),
                "top_logprobs": np.asarray(row["top_logprobs"], dtype=np.float32).reshape(t, k),
            }


def part_uris(folder: str) -> list[str]:
    """The ``logits-NNNNN.parquet`` parts under a shards folder, in index order."""
    import os

    fs, path = uris.filesystem(folder)
    if not uris.is_local(folder):
        fs.invalidate_cache(path)
    names = sorted(os.path.basename(p.rstrip("/")) for p in fs.glob(f"{path.rstrip('/')}/logits-*.parquet"))
    return [uris.join(folder, name) for name in names]


def assemble(parts: list[str], out_folder: str, wanted: list[str]) -> tuple[list[str], int, int, int]:
    """Write ``out_folder/part-NNNNN.parquet`` with the logits of exactly the ``wanted`` trace ids (the
    first copy of each), reading one part at a time. Returns (files, rows, tokens, bytes); raises when
    a wanted trace has no logits (nothing half-written is taken as complete)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    need, files, rows, tokens, size = set(wanted), [], 0, 0, 0
    for part in parts:
        table = read_table(part)
        keep = pc.is_in(table["id"], value_set=pa.array(sorted(need), type=pa.string()))
        table = table.filter(keep)
        if table.num_rows == 0:
            continue
        ids = table["id"].to_pylist()
        first = [i for i, rid in enumerate(ids) if rid in need and not need.discard(rid)]
        table = table.take(pa.array(first, type=pa.int64()))
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        uri = uris.join(out_folder, f"part-{len(files):05d}.parquet")
        uris.write_bytes(uri, buffer.getvalue())
        files.append(uri)
        rows += table.num_rows
        tokens += sum(pc.list_value_length(table["ids"]).to_pylist())
        size += len(buffer.getvalue())
    if need:
        raise DistilflowError(
            f"distill: {len(need)} traces have no logits (e.g. {sorted(need)[:3]}); their parts are missing "
            f"or unreadable. Delete the output's parts/ folder and rerun (cached answers are not paid again)"
        )
    return files, rows, tokens, size


def read_summary(manifest: dict[str, Any], where: str) -> LogitsSummary:
    """The logits summary of a finished distill output's manifest; an error naming the fix without one."""
    found = (manifest.get("result") or {}).get("logits")
    if not found:
        raise DistilflowError(
            f"{where}: a finished {manifest.get('stage', 'stage')} output without teacher logits; run distill "
            "with logits: {top_k: 20} (white-box data) and point at its output"
        )
    return LogitsSummary.model_validate(found)
