"""The `cairn` command line: one module per command group, assembled by `main.app`.
"""
