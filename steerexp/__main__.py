"""``python -m steerexp [key=value ...]`` runs one experiment; ``-m`` sweeps (see README)."""

from steerexp.cli import cli

if __name__ == "__main__":
    cli()
