"""`fama evaluate` commands (registered on the app in fama_cli.main)."""
