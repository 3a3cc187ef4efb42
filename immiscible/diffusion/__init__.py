"""Diffusion math: objectives (each takes the already-assigned noise), noise schedules and samplers."""
