"""Curate -> train -> evaluate: `loupe pipeline` (runner), the split, the replication's tiny trainer."""
