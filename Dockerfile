# toolgate: multi-stage build, runs as a non-root user.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
RUN cargo build --release --locked --bin toolgate

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/toolgate toolgate \
 && mkdir -p /var/lib/toolgate/data /var/lib/toolgate/certs /etc/toolgate/policies \
 && chown -R toolgate /var/lib/toolgate
COPY --from=build /src/target/release/toolgate /usr/local/bin/toolgate
USER toolgate
WORKDIR /var/lib/toolgate
# Policies are mounted read-only; data (the sled store) and certs (the CA agents trust) persist.
VOLUME ["/var/lib/toolgate/data", "/var/lib/toolgate/certs"]
ENV TOOLGATE_LISTEN=0.0.0.0:8080 \
    TOOLGATE_ADMIN_LISTEN=0.0.0.0:8081 \
    TOOLGATE_POLICIES=/etc/toolgate/policies \
    TOOLGATE_DATA_DIR=/var/lib/toolgate/data \
    TOOLGATE_CERTS=/var/lib/toolgate/certs \
    TOOLGATE_LOG_FORMAT=json
EXPOSE 8080 8081
STOPSIGNAL SIGTERM
ENTRYPOINT ["toolgate"]
CMD ["serve"]
