"""The benchmark suite: sharedbox against what people use instead (run.py)."""
