"""Noise layer: the assignment (exact, quantized, greedy, KNN, class-blocked), its native solver, the per-step noise
source of training (with one global assignment across processes) and background prefetch."""
