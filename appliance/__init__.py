"""The appliance: catalog, services that run VMs and backups, the web API and the CLI."""
