"""A synthetic reasoning task family, a simulated teacher and judge, and the learning benchmark's student.

``tasks`` generates problems (chains of operations modulo 10) whose number of steps plays the role of
cognitive difficulty (CD) and renders chains of thought at four verbosity levels (reasoning verbosity,
RV). ``teacher`` and ``judge`` simulate the large models of a distillation run: a teacher whose chains
have a controlled verbosity and a systematic mistake, and a judge that answers curate's RV/CD/logic
rubrics with noisy digit log-probabilities; ``server`` serves both on 127.0.0.1 through the
OpenAI-compatible chat API, so the real ``distill`` and ``curate`` stages talk to them as to a vLLM
server. ``student`` builds the tiny student; ``bench/bench_learning.py`` (with ``bench/learning.py``) runs
the benchmark's arms through the real ``distill -> curate -> sft -> evaluate`` stages.

Importing this package (and ``tasks``, ``teacher``, ``judge``, ``server``) needs no torch.
"""
