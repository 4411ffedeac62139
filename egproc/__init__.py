"""egproc: e/γ machine-learning corrections for coffea.

Two lines add a correction to a coffea processor::

    bundle = egproc.load("corrections/toy-fudge")      # once, e.g. in the processor's __init__
    photons = bundle.apply(events.Photon, events)       # per chunk: eager, virtual or dask-awkward
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("egproc")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

from egproc.bundle import Bundle, load

__all__ = ["Bundle", "load", "__version__"]
