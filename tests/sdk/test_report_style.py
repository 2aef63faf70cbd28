"""One look across all stages' reports: shared styles, labelled axes with several ticks, rounded numbers,
tables not dicts, every logged point of a training curve, distill's histogram binned and its
throughput labelled for how the answers were generated. Each stage's report is built by its own
report module (``tests/report_samples.py``) and rendered in headless Chromium."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from distilflow import report_style as rs
from tests.browser import render_dom
from tests.report_samples import REPORTS


@pytest.mark.unit
def test_numbers_are_rounded_for_reading():
    cases = {
        3.0702934234234: "3.07",
        0.8412039: "0.841",
        12.0: "12",
        1234567.8: "1,234,568",
        0.00012345: "1.23e-4",
        2e-5: "2e-5",
        0.0: "0",
        17197: "17,197",
        True: "yes",
        None: "-",
    }
    assert {k: rs.fmt(k) for k in cases} == cases
    assert rs.fmt({"stop": 63, "length": 1}) == "stop: 63, length: 1"  # never "{'stop': 63, ...}"


@pytest.mark.unit
def test_ticks_are_round_and_cover_the_data():
    assert rs.nice_ticks(1, 30, 6) == [0, 10, 20, 30]
    assert rs.nice_ticks(0.512, 3.07, 5) == [0, 1, 2, 3, 4]
    assert rs.nice_ticks(0.31, 0.69, 5) == [0.3, 0.4, 0.5, 0.6, 0.7]
    assert rs.nice_ticks(5, 5) == [2, 3, 4, 5, 6, 7, 8]  # one value: a range around it, not a zero-width axis


@pytest.mark.unit
def test_histogram_bins_have_round_widths_and_count_everything():
    lengths = [33, 60, 95, 120, 158, 159, *[160] * 10]
    bins = rs.histogram_bins(lengths)
    assert [(lo, hi) for lo, hi, _ in bins] == [(20 + 20 * i, 40 + 20 * i) for i in range(8)]
    assert [n for *_, n in bins] == [1, 0, 1, 1, 0, 1, 2, 10] and sum(n for *_, n in bins) == len(lengths)
    assert rs.histogram_bins([7, 7, 7]) == [(7, 7, 3)]  # one length: one honest bar
    # Sturges asks for log2(1000) + 1 = 11 bins of 999 / 11 = 91: the round width near it is 100
    assert [(lo, hi, n) for lo, hi, n in rs.histogram_bins(list(range(1000)))] == [
        (100 * i, 100 * (i + 1), 100) for i in range(10)
    ]


@pytest.mark.unit
def test_distill_labels_throughput_by_how_answers_were_generated():
    from distilflow.components.distill.config import DistillConfig
    from distilflow.components.distill.report import generation_kind, throughput
    from distilflow.components.distill.run import DistillResult

    base = {"output_uri": "o", "problems_uri": "p.jsonl"}
    local = DistillConfig.from_dict(base | {"teacher": {"backend": "transformers", "model": "m"}})
    remote = DistillConfig.from_dict(base | {"teacher": {"model": "m", "base_url": "http://h/v1"}})
    result = DistillResult(
        traces_uri="t", problems=2, traces=4, tokens=40, finish_reasons={}, teacher="m", prompt_template=None,
        requests=5, requests_per_s=0.5, traces_per_s=0.4, mean_latency_s=2.0, tokens_per_s=4.0,
    )  # fmt: skip
    in_process = dict(throughput(result, generation_kind(local)))
    endpoint = dict(throughput(result, generation_kind(remote)))
    assert in_process["traces generated per second"] == 0.4 and not any("request" in k for k in in_process)
    assert endpoint["mean request latency (s)"] == 2.0 and endpoint["requests sent (retries included)"] == 5
    assert endpoint["requests sent per second (retries included)"] == 0.5
    assert endpoint["traces received per second"] == 0.4 and "traces generated per second" not in endpoint


class Page(HTMLParser):
    """The visible text, and per chart: its id, ticks, axis labels and points or bars."""

    def __init__(self):
        super().__init__()
        self.text, self.charts, self.chart, self.skip, self.cls = [], [], None, 0, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("style", "title"):
            self.skip += 1
        if tag == "svg" and "chart" in (a.get("class") or ""):
            self.chart = {
                "id": a.get("id"),
                "xtick": 0,
                "ytick": 0,
                "xlabel": "",
                "ylabel": "",
                "point": 0,
                "bar": 0,
            }
            self.charts.append(self.chart)
        if self.chart is not None:
            self.cls = a.get("class")
            if self.cls in ("point", "bar"):
                self.chart[self.cls] += 1

    def handle_endtag(self, tag):
        if tag in ("style", "title"):
            self.skip -= 1
        if tag == "svg":
            self.chart = None
        self.cls = None

    def handle_data(self, data):
        if self.skip:
            return
        self.text.append(data)
        if self.chart is not None and self.cls in ("xtick", "ytick"):
            self.chart[self.cls] += 1
        elif self.chart is not None and self.cls in ("xlabel", "ylabel"):
            self.chart[self.cls] += data


@pytest.mark.parametrize("stage", list(REPORTS))
def test_every_stage_report_reads_well_in_chromium(stage, tmp_path):
    path = tmp_path / f"{stage}.html"
    path.write_text(REPORTS[stage](), encoding="utf-8")
    dom = render_dom(path)
    assert "font-variant-numeric:tabular-nums" in dom.replace(" ", "")  # the shared stylesheet
    page = Page()
    page.feed(dom)
    text = " ".join(page.text)
    assert not re.search(r"\{'|\['|': ", text), "a Python dict or list was printed"
    assert not re.search(r"\d\.\d{5,}", text), "an unrounded number was printed"
    charts = page.charts
    assert charts or stage == "evaluate"  # evaluate's scatter has its own axes (checked in its tests)
    for chart in charts:
        assert chart["xlabel"].strip() and chart["ylabel"].strip(), chart
        assert chart["ytick"] >= 3, chart
        assert chart["xtick"] >= 3 or chart["bar"] >= 3, chart
    if stage in ("sft", "dpo", "reward", "rl"):
        curves = [c for c in charts if c["id"].startswith("curve-")]
        assert curves and all(c["point"] == 30 for c in curves)  # every logged step, not 4 of 30
    if stage == "distill":
        (hist,) = [c for c in charts if c["id"] == "length-histogram"]
        assert hist["bar"] >= 5 and hist["xlabel"] == "completion tokens per trace"
        assert "traces generated per second" in text and "request latency" not in text
