"""Sweeps: a grid of protocol runs (:mod:`.runner`) and where they execute (:mod:`.executors`: local, Ray, Slurm).

Kept empty so that importing :mod:`rlptune.sweeps.executors` (the CLI's executor flags) does not import torch.
"""
