"""Jobs: every long operation, as an ordered list of steps with their undo, of a kind with typed
parameters; run one at a time per resource across processes (claimed in the catalog), taken
over after a crash; and the events they (and everything else) emit.
"""
