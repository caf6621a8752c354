from fama_cli.main import app

app()
