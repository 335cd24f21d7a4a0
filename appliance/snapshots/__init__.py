"""Snapshots of a VM's disks: the tree lives in the catalog, chain/ changes the image files.
"""
