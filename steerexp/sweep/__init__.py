"""What happens across runs: the ranking callback, the sweep report, experiment tracking."""
