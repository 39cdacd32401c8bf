"""Objective-agnostic training: trainer, checkpoints, EMA, distributed set-up."""
