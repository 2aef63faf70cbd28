"""The `dpo` stage."""
