# The sidecar image for the Kubernetes backend: the static oz, an entrypoint and a CA bundle under
# /agent (the layout of oz_core::sidecar). The Job's init container copies /agent into an emptyDir, so
# the image also carries a shell and cp (busybox); with use_image_volumes it is mounted as is.
#
#   scripts/build-sidecar-oz.sh
#   docker build -f deploy/docker/sidecar.Dockerfile -t oz-sidecar:0.1.0 .
FROM debian:bookworm-slim AS certs
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates

FROM busybox:1.36
COPY target/sidecar/oz /agent/bin/oz
COPY deploy/docker/entrypoint.sh /agent/entrypoint.sh
COPY --from=certs /etc/ssl/certs/ca-certificates.crt /agent/certs/ca-certificates.crt
