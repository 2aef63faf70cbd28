"""Configuration of the ``curate`` stage (cheap to import: no torch, no transformers).

``SelectConfig`` holds the selection, mixing and pair-building settings: everything that runs
without the judge (``distilflow.components.curate.select``). ``CurateConfig`` adds the judge and
the stage's input/output folders.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from distilflow.config import BaseConfig
from distilflow.sources import Source
from distilflow.teachers.config import TeacherConfig
from distilflow.uri import Uri

# Fields the pipeline fills in: this stage's folder and the distill output folder it reads.
WIRED = ("output_uri", "data_uri")

# The versioned rubric templates under distilflow/templates, one per judged quantity.
JUDGE_TEMPLATES = {"rv": "judge_rv_v1", "cd": "judge_cd_v1", "logic": "judge_logic_v1"}
FORMAT_TEMPLATES = {"logprobs": "judge_format_logprobs_v1", "generate": "judge_format_generate_v1"}

# RV targets named by level (on the 0-9 RV scale): distilflow.preference.RV_LEVELS
RvTarget = float | Literal["low", "medium", "high", "matched"]

# Student-size presets (ThoughtX/ThoughtY-style selection, OmniThought arXiv:2505.10937): CD bins
# easy [0,3) / medium [3,6) / hard [6,9], an RV target per bin and k traces per problem. OmniThought
# reports that the best verbosity of training CoTs grows with the student's size and with the
# problem's difficulty; these numbers are starting points in that direction, not values tuned in a
# paper. A preset fills only the fields a config leaves unset.
PRESETS: dict[str, dict[str, Any]] = {
    "1.5b": {"cd_bins": [0, 3, 6, 9], "rv_targets": [2.0, 3.0, 4.0], "per_problem": 1},
    "7b": {"cd_bins": [0, 3, 6, 9], "rv_targets": [3.0, 4.5, 6.0], "per_problem": 2},
    "32b": {"cd_bins": [0, 3, 6, 9], "rv_targets": ["matched", "matched", "matched"], "per_problem": 4},
}


class SelectConfig(BaseConfig):
    """Selection and mixing of scored traces, SFT rendering and preference pairs (no judge needed)."""

    preset: Literal["1.5b", "7b", "32b"] | None = Field(
        None,
        description="Student-size preset (see PRESETS): fills cd_bins, rv_targets and per_problem unless given",
    )
    rv_min: float = Field(0, ge=0, le=9, description="Keep traces with reasoning verbosity >= rv_min")
    rv_max: float = Field(9, ge=0, le=9, description="Keep traces with reasoning verbosity <= rv_max")
    cd_min: float = Field(0, ge=0, le=9, description="Keep traces with cognitive difficulty >= cd_min")
    cd_max: float = Field(9, ge=0, le=9, description="Keep traces with cognitive difficulty <= cd_max")
    min_logic: float = Field(
        0.5, ge=0, le=1, description="Keep traces the judge finds logically sound with P >= this"
    )
    require_correct: bool = Field(
        True, description="Drop traces whose final answer does not match the reference"
    )
    keep_unverified: bool = Field(True, description="Keep traces whose problem has no reference answer")
    rv_target_offset: float = Field(
        0.0,
        description="'matched' RV target (and the target without cd_bins): offset + scale * CD, clipped to 0-9",
    )
    rv_target_scale: float = Field(
        1.0,
        ge=0,
        description="How fast the matched RV target grows with CD (harder problems deserve longer reasoning)",
    )
    cd_bins: list[float] | None = Field(
        None,
        description="Ascending CD bin edges, e.g. [0, 3, 6, 9]: bin i is [edge_i, edge_i+1), the last one closed; "
        "null: one bin",
    )
    rv_targets: list[RvTarget] | None = Field(
        None,
        description="RV target per CD bin (one value for all bins, or one per bin): a number (fixed), "
        "low/medium/high (2/4.5/7) or matched (offset + scale * the bin's middle CD); null: matched per row",
    )
    per_problem: int | None = Field(
        None,
        ge=1,
        description="Keep at most this many traces per problem, those with RV closest to the target",
    )
    per_bin: int | list[int] | None = Field(
        None,
        description="Keep at most this many traces per CD bin (one number, or one per bin), closest to the target",
    )
    domain_quotas: dict[str, int] | None = Field(
        None,
        description="Most traces kept per domain (after per_bin), closest to the target; 'none' names rows "
        "without a domain; domains not listed are not capped",
    )
    dedup: Literal["none", "exact", "near"] = Field(
        "exact",
        description="Drop duplicate problems: exact (same normalised text) or near (exact, then MinHash LSH "
        "over word 3-grams); the problem with the smallest id (exact) or text hash (near) is kept",
    )
    near_dup_threshold: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Jaccard similarity of word 3-gram sets above which problems are near-duplicates",
    )
    decontaminate_uris: list[Uri] = Field(
        default_factory=list,
        description="Evaluation problem JSONL files (records.Problem); training problems sharing a word n-gram "
        "with any of them are dropped and counted",
    )
    decontaminate_ngram: int = Field(
        8, ge=1, description="n of the word n-grams compared with the evaluation problems"
    )
    curriculum: bool = Field(
        False,
        description="Write sft.jsonl in curriculum order (easiest CD bin first) with curriculum_stage set; "
        "needs cd_bins, and an sft stage that does not shuffle",
    )
    pair_beta: float | None = Field(
        None,
        gt=0,
        description="CogPO per-pair beta: beta = pair_beta * (1 + pair_beta_scale * gap), gap in [0, 1] "
        "the preference gap of the pair; null: no per-pair beta (the dpo stage's default)",
    )
    pair_beta_scale: float = Field(1.0, ge=0, description="How much beta grows with the preference gap")
    system_prompt: str | None = Field(
        None, description="System message put first in every SFT example and DPO prompt"
    )
    enable_thinking: bool | None = Field(
        None,
        description="enable_thinking recorded on each SFT example (Qwen3 templates); None: the template default",
    )
    bucket_mb: int = Field(
        64,
        ge=1,
        description="Selection groups rows by problem in on-disk buckets of about this many MiB each "
        "(memory use grows with it)",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            return PRESETS[data["preset"]] | {k: v for k, v in data.items() if v is not None}
        return data

    @model_validator(mode="after")
    def _check_selection(self) -> SelectConfig:
        problems = [
            f"{lo}={getattr(self, lo)} is above {hi}={getattr(self, hi)}; swap them or widen the range"
            for lo, hi in (("rv_min", "rv_max"), ("cd_min", "cd_max"))
            if getattr(self, lo) > getattr(self, hi)
        ]
        edges = self.cd_bins
        n_bins = len(edges) - 1 if edges else 1
        if edges is not None and (
            len(edges) < 2
            or any(b <= a for a, b in zip(edges, edges[1:], strict=False))
            or edges[0] < 0
            or edges[-1] > 9
        ):
            problems.append(f"cd_bins={edges} must be at least two strictly ascending edges within 0-9")
        for name in ("rv_targets", "per_bin"):
            value = getattr(self, name)
            if isinstance(value, list) and len(value) not in (1, n_bins):
                problems.append(f"{name} has {len(value)} values but cd_bins={edges} makes {n_bins} bins")
        for target in self.rv_targets or []:
            if isinstance(target, float) and not 0 <= target <= 9:
                problems.append(f"rv_targets value {target} is outside the RV scale 0-9")
        if self.curriculum and edges is None:
            problems.append("curriculum=true needs cd_bins (e.g. [0, 3, 6, 9] or preset: 7b)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class CurateConfig(SelectConfig):
    """Score traces with an LLM judge (RV, CD, logic), verify answers, select rows, build SFT and DPO data."""

    output_uri: Uri = Field(description="Folder or URI this stage writes scored/sft/preference JSONL to")
    data_uri: Uri | None = Field(
        None,
        description="The distill output folder (holds traces.jsonl and a completion marker); or give corpus",
    )
    corpus: Source | None = Field(
        None,
        description="Traces already scored (rv, cd, logic present), instead of data_uri: a file, folder or glob "
        "of Scored records (.jsonl/.parquet, also hf://datasets/...) or a source mapping, e.g. {uri: ..., "
        "preset: omnithought}; selection runs on the given scores without a judge call",
    )
    judge: TeacherConfig | None = Field(
        None,
        description="The model that scores traces (temperature is ignored in logprobs mode); needed with "
        "data_uri, unused with corpus",
    )
    mode: Literal["logprobs", "generate"] = Field(
        "logprobs",
        description="logprobs: the judge answers one digit and the score is the expected value of its next-token "
        "distribution over the digits (OmniThought); generate: the judge explains, then writes <score>N</score>, "
        "which is parsed (unparseable judgments are counted and the trace is left unscored)",
    )
    batch_size: int = Field(
        16,
        ge=1,
        description="Traces judged per round: their rv, cd and logic judgments are asked together (an "
        "endpoint judge keeps judge.concurrency in flight, so raise this to keep it busy; an in-process judge "
        "answers them as one batch)",
    )
    crv: bool = Field(
        False,
        description="CRV refinement (DistilQwen2.5-R1): critic labels each trace easy/medium/hard for "
        "crv_student; easy ones are expanded, hard ones simplified; a rewrite replaces the original only if "
        "its answer is unchanged (and still correct), and is then scored again",
    )
    crv_student: str = Field("1.5b", description="Student size named in the CRV prompts, e.g. 1.5b, 7b")
    crv_critic: Literal["judge", "cd"] = Field(
        "judge",
        description="judge: the judge model labels each trace (crv_critic_v1, <level> tag); cd: the judged CD "
        "below crv_easy_below is easy, above crv_hard_above hard",
    )
    crv_easy_below: float = Field(3.0, ge=0, le=9, description="crv_critic=cd: CD below this is easy")
    crv_hard_above: float = Field(6.0, ge=0, le=9, description="crv_critic=cd: CD above this is hard")
    crv_rewriter: TeacherConfig | None = Field(
        None, description="The model that rewrites traces (and critiques them); null: the judge"
    )
    cache_uri: Uri | None = Field(
        None,
        description="Folder or URI of the content-addressed teacher cache every judge, critic and rewrite "
        "answer goes to (None: <output_uri>/cache); a rerun after a kill re-sends no answered request. "
        "Share it with distill's cache_uri or other runs: keys cover the model and the whole request",
    )
    shard_rows: int = Field(
        100_000,
        ge=1,
        description="Rows per output shard: scored/sft/preference/judge_failures are written as "
        "<kind>-NNNNN-of-NNNNN.jsonl files of at most this many rows, listed in the manifest",
    )
    single_files: bool = Field(
        False,
        description="Also write each output whole (scored.jsonl, sft.jsonl, preference.jsonl, "
        "judge_failures.jsonl) beside its shards, for tools that read one file by name (twice the disk); "
        "the stages read the shards (distilflow.records.iter_output_rows)",
    )

    @model_validator(mode="after")
    def _check_input(self) -> CurateConfig:
        if (self.data_uri is None) == (self.corpus is None):
            given = "both" if self.data_uri else "neither"
            raise ValueError(
                f"give data_uri (a distill output to judge) or corpus (traces already scored), got {given}"
            )
        if self.data_uri is not None and self.judge is None:
            raise ValueError("data_uri needs a judge to score its traces (or give a scored corpus instead)")
        if self.corpus is not None and self.crv:
            raise ValueError(
                "crv=true rewrites and re-judges traces, which a scored corpus is not; set crv=false"
            )
        return self

    def selection(self) -> SelectConfig:
        """The selection part of this config."""
        return SelectConfig.model_validate({k: getattr(self, k) for k in SelectConfig.model_fields})
