"""Verification: base vs. unlearned answers side by side, with leak flags and reference probabilities."""
