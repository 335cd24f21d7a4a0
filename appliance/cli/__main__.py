"""`python -m appliance.cli`: the same as the `cairn` command."""
from .main import app

app()
