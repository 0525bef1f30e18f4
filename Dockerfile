# syntax=docker/dockerfile:1
#
# Parley's server image: `parley-homeserver` and the reference push gateway
# `parley-push-gateway`, built in a Rust stage and copied into a small Debian runtime
# that runs as an unprivileged user. docker-compose.yml builds it; `cargo xtask deploy`
# checks that what it builds and copies exists in the workspace.
#
#   docker build -t parley .
#   docker run --rm -p 8448:8448 parley            # one homeserver, SQLite in /var/lib/parley

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- build ------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# The whole workspace (cargo needs every member's manifest); .dockerignore keeps
# target/, .git/ and local databases out of the context.
COPY . .
# SQLx queries are checked at run time or from committed data: no database at build time.
ENV SQLX_OFFLINE=true \
    CARGO_TARGET_DIR=/src/target
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin parley-homeserver --bin parley-push-gateway \
    && mkdir -p /out \
    && cp /src/target/release/parley-homeserver /src/target/release/parley-push-gateway /out/

# ---- runtime ----------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# CA roots for HTTPS federation and push; nothing else: the binaries link only libc.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 parley \
    && useradd --system --uid 10001 --gid parley --home-dir /var/lib/parley --create-home parley
COPY --from=build /out/parley-homeserver /out/parley-push-gateway /usr/local/bin/
# Data (SQLite file if no database URL, the federation key, media) lives in the volume.
ENV PARLEY_DATA_DIR=/var/lib/parley \
    PARLEY_LISTEN=0.0.0.0:8448 \
    PARLEY_LOG_FORMAT=json
VOLUME ["/var/lib/parley"]
WORKDIR /var/lib/parley
EXPOSE 8448
USER 10001:10001
CMD ["parley-homeserver"]
