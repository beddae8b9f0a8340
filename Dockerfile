# Confman images: `--target node` (confman-node) and `--target operator` (confman-operator).
#
#   docker build --target node -t confman-node:0.1.0 .
#   docker build --target operator -t confman-operator:0.1.0 .
#
# The default build compiles both binaries in a Rust builder (RocksDB's C++ takes ~30 min on two
# cores). Without a registry, scripts/build-images builds the binaries on the host and passes
# BINARIES=prebuilt and a locally imported Debian base as RUNTIME_IMAGE (see README).

ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARIES=build

# --- build: both release binaries from source --------------------------------------------------
FROM ${RUST_IMAGE} AS build
# clang/libclang: bindgen for RocksDB. Versions come from the pinned bookworm base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p confman-node -p confman-operator \
    && mkdir -p /out/bin /out/data \
    && cp target/release/confman-node target/release/confman-operator /out/bin/

# --- prebuilt: binaries built on the host, staged in .image-bin/ by scripts/build-images -------
FROM scratch AS prebuilt
COPY .image-bin/ /out/

FROM ${BINARIES} AS binaries

# --- node image --------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS node
COPY --from=binaries /out/bin/confman-node /usr/local/bin/confman-node
COPY --from=binaries --chown=10001:10001 /out/data /var/lib/confman
WORKDIR /var/lib/confman
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/confman-node"]
# No arguments: a single development node with data in /var/lib/confman/data. The operator
# replaces these arguments with `--config /etc/confman/config/node.toml`.
CMD ["--listen", "0.0.0.0:8080"]

# --- operator image ----------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS operator
COPY --from=binaries /out/bin/confman-operator /usr/local/bin/confman-operator
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/confman-operator"]
CMD ["run"]
