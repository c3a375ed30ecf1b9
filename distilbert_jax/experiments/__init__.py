"""Experiments built on top of the jobs: the paper in miniature, and sweeps over a grid."""
