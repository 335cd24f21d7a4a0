"""Jobs: an ordered list of steps with their undo, run per resource, recovered after a crash;
and the events they (and everything else) emit.
"""
