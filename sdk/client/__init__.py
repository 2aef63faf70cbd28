"""The client side of distilflow: what a notebook or the CLI calls.

- ``pipelines``: the registry, a pipeline's config, compiling it;
- ``arguments``: ``--set`` items and config files as a pipeline's parameters;
- ``local``: a pipeline under ``kfp.local`` (workarounds in ``_kfp_local``), one stage in this process,
  validating a config;
- ``auth``: the KFP API's bearer token; ``remote``: ``Client`` for a KFP backend (upload, submit, follow);
- ``cli``: the ``distilflow`` command line on top of them.

This package is the only part of ``distilflow`` (``sdk/``) that imports the stages and the pipelines.
"""
