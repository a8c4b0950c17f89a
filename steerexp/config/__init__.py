"""Configuration: the schemas (every key's type and default), composing and typing group configs, registries, errors."""
