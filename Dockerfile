# The model repack job, run as an Amazon SageMaker Processing job or with
# `docker run`. The app uses only the Python standard library, so the image is
# its base plus a few hundred KB of Python files.
#
# Machines that cannot pull the default base build a local Debian 13 one with
# .ci/build-base-image.sh and pass it as --build-arg BASE_IMAGE=<tag>.
ARG BASE_IMAGE=python:3.13.16-slim-trixie
FROM ${BASE_IMAGE}

ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="sagemaker-model-repack" \
      org.opencontainers.image.description="Add hyperparameters.json to the root of a model.tar.gz" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"

# Unbuffered output puts each log line in CloudWatch as it happens. No .pyc
# files are written at run time, so read-only mounts under /opt/ml/code stay
# clean.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# SageMaker's convention puts the job's code in /opt/ml/code. A second copy in
# /opt/repack is what runs: a user who mounts a folder over all of
# /opt/ml/code hides the first copy, and the job still finds its inputs there.
COPY entrypoint.py /opt/ml/code/entrypoint.py
COPY app/ /opt/ml/code/app/
COPY entrypoint.py /opt/repack/entrypoint.py
COPY app/ /opt/repack/app/

# tini runs as PID 1 and passes SIGTERM and SIGINT on to the job. The kernel
# drops signals that PID 1 has no handler for, so without it a stop that came
# while Python was still starting would be lost. The local base includes tini;
# on another base it is installed from Debian's packages.
RUN if ! command -v tini >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends tini \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# The job runs as root on purpose: SageMaker mounts /opt/ml/processing/output
# owned by root, and another user could not write the output there.
ENTRYPOINT ["tini", "--", "python3", "/opt/repack/entrypoint.py"]
