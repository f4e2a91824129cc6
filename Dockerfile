# Images for both binaries: `docker build --target ingester .` or
# `--target agent`. Dependencies are compiled in their own layer
# (cargo-chef), so an edit to Spillway's sources rebuilds only Spillway's
# crates; the release profile uses LTO and strips (the agent keeps its
# symbol table, which is never loaded). The runtime stages are
# Debian slim, non-root.
FROM rust:1.95-bookworm AS chef
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake pkg-config zlib1g-dev libssl-dev libcurl4-openssl-dev \
    && rm -rf /var/lib/apt/lists/* \
    && cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
# The C dependencies' CFLAGS (a section per function: .cargo/config.toml).
COPY .cargo .cargo
# This layer changes only when Cargo.toml or Cargo.lock do.
RUN cargo chef cook --release --locked --recipe-path recipe.json \
    -p spillway-agent -p spillway-ingester
# --version shows this revision; without it, `git rev-parse` of the context.
ARG SPILLWAY_GIT_REVISION=
COPY . .
# Two builds: built alone, the agent leaves out libcurl (only the ingester's
# OIDC needs it; Cargo.toml says why).
RUN SPILLWAY_GIT_REVISION="$SPILLWAY_GIT_REVISION" \
    cargo build --release --locked -p spillway-agent \
    && SPILLWAY_GIT_REVISION="$SPILLWAY_GIT_REVISION" cargo build --release --locked -p spillway-ingester \
    && cp target/release/spillway-agent target/release/spillway-ingester /usr/local/bin/ \
    && spillway-agent --version && spillway-ingester --version

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 libcurl4 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/spillway --create-home spillway

FROM runtime AS ingester
COPY --from=build /usr/local/bin/spillway-ingester /usr/local/bin/
COPY config/ingester.example.toml /etc/spillway/ingester.toml
USER spillway
ENV SPILLWAY_INGESTER_CONFIG=/etc/spillway/ingester.toml
EXPOSE 9466
# No transparent huge pages for the heap (packaging/spillway-ingester.service).
ENV MIMALLOC_ALLOW_THP=0
ENV SPILLWAY_INGESTER_HTTP_LISTEN=0.0.0.0:9466
# /ready: joined the consumer group and every shard has a replica that
# answers. bash's /dev/tcp: the image has no curl or wget.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=6 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9466 && printf 'GET /ready HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
ENTRYPOINT ["spillway-ingester"]
CMD ["run"]

# The agent runs as the unprivileged spillway user with no capabilities:
# everything it reads is world-readable (/proc, /sys, statvfs of mounts).
# To report its host rather than its container it needs the host's PID and
# network namespaces and the host's root read-only at /host (compose:
# `pid: host`, `network_mode: host`; Kubernetes: deploy/kubernetes/agent.yaml),
# never privileged mode.
FROM runtime AS agent
COPY --from=build /usr/local/bin/spillway-agent /usr/local/bin/
# The spool volume mounts here; it must belong to the agent's user.
RUN install -d -o spillway -m 0700 /var/lib/spillway/spool
# One glibc malloc arena, as in packaging/spillway-agent.service.
ENV MALLOC_ARENA_MAX=1
ENV SPILLWAY_AGENT_SPOOL_DIR=/var/lib/spillway/spool
ENV SPILLWAY_AGENT_HTTP_LISTEN=127.0.0.1:9465
# /health answers while the agent collects (an unreachable broker is
# degraded, not failed: the spool keeps the data).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9465 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
USER spillway
WORKDIR /var/lib/spillway
ENTRYPOINT ["spillway-agent"]
CMD ["run"]
