#!/usr/bin/env bash
# The main job: build the release binary (and the tokio and monoio reference peers), sweep epoll and
# io_uring over the seed's connection counts, and write CSV/JSON/Markdown and PNG charts.
#
#   ./run_matrix.sh                      # the full default sweep (results/<timestamp>/)
#   ./run_matrix.sh --quick --out DIR    # a smoke sweep in seconds
#   ./run_matrix.sh --backends epoll,uring,threads \
#       --target tokio='target/release/examples/tokio_echo --port {port}'
#   ./run_matrix.sh --help               # every flag
#
# Arguments are passed to `ringbench matrix`.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --quiet --bin ringbench --example tokio_echo --example monoio_echo
exec ./target/release/ringbench matrix "$@"
