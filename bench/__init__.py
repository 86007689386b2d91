"""pgops benchmark: `make bench` (bench/run.py). Not a test; see bench/README.md."""
