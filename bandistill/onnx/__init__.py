"""The ONNX side of bandistill, one module per job (read them in this order):

* :mod:`bandistill.onnx.meta`      -- the file contract: input/output names, ``bandistill.*``
  metadata, the opset, and "is this an ONNX file I may read / replace";
* :mod:`bandistill.onnx.export`    -- a checkpoint to a self-describing ONNX file, checked
  against PyTorch in onnxruntime;
* :mod:`bandistill.onnx.providers` -- which onnxruntime execution provider (CUDA or CPU),
  and why CUDA cannot load when it cannot;
* :mod:`bandistill.onnx.runtime`   -- sessions, and running one over images (plain or IO binding);
* :mod:`bandistill.onnx.members`   -- reading, ordering and checking the members of an ensemble;
* :mod:`bandistill.onnx.ensemble`  -- evaluating members and their ensembles (the BANE) on a split;
* :mod:`bandistill.onnx.merge`     -- the whole ensemble as one ONNX graph, checked before it is kept.

This package is ``bandistill.onnx``; the ``onnx`` library is still ``import onnx`` inside
it (absolute imports only), so the two never shadow each other.
"""

if __name__ != "bandistill.onnx":  # this folder was found as a top-level 'onnx' module
    raise ImportError(
        f"{__file__} was imported as '{__name__}' instead of the onnx library, because the bandistill/ folder "
        "itself is on sys.path (Python was started inside it); run from elsewhere, e.g. the repository root"
    )
