"""Distillation of the bidirectional Base model into the causal Online model: ODE-pair initialisation
(``ode``), then Distribution Matching Distillation on the student's own rollouts (``dmd``)."""
