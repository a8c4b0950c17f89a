"""The six stages of one run, one package each, none importing another:
extract -> fit -> intervene -> generate -> judge -> regress (called by :func:`steerexp.pipeline.run`)."""
