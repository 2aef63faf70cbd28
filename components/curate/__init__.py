"""The `curate` stage."""
