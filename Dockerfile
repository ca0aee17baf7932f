# bandistill in a container; the entrypoint is `bandistill`. Build, then run with the work folder mounted:
#   docker build -t bandistill .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/work" bandistill ban ... --out runs/demo
# Add `--gpus all` for a GPU: torch's CUDA wheels carry the CUDA and cuDNN libraries and onnxruntime-gpu
# loads them from there, so a slim Python base is enough (the host needs the NVIDIA driver and the
# NVIDIA container toolkit). Without a GPU the same image runs on the CPU.
#
# Needs BuildKit (the default builder since Docker 23; DOCKER_BUILDKIT=1 on Docker 20.10) for the mounts below.
# - Behind a TLS-inspecting proxy, hand pip the proxy's CA bundle as a build secret. It is mounted for the
#   pip commands only and lands in no layer:
#     docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt -t bandistill .
# - BASE_IMAGE: any Debian-like image with python3 (>= 3.10) and its venv module, e.g. one made locally with
#   debootstrap where Docker Hub cannot be reached (scripts/docker_smoke.sh does that).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# A virtual environment, so that the same steps work on the official image and on a Debian base whose
# system Python refuses pip (PEP 668).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg
RUN python3 -m venv /opt/venv

WORKDIR /opt/bandistill

# Dependencies in their own layer, so that a code change does not reinstall torch. The package folders and
# README.md are stubbed (tests/test_packaging.py keeps the stubs in step with pyproject.toml); pip installs
# the stub with its dependencies, then the stub and its build/ folder go (setuptools would otherwise copy the
# stale stubs from build/ into the real install below). pip's cache is a BuildKit cache mount, not in the image.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && mkdir -p bandistill/data bandistill/models bandistill/onnx bandistill/run cli cache \
    && touch README.md bandistill/__init__.py bandistill/data/__init__.py bandistill/models/__init__.py bandistill/onnx/__init__.py bandistill/run/__init__.py cli/__init__.py cache/__init__.py \
    && pip install torch==2.14.1 torchvision==0.29.1 . \
    && pip uninstall -y bandistill \
    && rm -rf README.md bandistill cli cache build ./*.egg-info

COPY README.md ./
COPY bandistill ./bandistill
COPY cli ./cli
COPY cache ./cache
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-deps . \
    && rm -rf build ./*.egg-info

# A non-root user. Any other uid works too (`--user "$(id -u):$(id -g)"`, so that files written to a mounted
# folder belong to the caller): HOME and /work are writable by everyone, like /tmp, so matplotlib's and torch's
# caches find a home even for a uid the image has never heard of.
RUN useradd --create-home --home-dir /home/bandistill --uid 1000 bandistill \
    && chmod 1777 /home/bandistill \
    && mkdir -p /work && chmod 1777 /work
ENV HOME=/home/bandistill
USER 1000
WORKDIR /work
ENTRYPOINT ["bandistill"]
CMD ["--help"]
