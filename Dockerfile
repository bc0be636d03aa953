# quiver's serving image: `quiver serve` (and `quiver sync` / `quiver load` / `quiver publish`
# for the sidecar, init container and load Job in deploy/k8s/).
#
# Build:  docker build -t quiver:0.1.0 .
# No Docker engine on the dev machines: deploy/check-image-steps.sh runs these same steps in
# clean virtualenvs, and deploy/check.sh lints this file with hadolint.

# One base for both stages: the virtualenv built in the first is copied into the second, so
# the interpreter path inside it must be the same.
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel is built from (see .dockerignore); quiver/v1 is generated from proto/ by
# setup.py during the build, with grpcio-tools from [build-system] requires.
COPY pyproject.toml setup.py README.md ./
COPY proto/ proto/
COPY quiver/ quiver/
COPY base/ base/
COPY snapshot/ snapshot/
COPY loader/ loader/
COPY service/ service/
COPY distribution/ distribution/
COPY quality/ quality/

# Every dependency as a wheel first, then an offline install from that wheelhouse only: a
# dependency without a wheel for this platform fails here, not at run time.
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
 && python -m venv /opt/quiver \
 && /opt/quiver/bin/pip install --no-cache-dir --no-index --find-links /wheels /wheels/quiver_features-*.whl \
 && /opt/quiver/bin/quiver --help > /dev/null


FROM python:3.11.14-slim-bookworm

# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it and volumes can be chowned.
RUN groupadd --system --gid 10001 quiver \
 && useradd --system --uid 10001 --gid quiver --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin quiver \
 && install -d -o quiver -g quiver -m 0750 /data

COPY --from=builder /opt/quiver /opt/quiver

# The server listens on all interfaces inside the container (the pod network); TMPDIR holds
# RocksDB logs and Prometheus multiprocess files, an emptyDir in Kubernetes where the root
# filesystem is read-only.
ENV PATH=/opt/quiver/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    QUIVER_ROOT=/data \
    QUIVER_LISTEN=0.0.0.0:50051 \
    QUIVER_METRICS_HOST=0.0.0.0 \
    QUIVER_METRICS_PORT=9095

USER 10001:10001
WORKDIR /data
# gRPC (grpc.health.v1 with service "" for probes), then Prometheus metrics.
EXPOSE 50051 9095

ENTRYPOINT ["quiver"]
CMD ["serve"]
