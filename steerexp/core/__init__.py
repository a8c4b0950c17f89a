"""Plumbing every stage may use and which uses no stage: models, tokens, data, cache, artifacts."""
