# scopegate container image: a static-ish binary on distroless, non-root.
#   docker build -t scopegate:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# protoc comes from protoc-bin-vendored; gcc (for ring and mimalloc) is in the image.
RUN cargo build --release --locked --bin scopegate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/scopegate /usr/local/bin/scopegate
# distroless "nonroot" is 65532:65532, as the Helm chart expects.
USER 65532:65532
# Only the data dir (and the socket dir, if used) need to be writable.
VOLUME ["/var/lib/scopegate"]
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/scopegate"]
CMD ["serve", "--listen=0.0.0.0:50051", "--metrics-listen=0.0.0.0:9090", "--data-dir=/var/lib/scopegate"]
