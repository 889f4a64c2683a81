#!/bin/sh
# Compiles model-server as a static binary into the current directory, for the Dockerfile's
# `COPY model-server`. The pipeline's image stage runs it on the node, in the unpacked build
# context, before `docker build`. It builds from the checkout the pipeline was submitted
# from (KILN_PIPELINE_DIR, which kiln sets): the example is a member of kiln's workspace.
# glibc links statically with crt-static when the target is named explicitly.
set -eu
manifest="${KILN_PIPELINE_DIR:?run me from a kiln stage, or set KILN_PIPELINE_DIR}/Cargo.toml"
target=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --manifest-path "$manifest" --bin model-server --target "$target"
target_dir="$(cargo metadata --manifest-path "$manifest" --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
cp "$target_dir/$target/debug/model-server" ./model-server
echo "static model-server: $(wc -c < ./model-server) bytes"
