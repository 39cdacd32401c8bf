"""LPM-Bench: instruments, systems, suites and reports (``lpm bench``)."""

# The bench's fixed case set (the data set the shipped models and instruments were made with): built on first use
# by ``lpm.eval.bench.ensure_default_data`` with this recipe and stamped with it (``version`` changes when the
# case set must be rebuilt, e.g. the world's generator changed what these seeds make).
DEFAULT_DATA = "data/world128"
DEFAULT_DATA_RECIPE = {"version": 1, "clips": 320, "seconds": 4.0, "res": 128, "seed": 0}
# The shipped instruments (``lpm bench`` defaults).
DEFAULT_PROBE = "checkpoints/probe.safetensors"
# Eyes, brows, mouth and emotion, read in place of the probe's (``lpm.eval.face``).
DEFAULT_FACE = "checkpoints/face.safetensors"
DEFAULT_IDENTITY = "checkpoints/identity.safetensors"
DEFAULT_STATES = "checkpoints/states.safetensors"
