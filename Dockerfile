# syntax=docker/dockerfile:1
# vitals: one image for the exporter (`vitals run`) and the alert relay
# (`vitals relay`). Multi-stage: a Rust build stage, then a distroless
# runtime (glibc + libgcc + CA certificates, no shell) running as a
# non-root user.
#
#   docker build -t vitals:local --build-arg BUILD_VITALS_COMMIT=$(git rev-parse --short=12 HEAD) .

FROM rust:1-bookworm AS build
WORKDIR /src
# The commit for vitals_build_info and --version: the build context has no
# .git (.dockerignore), so build.rs takes it from this argument; it re-runs
# when the argument changes, also with the target/ cache mount below.
ARG BUILD_VITALS_COMMIT=unknown
ENV BUILD_VITALS_COMMIT=${BUILD_VITALS_COMMIT}
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin vitals \
    && install -D -m 0755 target/release/vitals /out/usr/local/bin/vitals \
    && mkdir -p /out/var/lib/vitals-relay /out/var/lib/vitals /out/etc/vitals

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/vitals /usr/local/bin/vitals
# The relay's durable outbox (mount a volume here) and config directory,
# owned by the image's non-root user (65532).
COPY --from=build --chown=65532:65532 /out/var/lib/vitals-relay /var/lib/vitals-relay
COPY --from=build --chown=65532:65532 /out/etc/vitals /etc/vitals
# The on-disk history (`[history] path`, default `data` under this
# directory); mount a volume at /var/lib/vitals to keep it.
COPY --from=build --chown=65532:65532 /out/var/lib/vitals /var/lib/vitals
WORKDIR /var/lib/vitals
USER 65532:65532
# 9797: exporter (/metrics, dashboard); 9798: relay.
EXPOSE 9797 9798
ENTRYPOINT ["/usr/local/bin/vitals"]
CMD ["run"]
