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
COPY hack/build-release.sh ./hack/build-release.sh
# The same command CI runs: a static binary, checked to be static.
RUN hack/build-release.sh /cleanslate

# Final image: just the binary, as a non-root user. The chart chooses the subcommand.
FROM scratch
COPY --from=build /cleanslate /cleanslate
USER 65532:65532
ENTRYPOINT ["/cleanslate"]
