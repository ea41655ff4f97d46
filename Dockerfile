# The image every ERDU service in compose.yaml runs (workers, beat, API, Flower, metrics, migrate).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md beat_schedule.py ./
COPY erdu_tasks ./erdu_tasks
COPY workers ./workers
RUN pip install . \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/erdu erdu \
    && mkdir -p /data && chown erdu /data

# Celery refuses nothing as root, but a remediation worker has no business running as root.
# By number, so Kubernetes can check runAsNonRoot (deploy/kubernetes: runAsUser 10001).
USER 10001
WORKDIR /data
CMD ["erdu", "--help"]
