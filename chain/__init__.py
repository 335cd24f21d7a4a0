"""Each disk's qcow2 chain: what layers it has and the dirty bitmaps they carry."""
from .inspect import Layer, backing_chain

__all__ = ["Layer", "backing_chain"]
