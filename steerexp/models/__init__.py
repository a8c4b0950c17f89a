"""Models: loading, checkpoints, hub-shaped random models, module templates, tokenising, steering hooks, threads."""
