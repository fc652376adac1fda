"""Layer 3: training objectives, the cached and resumable training loop, the VIR defenses."""
