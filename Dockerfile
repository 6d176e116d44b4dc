# One image for every chargewatch service of docker-compose.yml (setup, ingest, forwarder,
# analytics, simulator, locust); the command picks the role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CHARGEWATCH_DATA_DIR=/var/lib/chargewatch

# A fixed non-root uid, owner of the data directory. A new named volume mounted there copies
# this ownership, so the services can write their SQLite files, tokens and metrics.
RUN groupadd --system --gid 10001 chargewatch \
    && useradd --system --uid 10001 --gid chargewatch --home-dir /var/lib/chargewatch --shell /usr/sbin/nologin chargewatch \
    && install -d -o chargewatch -g chargewatch -m 0750 /var/lib/chargewatch

WORKDIR /app
COPY . /app
# Not editable: the image runs what the wheel ships (the Flux scripts are package data). The
# influx extra is the InfluxDB path; loadtest adds locust for the locust service.
ARG EXTRAS=influx,loadtest
RUN pip install --no-compile ".[${EXTRAS}]" \
    && chargewatch --version

USER chargewatch
EXPOSE 8080 8081
CMD ["chargewatch", "--help"]
