"""Benchmarks and measurements beside the package, installed with it so that a script runs as a file
(`python bench/scale.py`) or as a module (`python -m bench.scale`) alike."""
