"""``python -m pushsvc.bench``: the same as ``pushsvc bench``."""

from pushsvc.bench.cli import bench

bench(prog_name="pushsvc bench")
