"""Prometheus metrics (GET /metrics): what the catalog and the store say at scrape time, and the
few things only the serving process can know. docs/monitoring.md lists them."""
