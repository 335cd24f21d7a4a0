"""Restoring inside the appliance: whole VMs (as new or over the old one), instant restore,
boot tests.
"""
