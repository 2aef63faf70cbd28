"""The `sft` stage."""
