"""Ray Tune ablation sweeps over the one training function."""
