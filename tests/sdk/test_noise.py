"""Third-party warnings that do not matter stay off the terminal: DeepSpeed's "Setting accelerator to
CPU" on a machine without a GPU, which every CLI call and stage printed."""

from __future__ import annotations

import glob
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    bool(glob.glob("/dev/nvidia[0-9]*")), reason="a GPU machine keeps the warning"
)


def test_deepspeed_accelerator_warning_is_dropped_once_distilflow_is_imported():
    """One process: with distilflow imported the warning is dropped; with its filter taken off, the same
    call prints it (so the test sees a real warning, not a DeepSpeed that stopped warning)."""
    pytest.importorskip("deepspeed")
    code = (
        "import logging, sys\nimport distilflow\nimport deepspeed.accelerator.real_accelerator as r\n"
        "r.get_accelerator()\nprint('--- filter off', flush=True)\n"
        "logging.getLogger('DeepSpeed').filters.clear()\nr.ds_accelerator = None\nr.get_accelerator()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with_filter, without = (done.stdout + done.stderr).split("--- filter off")
    assert "Setting accelerator to CPU" not in with_filter
    assert "Setting accelerator to CPU" in without


@pytest.mark.unit
def test_the_filter_drops_only_the_listed_messages():
    import logging

    from distilflow.noise import DropMessages

    drop = DropMessages(("Setting accelerator to CPU",))
    record = logging.LogRecord(
        "DeepSpeed", logging.WARNING, __file__, 1, "Setting accelerator to CPU. If", (), None
    )
    other = logging.LogRecord(
        "DeepSpeed", logging.WARNING, __file__, 1, "ZeRO stage 3 out of memory", (), None
    )
    assert (drop.filter(record), drop.filter(other)) == (False, True)
