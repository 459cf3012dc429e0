"""Old import path, kept for one release: this module is :mod:`rankers.commands.mine` (the same module object,
so attributes set here are set there)."""
import sys

from rankers.commands import mine as _module

sys.modules[__name__] = _module
