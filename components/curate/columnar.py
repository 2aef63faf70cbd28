"""curate's selection engine: the rules of ``select.py`` over columns, reading only what they need.

The stage runs this; ``select.select_stream`` (the streaming implementation the rules were first
written in) stays as the reference the tests compare it with, row for row.

1. **Scan** (one pass over the judged JSONL, ``msgspec``): each line is validated as a Scored row
   with its chain of thought and answer skipped, not decoded (``msgspec.Raw``); what selection reads
   goes into columns: scores, answer check, domain, id, problem id, the problem text (once per
   distinct text) and the line's byte offset.
2. **Problems**: each distinct problem text is normalised, hashed (exact duplicates), checked for
   evaluation n-grams (decontamination) and, with ``dedup: near``, MinHashed into LSH bands; the
   verdicts of ``select.py`` follow per problem (same hash family, same LSH bands, same tie rule).
3. **Select** (numpy): row rules as masks, the RV-target distance, k per problem and the per-bin /
   per-domain caps as sorts over (group, distance, id); preference pairs per problem as the
   best/worst of ``distilflow.preference``'s key by a lexicographic sort.
4. **Write** (a second pass): every row's raw bytes are copied with ``kept``/``dropped_by`` set in
   place; a kept row's SFT example and a pair's sides are assembled from the row's raw JSON values
   (problem, reasoning, answer) without re-encoding them. Scored rows keep the input order, SFT
   examples the input order within each curriculum stage, pairs the order of their problems.

Memory holds the columns (a few dozen bytes a row) and the distinct problem texts, never a chain
of thought: it does not grow with chain length.
"""

from __future__ import annotations

import array
import functools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from distilflow.components.curate.config import SelectConfig
from distilflow.components.curate.select import (
    FILTERS,
    NO_DOMAIN,
    NUM_PERM,
    SHINGLE,
    Contamination,
    SelectionStats,
    StreamOutputs,
    Targets,
    lsh_params,
    normalise_text,
    text_key,
)
from distilflow.components.curate.shards import ShardWriter
from distilflow.errors import RecordError
from distilflow.preference import CORRECT_RANK
from distilflow.prompts import PLACEHOLDER

PARALLEL_TEXTS = 20_000  # distinct problem texts from which MinHash runs in worker processes
BUFFER = 1 << 22  # bytes of each file buffer: few system calls for a stream of short lines
KEPT = -1  # reason code of a kept row; otherwise an index into FILTERS
CODE = {name: i for i, name in enumerate(FILTERS)}


@functools.cache
def _decoders() -> tuple[Any, Any]:
    """msgspec decoders: the scan's (records.Scored's fields, the text bodies skipped as raw JSON;
    a test keeps the two field lists equal) and the writer's (the raw values an SFT example or a
    pair side is made of)."""
    from typing import Annotated

    import msgspec

    score = Annotated[float, msgspec.Meta(ge=0, le=9)]
    count = Annotated[int, msgspec.Meta(ge=0)]
    optional = str | None
    fields = [
        ("id", str), ("problem_id", str), ("problem", str), ("teacher", str), ("sample", count),
        ("reasoning", msgspec.Raw), ("content", msgspec.Raw), ("tokens", count), ("finish_reason", str),
        ("rv", score), ("cd", score), ("logic", Annotated[float, msgspec.Meta(ge=0, le=1)]),
        ("correct", bool | None), ("judge", str), ("kept", bool),
    ]  # fmt: skip
    fields += [(name, optional, None) for name in ("reference", "domain", "predicted", "dropped_by")]
    fields += [(name, optional, None) for name in ("crv_level", "crv_outcome")]
    scan_row = msgspec.defstruct("ScanRow", fields, forbid_unknown_fields=True)
    text_row = msgspec.defstruct(
        "TextRow", [(name, msgspec.Raw) for name in ("id", "problem_id", "problem", "reasoning", "content")]
    )
    return msgspec.json.Decoder(scan_row), msgspec.json.Decoder(text_row)


def scan_fields() -> set[str]:
    """The fields the scan validates (for the test that keeps them equal to records.Scored's)."""
    return set(_decoders()[0].type.__struct_fields__)


@dataclass
class Columns:
    """What the scan keeps of each row, and of each distinct problem text."""

    # typed arrays, not lists: 8 bytes a value instead of a Python object each
    offsets: Any = field(default_factory=lambda: array.array("q"))
    lengths: Any = field(default_factory=lambda: array.array("q"))
    ids: list[str] = field(default_factory=list)
    pids: Any = field(default_factory=lambda: array.array("q"))  # index into pid_index
    texts: Any = field(default_factory=lambda: array.array("q"))  # index into text_index
    domains: Any = field(default_factory=lambda: array.array("q"))  # index into domain_index
    rv: Any = field(default_factory=lambda: array.array("d"))
    cd: Any = field(default_factory=lambda: array.array("d"))
    logic: Any = field(default_factory=lambda: array.array("d"))
    correct: Any = field(default_factory=lambda: array.array("b"))  # CORRECT_RANK of the answer check
    pid_index: dict[str, int] = field(default_factory=dict)
    text_index: dict[str, int] = field(default_factory=dict)
    domain_index: dict[str, int] = field(default_factory=dict)
    # per normalised problem text (filled by problem_keys): its key, text, contamination flag
    key_names: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    flags: list[bool] = field(default_factory=list)
    key_of_text: list[int] = field(default_factory=list)
    contamination_problems: int = 0

    def __len__(self) -> int:
        return len(self.ids)


def scan(path: str) -> Columns:
    """Pass 1: validate every line of ``path`` and keep the columns selection needs."""
    import msgspec

    decode = _decoders()[0].decode
    cols = Columns()
    pid_index, text_index, domain_index = cols.pid_index, cols.text_index, cols.domain_index
    offset = 0
    with open(path, "rb", buffering=BUFFER) as f:
        for lineno, line in enumerate(f, start=1):
            size = len(line)
            if size < 3 and not line.strip():
                offset += size
                continue
            try:
                row = decode(line)
            except msgspec.DecodeError as exc:  # ValidationError included
                if not line.strip():
                    offset += size
                    continue
                raise RecordError(f"{path}:{lineno}: not a valid Scored record: {exc}") from None
            if memoryview(row.reasoning)[:1] != b'"' or memoryview(row.content)[:1] != b'"':
                raise RecordError(
                    f"{path}:{lineno}: not a valid Scored record: reasoning and content must be strings"
                )
            cols.offsets.append(offset)
            cols.lengths.append(size)
            cols.ids.append(row.id)
            cols.pids.append(pid_index.setdefault(row.problem_id, len(pid_index)))
            cols.texts.append(text_index.setdefault(row.problem, len(text_index)))
            cols.domains.append(domain_index.setdefault(row.domain or NO_DOMAIN, len(domain_index)))
            cols.rv.append(row.rv)
            cols.cd.append(row.cd)
            cols.logic.append(row.logic)
            cols.correct.append(CORRECT_RANK[row.correct])
            offset += size
    return cols


# ---------------------------------------------------------------- problem verdicts


def problem_keys(cols: Columns, c: SelectConfig) -> None:
    """Per distinct problem text: the key of its normalised text (``select.text_key``) and, per key,
    whether it shares an n-gram with an evaluation problem."""
    contamination = (
        Contamination(c.decontaminate_uris, c.decontaminate_ngram) if c.decontaminate_uris else None
    )
    grams = _eval_grams(contamination)
    keys: dict[str, int] = {}
    for text in cols.text_index:  # insertion order = text index
        norm = normalise_text(text)
        key = text_key(norm)
        if key not in keys:
            keys[key] = len(cols.key_names)
            cols.key_names.append(key)
            cols.norms.append(norm)
            cols.flags.append(grams is not None and _contaminated(norm.split(), grams, c.decontaminate_ngram))
        cols.key_of_text.append(keys[key])
    cols.contamination_problems = contamination.problems if contamination else 0


def _eval_grams(contamination: Contamination | None) -> tuple[set[str], set[str]] | None:
    """The evaluation problems' word n-grams as text (and their first words, to skip most positions).

    ``Contamination`` keeps 64-bit hashes of the same n-grams; comparing the n-grams themselves gives
    the same verdicts (but for a hash collision) without hashing every training n-gram."""
    if contamination is None:
        return None
    grams = contamination.grams
    return grams, {g.split(" ", 1)[0] for g in grams}


def _contaminated(words: list[str], grams: tuple[set[str], set[str]], n: int) -> bool:
    texts, firsts = grams
    if len(words) < n:
        return " ".join(words) in texts
    return any(words[i] in firsts and " ".join(words[i : i + n]) in texts for i in range(len(words) - n + 1))


def near_drops(key_names: list[str], norms: list[str], c: SelectConfig) -> set[int]:
    """Key indexes that share an LSH band with a smaller key (``select._resolve_bands``'s rule).

    A band's bucket is its signature values themselves (``select.band_keys`` hashes them to 64 bits
    first: the same buckets but for a hash collision), grouped by numpy."""
    import numpy as np

    bands, per_band = lsh_params(c.near_dup_threshold)
    count = len(key_names)
    if count < 2:
        return set()
    signatures = _signatures(norms)
    rank = np.empty(count, dtype=np.int64)
    rank[np.argsort(np.asarray(key_names), kind="stable")] = np.arange(count)
    drop = np.zeros(count, dtype=bool)
    width = np.dtype((np.void, 4 * per_band))
    for band in range(bands):
        values = np.ascontiguousarray(signatures[:, band * per_band : (band + 1) * per_band])
        _, bucket, sizes = np.unique(values.view(width).ravel(), return_inverse=True, return_counts=True)
        shared = sizes[bucket] > 1
        if shared.any():
            smallest = np.full(len(sizes), count, dtype=np.int64)
            np.minimum.at(smallest, bucket, rank)
            drop |= shared & (rank != smallest[bucket])
    return set(np.flatnonzero(drop).tolist())


def _signatures(norms: list[str], workers: int | None = None) -> Any:
    """``select.minhash`` of every text as rows of a (texts, NUM_PERM) uint32 array. Many texts are
    split over worker processes (hashing is CPU-bound Python); a few are done here."""
    import numpy as np

    workers = min(os.cpu_count() or 1, 4) if workers is None else workers
    if workers < 2 or len(norms) < PARALLEL_TEXTS:
        return _signature_chunk(norms)
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    size = -(-len(norms) // (4 * workers))
    parts = [norms[i : i + size] for i in range(0, len(norms), size)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return np.concatenate(list(pool.map(_signature_chunk, parts)))


def _signature_chunk(norms: list[str], chunk: int = 4096) -> Any:
    """The signatures of ``norms``: shake_128 once per distinct word 3-gram of each chunk of texts,
    the minimum per text taken by numpy."""
    import hashlib

    import numpy as np

    out = np.empty((len(norms), NUM_PERM), dtype=np.uint32)
    for first in range(0, len(norms), chunk):
        index: dict[str, int] = {}
        digests: list[bytes] = []
        ids: list[int] = []
        starts: list[int] = []
        for norm in norms[first : first + chunk]:
            words = norm.split()
            starts.append(len(ids))
            for gram in {" ".join(words[i : i + SHINGLE]) for i in range(max(len(words) - SHINGLE + 1, 1))}:
                j = index.get(gram)
                if j is None:
                    j = index[gram] = len(digests)
                    digests.append(hashlib.shake_128(gram.encode()).digest(4 * NUM_PERM))
                ids.append(j)
        table = np.frombuffer(b"".join(digests), dtype="<u4").reshape(len(digests), NUM_PERM)
        out[first : first + len(starts)] = np.minimum.reduceat(table[np.asarray(ids)], starts, axis=0)
    return out


# ---------------------------------------------------------------- selection over columns


@dataclass
class Decided:
    """Each row's reason code (KEPT or an index into FILTERS) and curriculum stage (-1: none), and
    the pairs as (best row, worst row, beta) in the order of their problems."""

    reason: Any
    stage: Any
    pairs: list[tuple[int, int, float | None]]
    contamination_problems: int = 0


def _group_verdicts(cols: Columns, c: SelectConfig, key: Any) -> tuple[Any, Any]:
    """Rows' (key, problem id) group and each group's problem verdict code (KEPT: none)."""
    import numpy as np

    pid = np.frombuffer(cols.pids, dtype=np.int64)
    combo = key * max(len(cols.pid_index), 1) + pid
    _, first, group = np.unique(combo, return_index=True, return_inverse=True)
    return group, first


def _verdict_codes(cols: Columns, c: SelectConfig, key: Any, group: Any, first: Any) -> Any:
    import numpy as np

    key_names, flags = cols.key_names, cols.flags
    pid_names = list(cols.pid_index)
    group_key = key[first].tolist()
    group_pid = np.frombuffer(cols.pids, dtype=np.int64)[first].tolist()
    smallest: dict[int, int] = {}
    for k, p in zip(group_key, group_pid, strict=True):
        if k not in smallest or pid_names[p] < pid_names[smallest[k]]:
            smallest[k] = p
    near = near_drops(key_names, cols.norms, c) if c.dedup == "near" else set()
    codes = []
    for k, p in zip(group_key, group_pid, strict=True):
        if flags[k]:
            codes.append(CODE["contaminated"])
        elif c.dedup != "none" and p != smallest[k]:
            codes.append(CODE["duplicate"])
        elif k in near:
            codes.append(CODE["near_duplicate"])
        else:
            codes.append(KEPT)
    return np.asarray(codes, dtype=np.int8)


def _targets(targets: Targets, cd: Any) -> Any:
    """``Targets.target`` of every row (the same float operations, vectorised)."""
    import numpy as np

    bins = _bins(targets, cd)
    if targets.targets is None:
        return np.minimum(np.maximum(targets.c.rv_target_offset + targets.c.rv_target_scale * cd, 0.0), 9.0)
    table = []
    matched_rows = np.zeros(len(cd), dtype=bool)
    for b, value in enumerate(targets.targets):
        if value == "matched" and not targets.edges:
            matched_rows |= bins == b
            table.append(0.0)
        elif value == "matched":
            table.append(targets.matched((targets.edges[b] + targets.edges[b + 1]) / 2))
        else:
            table.append(targets.target(targets.edges[b] if targets.edges else 0.0))
    out = np.asarray(table)[bins]
    if matched_rows.any():
        out[matched_rows] = np.minimum(
            np.maximum(targets.c.rv_target_offset + targets.c.rv_target_scale * cd[matched_rows], 0.0), 9.0
        )
    return out


def _bins(targets: Targets, cd: Any) -> Any:
    """``Targets.bin_of`` of every row: the first bin whose upper edge is above the CD."""
    import numpy as np

    if not targets.edges:
        return np.zeros(len(cd), dtype=np.int64)
    return np.minimum(np.searchsorted(np.asarray(targets.edges[1:]), cd, side="right"), targets.n_bins - 1)


def _round6(values: Any) -> Any:
    """Python's ``round(x, 6)`` of every value (numpy's rounding can differ in the last place)."""
    import numpy as np

    return np.fromiter((round(x, 6) for x in values.tolist()), dtype=np.float64, count=len(values))


def _rank_in_runs(sorted_keys: Any) -> Any:
    """Position of each element within its run of equal keys (the keys already sorted)."""
    import numpy as np

    n = len(sorted_keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.ones(n, dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    return np.arange(n) - first


def _cap(reason: Any, rows: Any, by: Any, dist: Any, id_rank: Any, caps: Any, code: int) -> Any:
    """Among ``rows``, keep the ``caps[by]`` closest to the target (then smallest id) per value of
    ``by``; mark the others with ``code``. Returns the rows kept."""
    import numpy as np

    order = rows[np.lexsort((id_rank[rows], dist[rows], by[rows]))]
    pos = _rank_in_runs(by[order])
    over = pos >= caps[by[order]]
    reason[order[over]] = code
    return order[~over]


def decide(cols: Columns, c: SelectConfig, targets: Targets) -> Decided:
    """Every row's verdict and stage, and the preference pairs, as the rules of ``select.py``."""
    import numpy as np

    problem_keys(cols, c)
    key = np.asarray(cols.key_of_text, dtype=np.int64)[np.frombuffer(cols.texts, dtype=np.int64)]
    group, first = _group_verdicts(cols, c, key)
    verdict = _verdict_codes(cols, c, key, group, first)
    rv, cd = np.frombuffer(cols.rv), np.frombuffer(cols.cd)
    logic, correct = np.frombuffer(cols.logic), np.frombuffer(cols.correct, dtype=np.int8)
    reason = verdict[group].astype(np.int8)
    alive = reason == KEPT
    for name, bad in (
        ("cd_range", ~((cd >= c.cd_min) & (cd <= c.cd_max))),
        ("rv_range", ~((rv >= c.rv_min) & (rv <= c.rv_max))),
        ("logic", logic < c.min_logic),
        ("incorrect", (correct == 0) & c.require_correct),
        ("unverified", (correct == 1) & (not c.keep_unverified)),
    ):
        hit = alive & bad
        reason[hit] = CODE[name]
        alive &= ~hit
    dist = _round6(np.abs(rv - _targets(targets, cd)))
    id_rank = np.empty(len(cols), dtype=np.int64)
    id_rank[np.argsort(np.asarray(cols.ids), kind="stable")] = np.arange(len(cols))
    rows = np.flatnonzero(alive)
    if c.per_problem:
        limit = np.full(group.max() + 1 if len(group) else 1, c.per_problem)
        rows = _cap(reason, rows, group, dist, id_rank, limit, CODE["per_problem"])
    bins = _bins(targets, cd)
    if targets.bin_caps is not None:
        rows = _cap(reason, rows, bins, dist, id_rank, np.asarray(targets.bin_caps), CODE["per_bin"])
    if c.domain_quotas:
        names = list(cols.domain_index)
        quota = np.asarray([c.domain_quotas.get(d, len(cols)) for d in names] or [0])
        _cap(
            reason,
            rows,
            np.frombuffer(cols.domains, dtype=np.int64),
            dist,
            id_rank,
            quota,
            CODE["domain_quota"],
        )
    stage = bins if c.curriculum else np.full(len(cols), -1)
    pairs = pair_rows(cols, c, targets, group, verdict, rv, cd, logic, correct, id_rank)
    return Decided(reason, stage, pairs, cols.contamination_problems)


def pair_rows(
    cols: Columns, c: SelectConfig, targets: Targets, group: Any, verdict: Any, *columns: Any
) -> list[tuple[int, int, float | None]]:
    """Best against worst of each problem's rows (``select.preference_pair``), in problem order."""
    import numpy as np

    rv, cd, logic, correct, id_rank = columns
    if len(group) == 0:
        return []
    order = np.argsort(group, kind="stable")  # input order within each group
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    ends = np.r_[starts[1:], len(order)]
    eligible = (ends - starts >= 2) & (verdict[sorted_group[starts]] == KEPT)
    cds = cd[order].tolist()
    target = np.zeros(len(group))
    for a, b in zip(starts[eligible].tolist(), ends[eligible].tolist(), strict=True):
        target[order[a:b]] = targets.target(sum(cds[a:b]) / (b - a))  # preference.pair_target
    rows = order[np.repeat(eligible, ends - starts)]
    if len(rows) == 0:
        return []
    fit = -_round6(np.abs(rv[rows] - target[rows]))
    sound = _round6(logic[rows])
    ranked = np.lexsort((id_rank[rows], sound, fit, correct[rows], group[rows]))
    rows, fit, sound = rows[ranked], fit[ranked], sound[ranked]
    keys = group[rows]
    lo = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    hi = np.r_[lo[1:], len(rows)] - 1
    out = []
    for w, b in zip(lo.tolist(), hi.tolist(), strict=True):
        kb = (int(correct[rows[b]]), float(fit[b]), float(sound[b]))
        kw = (int(correct[rows[w]]), float(fit[w]), float(sound[w]))
        if kb != kw:
            out.append((int(rows[b]), int(rows[w]), _beta(c, kb, kw)))
    first_row = order[starts]  # each group's first row in input order, by group number
    return sorted(out, key=lambda pair: int(first_row[group[pair[0]]]))


def _beta(c: SelectConfig, kb: tuple, kw: tuple) -> float | None:
    """CogPO's per-pair beta (``select.preference_pair``)."""
    if c.pair_beta is None:
        return None
    gap = (kb[0] - kw[0]) / 2 if kb[0] != kw[0] else (kb[1] - kw[1]) / 9 if kb[1] != kw[1] else kb[2] - kw[2]
    return round(c.pair_beta * (1 + c.pair_beta_scale * gap), 6)


# ---------------------------------------------------------------- writing


_VALUE = re.compile(rb'\s*:\s*(true|false|null|"(?:[^"\\]|\\.)*")')


def _value_span(line: bytes, name: bytes) -> tuple[int, int] | None:
    """Where the value of top-level key ``name`` (quoted) lies in a JSON line. An unescaped quote
    cannot occur inside a JSON string, so ``"name"`` followed by a colon is the key itself."""
    end = len(line)
    while True:
        at = line.rfind(name, 0, end)
        if at < 0:
            return None
        found = _VALUE.match(line, at + len(name))
        if found:
            return found.span(1)
        end = at


_JUDGED = b'"kept":false,"dropped_by":null'  # how the judge writes them (model_dump_json)


def mark(line: bytes, reason: str | None) -> bytes:
    """The raw row with ``kept`` and ``dropped_by`` set; every other byte as it was."""
    at = line.rfind(_JUDGED)
    if at >= 0:  # the judge's own layout: one splice
        if reason is None:
            value = b'"kept":true,"dropped_by":null'
        else:
            value = b'"kept":false,"dropped_by":"' + reason.encode() + b'"'
        return line[:at] + value + line[at + len(_JUDGED) :]
    kept = _value_span(line, b'"kept"')
    if kept is None:
        raise RecordError(f"no kept field in {line[:80]!r}")
    dropped = _value_span(line, b'"dropped_by"')
    kept_value = b"true" if reason is None else b"false"
    dropped_value = b"null" if reason is None else b'"' + reason.encode() + b'"'
    edits = [(kept, kept_value)]
    edits.append(
        (dropped, dropped_value) if dropped else ((kept[1], kept[1]), b',"dropped_by":' + dropped_value)
    )
    for (start, end), value in sorted(edits, reverse=True):
        line = line[:start] + value + line[end:]
    return line


def _assistant(row: Any) -> bytes:
    reasoning = bytes(row.reasoning)
    reasoning = b"null" if reasoning == b'""' else reasoning
    return (
        b'{"role":"assistant","content":' + bytes(row.content) + b',"reasoning_content":' + reasoning + b"}"
    )


def _prompt(row: Any, prompt: tuple[bytes, list[bytes]]) -> bytes:
    """The prompt messages of a row: ``prompt`` is ``_prompt_parts``' system message and the student
    prompt's template cut at ``{{problem}}`` (JSON-escaped), joined around the raw problem string."""
    system, pieces = prompt
    problem = bytes(row.problem)[1:-1]  # the raw JSON string without its quotes
    user = b'"' + problem.join(pieces) + b'"'
    return system + b'{"role":"user","content":' + user + b',"reasoning_content":null}'


def sft_line(
    row: Any, rv: float, cd: float, stage: int, c: SelectConfig, prompt: tuple[bytes, list[bytes]]
) -> bytes:
    """``select.sft_example(...).model_dump_json()`` of a row, assembled from its raw JSON values."""
    head = b'{"id":' + bytes(row.id) + b',"messages":[' + _prompt(row, prompt) + b"," + _assistant(row)
    thinking = "null" if c.enable_thinking is None else "true" if c.enable_thinking else "false"
    curriculum = "null" if stage < 0 else str(stage)
    tail = f'],"enable_thinking":{thinking},"rv":{rv!r},"cd":{cd!r},"curriculum_stage":{curriculum}}}\n'
    return head + tail.encode()


def pair_line(best: Any, worst: Any, beta: float | None, prompt: tuple[bytes, list[bytes]]) -> bytes:
    """``select.preference_pair(...).model_dump_json()``, assembled from the two rows' raw values."""
    pair_id = bytes(best.problem_id)[:-1] + b'/pair"'  # the raw JSON string, "/pair" appended
    return (
        b'{"id":' + pair_id + b',"prompt":[' + _prompt(best, prompt)
        + b'],"chosen":[' + _assistant(best) + b'],"rejected":[' + _assistant(worst)
        + b'],"beta":' + (b"null" if beta is None else repr(beta).encode()) + b"}\n"
    )  # fmt: skip


def _prompt_parts(c: SelectConfig) -> tuple[bytes, list[bytes]]:
    """The system message (raw JSON, with its trailing comma; empty without one) and the pieces of
    ``c.prompt_template`` around ``{{problem}}`` as JSON string contents (``distilflow.prompts.render``)."""
    pieces = [json.dumps(p, ensure_ascii=False)[1:-1].encode() for p in c.prompt_template.split(PLACEHOLDER)]
    if not c.system_prompt:
        return b"", pieces
    system = json.dumps(c.system_prompt, ensure_ascii=False).encode()
    return b'{"role":"system","content":' + system + b',"reasoning_content":null},', pieces


def write(
    path: str, cols: Columns, d: Decided, c: SelectConfig, workdir: str, shard_rows: int | None
) -> StreamOutputs:
    """Pass 2: scored rows (all, input order), SFT examples (kept rows, input order within each
    curriculum stage) and preference pairs (problem order) as shards in ``workdir``."""
    decode = _decoders()[1].decode
    prompt = _prompt_parts(c)
    reasons = d.reason.tolist()
    stages = d.stage.tolist()
    n_stages = max(stages) + 1 if c.curriculum and stages else 1
    parts = [os.path.join(workdir, f"sft-stage-{i:03d}.jsonl") for i in range(n_stages)]
    part_fs = [open(p, "wb", buffering=BUFFER) for p in parts]  # noqa: SIM115 (closed below)
    try:
        with (
            open(path, "rb", buffering=BUFFER) as f,
            ShardWriter(workdir, "scored", shard_rows, binary=True) as scored_f,
        ):
            i, offset, starts = 0, 0, cols.offsets
            for line in f:
                at, offset = offset, offset + len(line)
                if i == len(starts) or at != starts[i]:  # a blank line the scan skipped
                    continue
                code = reasons[i]
                if not line.endswith(b"\n"):  # the last line of a file without a final newline
                    line += b"\n"
                scored_f.write(mark(line, None if code == KEPT else FILTERS[code]))
                if code == KEPT:
                    stage = stages[i]
                    part_fs[max(stage, 0)].write(
                        sft_line(decode(line), cols.rv[i], cols.cd[i], stage, c, prompt)
                    )
                i += 1
    finally:
        for part in part_fs:
            part.close()
    with ShardWriter(workdir, "sft", shard_rows, binary=True) as sft_f:
        for part in parts:
            with open(part, "rb") as f:
                for line in f:
                    sft_f.write(line)
            os.remove(part)
    with ShardWriter(workdir, "preference", shard_rows, binary=True) as pair_f, open(path, "rb") as f:
        fd = f.fileno()
        for best, worst, beta in d.pairs:
            rows = [decode(os.pread(fd, cols.lengths[r], cols.offsets[r])) for r in (best, worst)]
            pair_f.write(pair_line(rows[0], rows[1], beta, prompt))
    return StreamOutputs(scored_f.paths, sft_f.paths, pair_f.paths)


# ---------------------------------------------------------------- statistics and the entry point


def stats_of(path: str, cols: Columns, d: Decided) -> SelectionStats:
    """The report's counts, histograms and samples (the first rows kept and dropped, input order)."""
    import msgspec
    import numpy as np

    stats = SelectionStats(
        rows_in=len(cols), pairs=len(d.pairs), contamination_problems=d.contamination_problems
    )
    rv, cd = np.frombuffer(cols.rv), np.frombuffer(cols.cd)
    cell = np.minimum(rv.astype(np.int64), 9) * 10 + np.minimum(cd.astype(np.int64), 9)
    kept = d.reason == KEPT
    stats.grid_before = np.bincount(cell, minlength=100).reshape(10, 10).tolist()
    stats.grid_after = np.bincount(cell[kept], minlength=100).reshape(10, 10).tolist()
    stats.sum_rv, stats.sum_cd = sum(cols.rv), sum(cols.cd)
    answers = np.bincount(np.frombuffer(cols.correct, dtype=np.int8).astype(np.int64), minlength=3)
    stats.answers = {"correct": int(answers[2]), "incorrect": int(answers[0]), "unverified": int(answers[1])}
    counts = np.bincount(d.reason[~kept].astype(np.int64), minlength=len(FILTERS))
    stats.dropped = {name: int(counts[i]) for i, name in enumerate(FILTERS)}
    stats.kept = stats.sft_rows = int(kept.sum())
    if d.stage.size and d.stage.max() >= 0:
        got = np.bincount(d.stage[kept], minlength=d.stage.max() + 1)
        stats.stages = {i: int(v) for i, v in enumerate(got.tolist()) if v}
    with open(path, "rb") as f:
        fd = f.fileno()
        for rows, samples in (
            (np.flatnonzero(kept)[:5], stats.samples_kept),
            (np.flatnonzero(~kept)[:5], stats.samples_dropped),
        ):
            for r in rows.tolist():
                row = msgspec.json.decode(os.pread(fd, cols.lengths[r], cols.offsets[r]))
                code = int(d.reason[r])
                samples.append(
                    {
                        "id": row["id"],
                        "rv": row["rv"],
                        "cd": row["cd"],
                        "correct": row["correct"],
                        "dropped_by": None if code == KEPT else FILTERS[code],
                        "problem": row["problem"][:300],
                        "reasoning": row["reasoning"][:300],
                    }
                )
    return stats


def select_file(
    path: str, c: SelectConfig, workdir: str, shard_rows: int | None = None
) -> tuple[StreamOutputs, SelectionStats]:
    """Apply the selection rules to the Scored rows of the local JSONL file ``path``.

    Writes scored rows, SFT examples and preference pairs in ``workdir`` as shards of at most
    ``shard_rows`` rows (None: one file each), as ``select.select_stream`` does, and returns them
    with the selection statistics. A line that is not a Scored record raises RecordError naming
    ``path:line``.
    """
    os.makedirs(workdir, exist_ok=True)
    cols = scan(path)
    decided = decide(cols, c, Targets(c))
    outputs = write(path, cols, decided, c, workdir, shard_rows)
    return outputs, stats_of(path, cols, decided)
