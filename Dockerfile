# One image for every role: migrate, worker, scheduler (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DIGITS_HOME=/var/lib/digits

RUN useradd --create-home --uid 10001 digits \
    && mkdir -p /var/lib/digits /data/inbox /data/exports /data/models \
    && chown -R digits:digits /var/lib/digits /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY digits ./digits
COPY worker ./worker
COPY scheduler ./scheduler
COPY model_store ./model_store
COPY migrations ./migrations
RUN pip install .

USER digits
ENTRYPOINT ["digits"]
CMD ["--help"]
