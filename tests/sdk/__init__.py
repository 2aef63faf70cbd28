"""Tests of the core SDK (`sdk/`, imported as `distilflow`), mirroring its packages."""
