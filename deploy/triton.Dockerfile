# syntax=docker/dockerfile:1
# Triton Inference Server (GPU) with what the model repository's Python-backend steps need:
#
#   docker build -f deploy/triton.Dockerfile -t detect-triton:24.08 .
#
# preprocess and postprocess (model_repository/), and object_detector, which loads their code,
# import numpy and Pillow inside Triton's Python backend; the stock image has numpy but not
# Pillow. Their TritonError codes need Triton 23.06 or newer. The model repository itself is
# not in this image: it comes from the detect-models image (deploy/Dockerfile --target models)
# through a volume, so models and server are released independently.
ARG TRITON_TAG=24.08
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}-py3

# PIP_BREAK_SYSTEM_PACKAGES: newer Triton images are on a distribution whose system Python
# refuses pip installs without it; older pips ignore the variable.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1
RUN python3 -m pip install "Pillow==10.4.0"

# The image's unprivileged user (uid 1000); Kubernetes and Compose run it read-only. The
# image's own entrypoint stays: deployments pass `tritonserver <flags>` as its arguments.
USER triton-server
EXPOSE 8001 8002
CMD ["tritonserver", "--model-repository=/models"]
