"""LPM-Bench: instruments, systems, suites and reports (``lpm bench``)."""

# The bench's fixed case set (the data set the shipped models and instruments were made with): built on first use
# by ``lpm.eval.bench.build_default_data`` with this recipe.
DEFAULT_DATA = "data/world128"
DEFAULT_DATA_RECIPE = {"clips": 320, "seconds": 4.0, "res": 128, "seed": 0}
