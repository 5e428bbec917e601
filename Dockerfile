# syntax=docker/dockerfile:1
# Builder: the pinned toolchain plus protoc (etcd-client compiles etcd's protobufs).
FROM rust:1.95.0-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        protobuf-compiler=3.21.12-3+deb12u1 \
        libprotobuf-dev=3.21.12-3+deb12u1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares the gate-reaction bench target: the manifest does not parse without its file.
COPY benches ./benches
COPY hack/build-release.sh ./hack/build-release.sh
# The same command CI runs: a static binary, checked to be static.
RUN hack/build-release.sh /cleanslate

# Final image: just the binary, as a non-root user. The chart chooses the subcommand. Nothing else is
# needed: the binary is static, reqwest and tonic carry their own root CAs (webpki-roots), and static
# glibc without an /etc/nsswitch.conf looks names up in /etc/hosts, then DNS, which is what a kubelet
# mounts (tests/image.rs runs it that way). hack/image.sh builds exactly this stage with buildah
# (tests/image.rs compares them):
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=build /cleanslate /cleanslate
LABEL org.opencontainers.image.source="https://github.com/cleanslate/cleanslate" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
USER 65532:65532
ENTRYPOINT ["/cleanslate"]
