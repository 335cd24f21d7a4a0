"""Hosts besides the appliance's own (libvirt, SSH): registered in the catalog, reached on each call.
"""
