# syntax=docker/dockerfile:1
# The Thespian agent image (docs/agent.md, "Container image").
#
#   docker build -t thespian-agent .
#   docker run --rm -p 6379:6379 -e SERVICE_NAME=gilbert -e CONFIG_JSON='{"grpc_method_a":null}' thespian-agent
#
# Build stage: the workspace's toolchain, only the agent package (no AWS SDK, no TLS stack), with cache
# mounts so rebuilds reuse the registry and target directories.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p thespian-agent --bin thespian-agent \
    && cp target/release/thespian-agent /thespian-agent

# Runtime stage: glibc and libgcc only, no shell, running as the image's unprivileged `nonroot` user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /thespian-agent /usr/local/bin/thespian-agent
USER nonroot:nonroot
ENV PORT=6379
EXPOSE 6379
# The agent drains on SIGTERM (health NOT_SERVING, in-flight requests finish within SHUTDOWN_GRACE_MS).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/thespian-agent"]
