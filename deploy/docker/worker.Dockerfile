# The worker image: oz-agent-worker on a minimal base, running as a non-root user.
#
#   docker build -f deploy/docker/worker.Dockerfile -t oz-agent-worker:0.1.0 .
#
# (Not built in this repository's CI: its machines cannot pull base images.)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p oz-worker --bin oz-agent-worker

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 oz && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin oz
COPY --from=build /src/target/release/oz-agent-worker /usr/local/bin/oz-agent-worker
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/oz-agent-worker"]
