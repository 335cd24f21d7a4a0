"""Backing up VMs into the store: the appliance's own, and those of libvirt and SSH hosts;
the checkpoint ledger and retention.
"""
