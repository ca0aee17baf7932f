"""The HDF5 soft-target store (imported as ``bandistill.cache``).

:mod:`~bandistill.cache.schema` names the file's arrays and attributes,
:mod:`~bandistill.cache.writer` fills a ``.partial`` file view by view and renames it when
complete, :mod:`~bandistill.cache.reader` opens a complete file and refuses one that does not
fit the data a student trains on.
"""

from bandistill.cache.schema import FORMAT, FORMAT_VERSION, partial_path
from bandistill.cache.reader import CacheInfo, SoftTargetCache, open_cache, read_info

__all__ = ["FORMAT", "FORMAT_VERSION", "CacheInfo", "SoftTargetCache", "open_cache", "partial_path", "read_info"]
