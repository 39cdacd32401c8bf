"""Flow matching (path, timestep shift, loss), ODE samplers and classifier-free guidance."""

from lpm.diffusion.cfg import CONDITIONS, GuidanceSpec, combine, guided
from lpm.diffusion.flow import Batch, FlowConfig, FlowMatching, LossOutput, PathSample, shift_time
from lpm.diffusion.samplers import SAMPLERS, flow_timesteps, sample_euler, sample_heun, sample_renoise

__all__ = [
    "CONDITIONS", "SAMPLERS", "Batch", "FlowConfig", "FlowMatching", "GuidanceSpec", "LossOutput", "PathSample",
    "combine", "flow_timesteps", "guided", "sample_euler", "sample_heun", "sample_renoise", "shift_time",
]
