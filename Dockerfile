# ncf serve in a container: a Rust builder stage, then a slim runtime with only the binary.
#   docker build -t ncf .
#   docker run -p 8080:8080 -v $PWD/models:/models ncf \
#       --model /models/model.safetensors --items-meta /models/movies.dat
# (Not built here: this project's machines run no Docker engine.)
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ncf

FROM debian:bookworm-slim
COPY --from=build /src/target/release/ncf /usr/local/bin/ncf
EXPOSE 8080
ENTRYPOINT ["ncf", "serve", "--addr", "0.0.0.0:8080"]
CMD ["--model", "/models/model.safetensors"]
