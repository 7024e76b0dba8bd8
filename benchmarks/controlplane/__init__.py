"""The control-plane load harness (benchmarks/control_plane.py) and its synthetic worker."""
