"""The HDF5 soft-target store (imported as ``bandistill.cache``)."""
