"""Layer 4: the evaluation suite and the per-sample robustness flags of several models."""
