"""End-to-end experiments built from the other packages: the demo and ablation tables."""
