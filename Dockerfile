# The fhirvault server image used by compose.yaml.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin fhirvault

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/fhirvault fhirvault && mkdir -p /var/lib/fhirvault \
    && chown fhirvault /var/lib/fhirvault
COPY --from=build /src/target/release/fhirvault /usr/local/bin/fhirvault
USER fhirvault
EXPOSE 8080
ENTRYPOINT ["fhirvault"]
CMD ["serve"]
