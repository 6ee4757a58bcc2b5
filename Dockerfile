# syntax=docker/dockerfile:1
# leaderd sidecar image: build a wheel, install it into a clean slim image, run as
# a non-root numeric user. Build with `make image`.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY leaderd ./leaderd
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels '.[daemon,k8s]'

FROM python:3.11-slim AS runtime
# tini forwards SIGTERM to leaderd and reaps exec-mode children's orphans.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-compile /wheels/*.whl \
    && rm -rf /wheels /root/.cache
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
EXPOSE 4040
ENTRYPOINT ["/usr/bin/tini", "--", "leaderd"]
CMD ["run"]
