"""Benchmarks of pyg_lecc: operators, image-graph builders, full-image colorization and a
short training task. Run them all with ``python -m benchmarks.run`` (see README.md)."""
