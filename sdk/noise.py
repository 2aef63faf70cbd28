"""Third-party log messages that say nothing to a distilflow user, dropped where they are logged.

DeepSpeed warns "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to
detect it." whenever it is imported (transformers and TRL import it) on a machine without a GPU, so
every CLI call and every stage on a CPU printed it. It is dropped only where no NVIDIA device exists:
on a machine with a GPU that torch does not see, the warning matters and stays.
"""

from __future__ import annotations

import glob
import logging

NOISE: dict[str, tuple[str, ...]] = {"DeepSpeed": ("Setting accelerator to CPU",)}
"""Logger name -> fragments of the messages dropped from it."""


class DropMessages(logging.Filter):
    """Drop records whose message contains one of ``fragments``."""

    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def install() -> None:
    """Add the filters (once) to the loggers in ``NOISE``; cheap: no third-party import."""
    if glob.glob("/dev/nvidia[0-9]*"):
        return
    for name, fragments in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(fragments))
