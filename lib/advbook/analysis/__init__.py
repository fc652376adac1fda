"""Layer 5: sample-level measures, distillation, the toy problem, statistics and claims."""
