"""Backup and snapshot policies, and the scheduler that turns due policies into jobs.
"""
