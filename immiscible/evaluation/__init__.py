"""Evaluation: feature extractors (Inception, proxy), FD/KID, and the paired statistics and steps-to-target that
compare methods. Imports no experiment and no training code."""
