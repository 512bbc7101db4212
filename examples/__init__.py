"""Runnable examples of gflow on your own models (see README.md, "Your own model").

Run them from the repository root, so that the config files' references
("examples.residual_cnn:model") import."""
