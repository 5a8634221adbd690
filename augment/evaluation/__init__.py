"""Evaluation: plots, fidelity and utility metrics, reports."""
