"""Speed benchmarks of the hot paths (run with ``make bench``; results are in the README)."""
