"""LPM-Bench: instruments, systems, suites and reports (``lpm bench``)."""

# The bench's fixed case set (the data set the shipped models and instruments were made with): built on first use
# by ``lpm.eval.bench.ensure_default_data`` with this recipe and stamped with it (``version`` changes when the
# case set must be rebuilt, e.g. the world's generator changed what these seeds make).
DEFAULT_DATA = "data/world128"
DEFAULT_DATA_RECIPE = {"version": 2, "clips": 320, "seconds": 4.0, "res": 128, "seed": 0}
# The ``listen`` suite's case set: 80 listening clips of held-out identities in the seen styles (~50 reactions, 3x
# the quick suite's), so listen F1 is judged on more than a handful of events; built and stamped the same way.
LISTEN_DATA = "data/listen80"
LISTEN_DATA_RECIPE = {"version": 2, "clips": 80, "seconds": 4.0, "res": 128, "seed": 404, "split": "val",
                      "mode": "listen", "styles": ["photo", "anime", "toon3d", "creature"]}
# The shipped instruments (``lpm bench`` defaults).
DEFAULT_PROBE = "checkpoints/probe.safetensors"
# Eyes, brows, mouth and emotion, read in place of the probe's (``lpm.eval.face``).
DEFAULT_FACE = "checkpoints/face.safetensors"
# Head pitch, roll and yaw, read in place of the probe's (``lpm.eval.head``).
DEFAULT_HEAD = "checkpoints/head.safetensors"
DEFAULT_IDENTITY = "checkpoints/identity.safetensors"
DEFAULT_STATES = "checkpoints/states.safetensors"
