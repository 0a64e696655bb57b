# friday in a container: built from this checkout, run as an unprivileged user.
#
#   docker build -t friday .
#   docker run --rm -p 8000:8000 friday                          (the built-in models)
#   docker run --rm -p 8000:8000 -v /srv/models:/models:ro friday serve --model-repository /models
#
# io_uring: Docker's default seccomp profile (Engine 25 and later) blocks io_uring_setup, so
# friday starts on epoll and its log says why ("I/O engine ... reason"). To run on io_uring,
# allow its three system calls with a seccomp profile of your own, or --security-opt
# seccomp=unconfined where that is acceptable. `docker run ... friday doctor` shows what the
# container allows.
# memlock: kernels before 5.12 charge each shard's ring to RLIMIT_MEMLOCK; add
# --ulimit memlock=67108864 there (friday doctor gives the exact need).
# CPUs: friday runs one shard per CPU it may use; pin with --cpuset-cpus (e.g. 2-5).
# ONNX Runtime: the image runs models on rten. For models that need ONNX Runtime, add its
# library (e.g. the onnxruntime wheel's capi/libonnxruntime.so.*) and set ORT_DYLIB_PATH.

# rust-version in Cargo.toml is 1.92.
FROM rust:1.92-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin friday

FROM debian:bookworm-slim
RUN useradd --system --no-create-home friday
COPY --from=build /src/target/release/friday /usr/local/bin/friday
USER friday
EXPOSE 8000
# SIGTERM drains (docker stop waits 10 s by default; give it the drain: docker stop -t 35).
STOPSIGNAL SIGTERM
ENTRYPOINT ["friday"]
CMD ["serve"]
