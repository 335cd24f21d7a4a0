"""Pools (compute, storage, address) and VM networks (a bridge, an address pool, dnsmasq).
"""
