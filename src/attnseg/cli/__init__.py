"""Command-line interface: ``attnseg <command> ...``."""
