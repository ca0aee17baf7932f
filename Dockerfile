# bandistill on a GPU: `docker run --gpus all -v "$PWD:/work" bandistill train ...`
# torch's CUDA wheels carry the CUDA and cuDNN libraries; onnxruntime-gpu loads them from there,
# so a slim Python base is enough (the host needs the NVIDIA driver and container toolkit).
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg

WORKDIR /opt/bandistill

# Dependencies first, so that a code change does not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir -p bandistill/models bandistill/onnx cli cache \
    && touch bandistill/__init__.py bandistill/models/__init__.py bandistill/onnx/__init__.py cli/__init__.py cache/__init__.py \
    && pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 . \
    && pip uninstall -y bandistill

COPY bandistill ./bandistill
COPY cli ./cli
COPY cache ./cache
RUN pip install --no-cache-dir --no-deps . \
    && useradd --create-home --uid 1000 bandistill \
    && mkdir -p /work && chown bandistill /work

USER 1000
WORKDIR /work
ENTRYPOINT ["bandistill"]
CMD ["--help"]
