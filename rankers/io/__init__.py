"""Files on disk: the cache home (:func:`rankers_home`) and the one atomic-write path
(:func:`atomic_write` for files, :func:`materialize` for directory artefacts). A leaf: it imports nothing
else from rankers, so every layer may use it."""
from rankers.io.atomic import atomic_write, materialize
from rankers.io.home import rankers_home

__all__ = ["atomic_write", "materialize", "rankers_home"]
