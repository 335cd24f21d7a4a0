"""The web API under /api/v1: one module per area of routes, assembled by `app.create_app`.
"""
