"""coffea processors of egproc, installed as ``egproc.processors`` so dask workers can import them."""

from egproc.processors.tag_and_probe import TagAndProbeProcessor

__all__ = ["TagAndProbeProcessor"]
