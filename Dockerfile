# Images for both binaries: `docker build --target ingester .` or
# `--target agent`. The build stage compiles the workspace once (release
# profile: LTO, stripped); the runtime stages are Debian slim, non-root.
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p spillway-agent -p spillway-ingester \
    && cp target/release/spillway-agent target/release/spillway-ingester /usr/local/bin/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/spillway --create-home spillway

FROM runtime AS ingester
COPY --from=build /usr/local/bin/spillway-ingester /usr/local/bin/
COPY config/ingester.example.toml /etc/spillway/ingester.toml
USER spillway
ENV SPILLWAY_INGESTER_CONFIG=/etc/spillway/ingester.toml
EXPOSE 9466
ENTRYPOINT ["spillway-ingester"]
CMD ["run"]

FROM runtime AS agent
COPY --from=build /usr/local/bin/spillway-agent /usr/local/bin/
# The spool volume mounts here; it must belong to the agent's user.
RUN install -d -o spillway -m 0700 /var/lib/spillway/spool
USER spillway
WORKDIR /var/lib/spillway
ENTRYPOINT ["spillway-agent"]
CMD ["run"]
