"""Selection, mixing, deduplication, decontamination and preference pairs over scored traces.

Pure functions of ``records.Scored`` rows and a ``SelectConfig``: no judge, no model. The stage
runs ``columnar.select_file`` (the rules over columns, two passes, raw bytes copied); the two
implementations here are the references it is tested against, row for row:

- ``select_stream`` streams JSONL lines in bounded memory: pass 1 routes every row to an on-disk
  bucket by the hash of its normalised problem text (so a problem and its exact duplicates meet in
  one bucket) and writes MinHash LSH band keys to band buckets; the band buckets are then resolved
  into near-duplicate drops; pass 2 loads one bucket at a time, applies the problem and row filters,
  keeps k per problem and builds the pairs; global caps (per CD bin, per domain) keep only their
  current best rows in memory, and a last pass over the few rows they held writes the final flags.
  Memory grows with the bucket size and the caps, not with the dataset.
- ``select_in_memory`` loads every row and applies the rules directly: the reference the tests
  compare the streaming path with, and the naive pass of ``bench/bench_curate.py``.

Rules, in order (the first that fails names ``Scored.dropped_by``): ``contaminated`` (shares a word
n-gram with an evaluation problem), ``duplicate`` (same normalised text as a problem with a smaller
id), ``near_duplicate`` (MinHash LSH candidate of a text with a smaller hash), ``cd_range``,
``rv_range``, ``logic``, ``incorrect`` / ``unverified`` (answer policy), ``per_problem`` (beyond k
closest to the RV target), ``per_bin``, ``domain_quota``. Ties are broken by trace id, so the
result does not depend on the input order.

Preference pairs (one per problem with two distinguishable traces, among rows that pass the
problem filters): chosen = best, rejected = worst by (answer check: right > unverified > wrong,
then closeness of RV to the target for the problem's mean CD, then logic), the rule of
``distilflow.preference`` (shared with the reward stage). With ``pair_beta`` the
row carries CogPO's per-pair beta (Cai et al. 2025, "Training Small Reasoning LLMs with Cognitive
Preference Alignment", DistilQwen2.5-R1, arXiv:2504.09802): larger for a larger preference gap.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import json
import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from distilflow.components.curate.config import SelectConfig
from distilflow.components.curate.shards import ShardWriter
from distilflow.errors import RecordError
from distilflow.preference import (
    PROBLEM_FILTERS,
    RvTargets,
    assistant,
    pair_target,
    preference_key,
    prompt_messages,
)
from distilflow.records import PreferencePair, Problem, Scored, SftExample

ROW_FILTERS = ("cd_range", "rv_range", "logic", "incorrect", "unverified")
CAP_FILTERS = ("per_problem", "per_bin", "domain_quota")
FILTERS = PROBLEM_FILTERS + ROW_FILTERS + CAP_FILTERS
WORD_RE = re.compile(r"\w+")
SHINGLE = 3  # word n-grams for near-duplicate detection
NUM_PERM = 64  # MinHash values per signature: one 256-byte shake_128 digest per shingle, split in 64
_UNPACK = struct.Struct(f"<{NUM_PERM}I").unpack
NO_DOMAIN = "none"


def filter_flow(scored: int, dropped: dict[str, int]) -> list[tuple[str, int, int]]:
    """(filter, rows in, rows out) in the order the filters apply: each row is dropped by the
    first filter it fails, so a filter sees what the ones before it let through."""
    flow, rows = [], scored
    for name in FILTERS:
        out = rows - dropped.get(name, 0)
        flow.append((name, rows, out))
        rows = out
    return flow


# ---------------------------------------------------------------- text keys, MinHash, n-grams


def normalise_text(text: str) -> str:
    """Lower-case words only: punctuation, spacing and case do not make a problem new."""
    return " ".join(WORD_RE.findall(text.lower()))


def text_key(norm: str) -> str:
    return hashlib.blake2b(norm.encode(), digest_size=8).hexdigest()


def minhash(words: list[str], n: int = SHINGLE) -> list[int]:
    """MinHash signature (NUM_PERM 32-bit values) of the word n-gram set; the hash family is
    shake_128, each digest split into NUM_PERM 32-bit values."""
    grams = {" ".join(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))}
    rows = [_UNPACK(hashlib.shake_128(gram.encode()).digest(4 * NUM_PERM)) for gram in grams]
    return list(map(min, zip(*rows, strict=True)))


def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) minimising false positives below ``threshold`` plus false negatives
    above it, integrated over the Jaccard similarity (as datasketch's MinHashLSH chooses them)."""
    grid = [i / 200 for i in range(201)]

    def error(b: int, r: int) -> float:
        hit = [1 - (1 - s**r) ** b for s in grid]
        return sum(h if s < threshold else 1 - h for s, h in zip(grid, hit, strict=True))

    return min(
        ((b, r) for r in range(1, num_perm + 1) for b in range(1, num_perm // r + 1)),
        key=lambda br: error(*br),
    )


def band_keys(signature: list[int], bands: int, rows: int) -> list[str]:
    return [
        hashlib.blake2b(
            struct.pack(f"<{rows}I", *signature[i * rows : (i + 1) * rows]) + bytes([i]), digest_size=8
        ).hexdigest()
        for i in range(bands)
    ]


def _ngrams(words: list[str], n: int) -> list[str]:
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)] or [" ".join(words)]


def _ngram_hashes(words: list[str], n: int) -> set[int]:
    grams = _ngrams(words, n)
    return {int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") for g in grams}


def _evaluation_problems(uri: str) -> Iterator[Problem]:
    """The problems of an evaluation file: JSONL line by line, Parquet through ``distilflow.sources``."""
    from distilflow.sources import file_format, iter_records

    if file_format(uri) == "parquet":
        yield from iter_records(uri, Problem, unique_ids=False)
        return
    for _, line in iter_lines(uri):
        try:
            yield Problem.model_validate_json(line)
        except ValueError as exc:
            raise RecordError(f"{uri}: evaluation problem {line[:80]!r}: {exc}") from None


class Contamination:
    """Word n-gram hashes of evaluation problems; a problem shorter than n words counts as one n-gram."""

    def __init__(self, uris: Iterable[str], n: int):
        self.n = n
        self.ngrams: set[int] = set()
        self.grams: set[str] = set()  # the same n-grams as text (columnar.py compares them directly)
        self.problems = 0
        for uri in uris:
            for problem in _evaluation_problems(uri):
                words = normalise_text(problem.problem).split()
                self.ngrams |= _ngram_hashes(words, n)
                self.grams.update(_ngrams(words, n))
                self.problems += 1

    def hit(self, words: list[str]) -> bool:
        return not self.ngrams.isdisjoint(_ngram_hashes(words, self.n))


# ---------------------------------------------------------------- targets and row rules


class Targets(RvTargets):
    """CD bins, the RV target of each (``distilflow.preference.RvTargets``) and the per-bin caps."""

    def __init__(self, c: SelectConfig):
        super().__init__(c)
        caps = [c.per_bin] if isinstance(c.per_bin, int) else c.per_bin
        self.bin_caps = None if caps is None else caps * self.n_bins if len(caps) == 1 else caps

    def distance(self, row: Scored) -> float:
        return round(abs(row.rv - self.target(row.cd)), 6)


def row_filter(row: Scored, c: SelectConfig) -> str | None:
    """The first row rule ``row`` fails, or None."""
    if not c.cd_min <= row.cd <= c.cd_max:
        return "cd_range"
    if not c.rv_min <= row.rv <= c.rv_max:
        return "rv_range"
    if row.logic < c.min_logic:
        return "logic"
    if row.correct is False and c.require_correct:
        return "incorrect"
    if row.correct is None and not c.keep_unverified:
        return "unverified"
    return None


def sft_example(row: Scored, c: SelectConfig, stage: int | None = None) -> SftExample:
    return SftExample(
        id=row.id,
        messages=[*prompt_messages(row.problem, c.system_prompt), assistant(row)],
        enable_thinking=c.enable_thinking,
        rv=row.rv,
        cd=row.cd,
        curriculum_stage=stage,
    )


def preference_pair(rows: list[Scored], c: SelectConfig, targets: Targets) -> PreferencePair | None:
    """Best against worst of one problem's traces (see the module docstring); None when they tie."""
    if len(rows) < 2:
        return None
    target = pair_target(rows, targets)

    def key(r: Scored) -> tuple:
        return preference_key(r, target)

    best = max(rows, key=lambda r: (key(r), r.id))
    worst = min(rows, key=lambda r: (key(r), r.id))
    kb, kw = key(best), key(worst)
    if kb == kw:
        return None
    beta = None
    if c.pair_beta is not None:
        # gap in [0, 1]: a correctness step counts 0.5; else the fit gap over the RV scale; else logic
        gap = (
            (kb[0] - kw[0]) / 2
            if kb[0] != kw[0]
            else (kb[1] - kw[1]) / 9
            if kb[1] != kw[1]
            else kb[2] - kw[2]
        )
        beta = round(c.pair_beta * (1 + c.pair_beta_scale * gap), 6)
    return PreferencePair(
        id=f"{best.problem_id}/pair",
        prompt=prompt_messages(best.problem, c.system_prompt),
        chosen=[assistant(best)],
        rejected=[assistant(worst)],
        beta=beta,
    )


# ---------------------------------------------------------------- shared per-problem decisions


@dataclass
class Decision:
    """What selection decided about one row before the global caps."""

    row: Scored
    dropped_by: str | None
    pending: bool  # still competing for a per-bin or per-domain cap
    rank: tuple = ()


def decide_group(
    rows: list[Scored], problem_drop: str | None, c: SelectConfig, targets: Targets, capped: bool
) -> tuple[list[Decision], PreferencePair | None]:
    """Rules for the rows of one problem (one problem id) given its problem-level verdict."""
    if problem_drop is not None:
        return [Decision(r, problem_drop, False) for r in rows], None
    pair = preference_pair(rows, c, targets)
    out, passing = [], []
    for r in rows:
        reason = row_filter(r, c)
        if reason:
            out.append(Decision(r, reason, False))
        else:
            passing.append(r)
    passing.sort(key=lambda r: (targets.distance(r), r.id))
    k = c.per_problem or len(passing)
    for i, r in enumerate(passing):
        if i >= k:
            out.append(Decision(r, "per_problem", False))
        else:
            out.append(Decision(r, None, capped, (targets.distance(r), r.id)))
    return out, pair


class Caps:
    """Global per-bin then per-domain caps, holding at most cap (x2 before a trim) rows per group."""

    def __init__(self, c: SelectConfig, targets: Targets):
        self.targets = targets
        self.bin_caps = targets.bin_caps
        self.quotas = c.domain_quotas or {}
        self.groups: dict[Any, list[tuple]] = collections.defaultdict(list)

    @property
    def active(self) -> bool:
        return self.bin_caps is not None or bool(self.quotas)

    def applies(self, row: Scored) -> bool:
        return self.bin_caps is not None or (row.domain or NO_DOMAIN) in self.quotas

    def _group(self, row: Scored) -> tuple[Any, int]:
        if self.bin_caps is not None:
            b = self.targets.bin_of(row.cd)
            return b, self.bin_caps[b]
        domain = row.domain or NO_DOMAIN
        return domain, self.quotas[domain]

    def offer(self, row: Scored, rank: tuple) -> None:
        group, cap = self._group(row)
        items = self.groups[group]
        items.append((*rank, row.domain or NO_DOMAIN))
        if len(items) > 2 * cap + 16:
            self.groups[group] = heapq.nsmallest(cap, items)

    def winners(self) -> dict[str, str | None]:
        """id -> None for rows that stay, or the cap that dropped them (only rows that were offered
        and are still held; a row trimmed earlier is a loser of its group's cap)."""
        verdict: dict[str, str | None] = {}
        survivors = []
        for group, items in self.groups.items():
            cap = self.bin_caps[group] if self.bin_caps is not None else self.quotas[group]
            items.sort()
            survivors.extend(items[:cap])
            for item in items[cap:]:
                verdict[item[1]] = "per_bin" if self.bin_caps is not None else "domain_quota"
        if self.bin_caps is not None and self.quotas:
            per_domain: dict[str, list[tuple]] = collections.defaultdict(list)
            for item in survivors:
                per_domain[item[2]].append(item)
            survivors = []
            for domain, items in per_domain.items():
                cap = self.quotas.get(domain, len(items))
                items.sort()
                survivors.extend(items[:cap])
                for item in items[cap:]:
                    verdict[item[1]] = "domain_quota"
        for item in survivors:
            verdict[item[1]] = None
        return verdict

    def loser_reason(self) -> str:
        return "per_bin" if self.bin_caps is not None else "domain_quota"


# ---------------------------------------------------------------- statistics for the report


@dataclass
class SelectionStats:
    rows_in: int = 0
    kept: int = 0
    pairs: int = 0
    sft_rows: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))
    answers: dict[str, int] = field(default_factory=lambda: {"correct": 0, "incorrect": 0, "unverified": 0})
    grid_before: list[list[int]] = field(default_factory=lambda: [[0] * 10 for _ in range(10)])
    grid_after: list[list[int]] = field(default_factory=lambda: [[0] * 10 for _ in range(10)])
    sum_rv: float = 0.0
    sum_cd: float = 0.0
    stages: dict[int, int] = field(default_factory=dict)
    samples_kept: list[dict] = field(default_factory=list)
    samples_dropped: list[dict] = field(default_factory=list)
    contamination_problems: int = 0

    def seen(self, row: Scored) -> None:
        self.rows_in += 1
        self.sum_rv += row.rv
        self.sum_cd += row.cd
        self.grid_before[min(int(row.rv), 9)][min(int(row.cd), 9)] += 1
        self.answers[{True: "correct", False: "incorrect", None: "unverified"}[row.correct]] += 1

    def final(self, row: Scored, dropped_by: str | None, stage: int | None) -> None:
        self.count(row.rv, row.cd, dropped_by, stage)
        samples = self.samples_kept if dropped_by is None else self.samples_dropped
        if len(samples) < 5:
            samples.append(
                {
                    "id": row.id,
                    "rv": row.rv,
                    "cd": row.cd,
                    "correct": row.correct,
                    "dropped_by": dropped_by,
                    "problem": row.problem[:300],
                    "reasoning": row.reasoning[:300],
                }
            )

    def count(self, rv: float, cd: float, dropped_by: str | None, stage: int | None) -> None:
        """``final`` without the row: counts and grid only (no sample)."""
        if dropped_by is None:
            self.kept += 1
            self.grid_after[min(int(rv), 9)][min(int(cd), 9)] += 1
            if stage is not None:
                self.stages[stage] = self.stages.get(stage, 0) + 1
        else:
            self.dropped[dropped_by] += 1

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__ | {"stages": {str(k): v for k, v in sorted(self.stages.items())}}


# ---------------------------------------------------------------- in-memory reference


def _problem_verdicts(
    rows: list[Scored], c: SelectConfig, contamination: Contamination | None
) -> dict[str, str | None]:
    """problem id -> contaminated / duplicate / near_duplicate / None, over all rows at once."""
    texts: dict[str, str] = {}
    for r in rows:
        texts.setdefault(r.problem_id, normalise_text(r.problem))
    by_key: dict[str, list[str]] = collections.defaultdict(list)
    for pid, norm in texts.items():
        by_key[text_key(norm)].append(pid)
    near_drop: set[str] = set()
    if c.dedup == "near":
        bands, per_band = lsh_params(c.near_dup_threshold)
        buckets: dict[str, set[str]] = collections.defaultdict(set)
        for key, pids in by_key.items():
            for bk in band_keys(minhash(texts[pids[0]].split()), bands, per_band):
                buckets[bk].add(key)
        for members in buckets.values():
            near_drop |= members - {min(members)}
    verdicts: dict[str, str | None] = {}
    for key, pids in by_key.items():
        words = texts[pids[0]].split()
        contaminated = contamination is not None and contamination.hit(words)
        for pid in pids:
            if contaminated:
                verdicts[pid] = "contaminated"
            elif c.dedup != "none" and pid != min(pids):
                verdicts[pid] = "duplicate"
            elif key in near_drop:
                verdicts[pid] = "near_duplicate"
            else:
                verdicts[pid] = None
    return verdicts


@dataclass
class Selected:
    scored: list[Scored]
    sft: list[SftExample]
    pairs: list[PreferencePair]
    stats: SelectionStats


def select_in_memory(rows: list[Scored], c: SelectConfig) -> Selected:
    """The selection rules applied to a list held in memory (reference and naive baseline)."""
    contamination = (
        Contamination(c.decontaminate_uris, c.decontaminate_ngram) if c.decontaminate_uris else None
    )
    targets = Targets(c)
    caps = Caps(c, targets)
    verdicts = _problem_verdicts(rows, c, contamination)
    groups: dict[str, list[Scored]] = collections.defaultdict(list)
    for r in rows:
        groups[r.problem_id].append(r)
    decisions: list[Decision] = []
    pairs = []
    for pid in sorted(groups):
        got, pair = decide_group(groups[pid], verdicts[pid], c, targets, caps.active)
        decisions.extend(got)
        if pair is not None:
            pairs.append(pair)
    for d in decisions:
        if d.pending and caps.applies(d.row):
            caps.offer(d.row, d.rank)
    cap_verdicts = caps.winners()
    stats = SelectionStats()
    scored, sft = [], []
    for d in decisions:
        stats.seen(d.row)
        reason = d.dropped_by
        if reason is None and d.pending and caps.applies(d.row):
            reason = cap_verdicts.get(d.row.id, caps.loser_reason())
        stage = targets.bin_of(d.row.cd) if c.curriculum else None
        stats.final(d.row, reason, stage)
        scored.append(d.row.model_copy(update={"kept": reason is None, "dropped_by": reason}))
        if reason is None:
            sft.append(sft_example(d.row, c, stage))
    if c.curriculum:
        sft.sort(key=lambda e: e.curriculum_stage)
    stats.pairs = len(pairs)
    stats.sft_rows = len(sft)
    return Selected(scored, sft, pairs, stats)


# ---------------------------------------------------------------- streaming


def iter_lines(uri: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines of a local or remote text file, streamed."""
    from distilflow import uri as uris

    fs, path = uris.filesystem(uri)
    try:
        f = fs.open(path, "rt", encoding="utf-8")
    except FileNotFoundError:
        raise RecordError(f"{uri}: file not found") from None
    with f:
        for lineno, line in enumerate(f, start=1):
            text = line.rstrip("\n")
            if text.strip():
                yield lineno, text


def _parse(line: str, where: str) -> Scored:
    try:
        return Scored.model_validate_json(line)
    except ValueError as exc:
        raise RecordError(f"{where}: not a valid Scored record: {str(exc).splitlines()[-1]}") from None


@dataclass
class StreamOutputs:
    """Local shard files of each output, in order (an output with no rows has none)."""

    scored: list[str]
    sft: list[str]
    preference: list[str]


def select_stream(
    lines: Iterable[tuple[str, str]],
    c: SelectConfig,
    workdir: str,
    size_hint: int,
    buckets: int | None = None,
    shard_rows: int | None = None,
) -> tuple[StreamOutputs, SelectionStats]:
    """Apply the selection rules to ``(where, json line)`` pairs of Scored rows in bounded memory.

    Writes the scored rows, SFT examples and preference pairs in ``workdir`` (local) as shards
    ``scored-NNNNN.jsonl``, ``sft-NNNNN.jsonl`` and ``preference-NNNNN.jsonl`` of at most
    ``shard_rows`` rows (None: one file each). The number of buckets is ``size_hint`` bytes over
    ``bucket_mb`` unless ``buckets`` is given.
    """
    os.makedirs(workdir, exist_ok=True)
    k = buckets or min(max(1, -(-size_hint // (c.bucket_mb << 20))), 256)
    contamination = (
        Contamination(c.decontaminate_uris, c.decontaminate_ngram) if c.decontaminate_uris else None
    )
    targets = Targets(c)
    bucket_paths = [os.path.join(workdir, f"rows-{i:04d}.tsv") for i in range(k)]
    band_paths = [os.path.join(workdir, f"bands-{i:04d}.tsv") for i in range(k)]
    drop_paths = [os.path.join(workdir, f"near-drops-{i:04d}.txt") for i in range(k)]
    _route(lines, c, contamination, bucket_paths, band_paths if c.dedup == "near" else None)
    if c.dedup == "near":
        _resolve_bands(band_paths, drop_paths)
    stats = SelectionStats()
    caps = Caps(c, targets)
    pending_path = os.path.join(workdir, "pending.tsv")
    n_stages = targets.n_bins if c.curriculum else 1
    sft_parts = [os.path.join(workdir, f"sft-stage-{i:03d}.jsonl") for i in range(n_stages)]
    with (
        ShardWriter(workdir, "scored", shard_rows) as scored_f,
        ShardWriter(workdir, "preference", shard_rows) as pair_f,
        open(pending_path, "w", encoding="utf-8") as pending_f,
        _open_all(sft_parts) as sft_fs,
    ):
        for i in range(k):
            near_drops = _read_set(drop_paths[i]) if c.dedup == "near" else set()
            for d, pair in _decide_bucket(bucket_paths[i], near_drops, c, targets, caps.active):
                stats.seen(d.row)
                if pair is not None:
                    pair_f.write(pair.model_dump_json() + "\n")
                    stats.pairs += 1
                if d.pending and caps.applies(d.row):
                    caps.offer(d.row, d.rank)
                    _hold(d.row, c, targets, pending_f)
                    continue
                _emit(d.row, d.dropped_by, c, targets, stats, scored_f, sft_fs)
            os.remove(bucket_paths[i])
        pending_f.close()
        verdicts = caps.winners() if caps.active else {}
        with open(pending_path, encoding="utf-8") as f:
            for line in f:
                _release(line, verdicts, caps.loser_reason(), stats, scored_f, sft_fs)
    os.remove(pending_path)
    with ShardWriter(workdir, "sft", shard_rows) as sft_f:
        for part in sft_parts:
            with open(part, encoding="utf-8") as f:
                for line in f:
                    sft_f.write(line)
            os.remove(part)
    outputs = StreamOutputs(scored_f.paths, sft_f.paths, pair_f.paths)
    for path in band_paths + drop_paths:
        if os.path.exists(path):
            os.remove(path)
    stats.sft_rows = stats.kept
    if contamination is not None:
        stats.contamination_problems = contamination.problems
    return outputs, stats


class _open_all:
    def __init__(self, paths: list[str]):
        self.paths = paths

    def __enter__(self) -> list[Any]:
        self.files = [open(p, "w", encoding="utf-8") for p in self.paths]  # noqa: SIM115
        return self.files

    def __exit__(self, *exc: Any) -> None:
        for f in self.files:
            f.close()


def _read_set(path: str) -> set[str]:
    if not os.path.exists(path):
        return set()
    with open(path, encoding="utf-8") as f:
        return {line.strip() for line in f}


def _route(
    lines: Iterable[tuple[str, str]],
    c: SelectConfig,
    contamination: Contamination | None,
    bucket_paths: list[str],
    band_paths: list[str] | None,
) -> None:
    """Pass 1: each row to the bucket of its problem text's hash, with its contamination flag;
    LSH band keys of each distinct text to band buckets."""
    k = len(bucket_paths)
    bands, per_band = lsh_params(c.near_dup_threshold)
    # problem text -> (text key, bucket, contamination flag): a problem's traces usually come together,
    # so its text is normalised, hashed, checked and MinHashed once (bounded: cleared when full)
    cache: dict[str, tuple[str, int, int]] = {}
    with _open_all(bucket_paths) as row_fs, _open_all(band_paths or []) as band_fs:
        for where, line in lines:
            problem = _problem_text(line, where)
            known = cache.get(problem)
            if known is None:
                norm = normalise_text(problem)
                words = norm.split()
                key = text_key(norm)
                flag = int(contamination is not None and contamination.hit(words))
                if band_paths is not None:
                    for bk in band_keys(minhash(words), bands, per_band):
                        band_fs[int(bk, 16) % k].write(f"{bk}\t{key}\n")
                if len(cache) > 100_000:
                    cache.clear()
                known = cache[problem] = (key, int(key, 16) % k, flag)
            key, bucket, flag = known
            row_fs[bucket].write(f"{key}\t{flag}\t{where}\t{line}\n")


_PROBLEM_KEY = '"problem":'
_DECODER = json.JSONDecoder()


def _problem_text(line: str, where: str) -> str:
    """The ``problem`` value of a JSON row without parsing the whole row (reasoning is most of it).
    An unescaped ``"problem":`` cannot occur inside a JSON string, so the first one is the key."""
    at = line.find(_PROBLEM_KEY)
    if at >= 0:
        start = at + len(_PROBLEM_KEY)
        while line[start] in " \t":
            start += 1
        try:
            value = _DECODER.raw_decode(line, start)[0]
        except ValueError:
            value = None
        if isinstance(value, str):
            return value
    _parse(line, where)  # raises with the validation message
    raise RecordError(f"{where}: no problem text")


def _resolve_bands(band_paths: list[str], drop_paths: list[str]) -> None:
    """Texts sharing a band key with a smaller text hash are near-duplicates: write them to the drop
    file of their bucket."""
    k = len(drop_paths)
    with _open_all(drop_paths) as drop_fs:
        for path in band_paths:
            groups: dict[str, set[str]] = collections.defaultdict(set)
            with open(path, encoding="utf-8") as f:
                for line in f:
                    band, key = line.rstrip("\n").split("\t")
                    groups[band].add(key)
            for members in groups.values():
                if len(members) > 1:
                    smallest = min(members)
                    for key in members - {smallest}:
                        drop_fs[int(key, 16) % k].write(key + "\n")
            os.remove(path)


def _decide_bucket(
    path: str, near_drops: set[str], c: SelectConfig, targets: Targets, capped: bool
) -> Iterator[tuple[Decision, PreferencePair | None]]:
    """Pass 2 for one bucket: every row's decision; the problem's pair rides on its first row."""
    texts: dict[str, dict[str, list[Scored]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    flags: dict[str, bool] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, flag, where, raw = line.rstrip("\n").split("\t", 3)
            row = _parse(raw, where)
            texts[key][row.problem_id].append(row)
            flags[key] = flag == "1"
    for key in sorted(texts):
        problems = texts[key]
        first = min(problems)
        for pid in sorted(problems):
            if flags[key]:
                verdict = "contaminated"
            elif c.dedup != "none" and pid != first:
                verdict = "duplicate"
            elif key in near_drops:
                verdict = "near_duplicate"
            else:
                verdict = None
            decisions, pair = decide_group(problems[pid], verdict, c, targets, capped)
            for j, d in enumerate(decisions):
                yield d, (pair if j == 0 else None)


_KEPT = '"kept":true,"dropped_by":null'


def _hold(row: Scored, c: SelectConfig, targets: Targets, pending_f: Any) -> None:
    """Park a row that competes for a cap, rendered as if kept (scored and SFT JSON)."""
    stage = targets.bin_of(row.cd) if c.curriculum else None
    row.kept, row.dropped_by = True, None
    fields = [json.dumps(row.id), repr(row.rv), repr(row.cd), str(stage)]
    pending_f.write(
        "\t".join([*fields, row.model_dump_json(), sft_example(row, c, stage).model_dump_json()]) + "\n"
    )


def _release(
    line: str,
    verdicts: dict[str, str | None],
    loser: str,
    stats: SelectionStats,
    scored_f: Any,
    sft_fs: list[Any],
) -> None:
    """Write a parked row with the caps' verdict; only the JSON's kept/dropped_by change for a loser."""
    rid, rv, cd, stage_text, scored_json, sft_json = line.rstrip("\n").split("\t")
    reason = verdicts.get(json.loads(rid), loser)
    stage = None if stage_text == "None" else int(stage_text)
    if reason is None:
        scored_f.write(scored_json + "\n")
        sft_fs[stage or 0].write(sft_json + "\n")
    else:
        head, found, tail = scored_json.rpartition(_KEPT)
        if not found:  # a serialiser that spaces its JSON differently: parse and dump
            scored_json = (
                Scored.model_validate_json(scored_json)
                .model_copy(update={"kept": False, "dropped_by": reason})
                .model_dump_json()
            )
        else:
            scored_json = f'{head}"kept":false,"dropped_by":{json.dumps(reason)}{tail}'
        scored_f.write(scored_json + "\n")
    if len(stats.samples_kept if reason is None else stats.samples_dropped) < 5:
        stats.final(Scored.model_validate_json(scored_json), reason, stage)
    else:
        stats.count(float(rv), float(cd), reason, stage)


def _emit(
    row: Scored,
    reason: str | None,
    c: SelectConfig,
    targets: Targets,
    stats: SelectionStats,
    scored_f: Any,
    sft_fs: list[Any],
) -> None:
    stage = targets.bin_of(row.cd) if c.curriculum else None
    stats.final(row, reason, stage)
    row.kept, row.dropped_by = reason is None, reason
    scored_f.write(row.model_dump_json() + "\n")
    if reason is None:
        sft_fs[stage or 0].write(sft_example(row, c, stage).model_dump_json() + "\n")
