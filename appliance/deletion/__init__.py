"""Deletion protection: per kind of resource, deleting is immediate, delayed or never; the recycle bin.
"""
