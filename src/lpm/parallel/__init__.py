"""Inference across several processes / devices: sequence parallelism of the DiT (DeepSpeed-Ulysses all-to-all
over heads), a staged generator -> refiner -> decode pipeline across ranks, and the projection of measured
single-device stage times to N devices. See docs/scale.md."""

from lpm.parallel.group import SequenceGroup, init_sequence_group
from lpm.parallel.sequence_dit import SequenceParallelDiT

__all__ = ["SequenceGroup", "SequenceParallelDiT", "init_sequence_group"]
