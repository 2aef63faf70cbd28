"""Teachers and judges: the config, the contract and its backends, the endpoint client and the answer cache."""
