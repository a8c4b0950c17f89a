"""Storage: on-disk caches, atomic writes, run artifacts and their columns, the typed stage results, output-dir guards."""
