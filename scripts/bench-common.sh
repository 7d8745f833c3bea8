# Shared by scripts/bench and scripts/bench-floors (sourced, from the project root): the run's
# work directory, the binaries, a free port, and waiting for a server to answer.

# Each run's files in a block group of their own: the parent is marked as a top of directory
# hierarchies (chattr +T), so ext4 places every new run directory like a top-level one. In a
# directory whose block group is churned by deleted files, creating a file can cost a journal-less
# ext4 thirty times more CPU (see "The machine" in BENCHMARKS.md); elsewhere the flag is a no-op.
# Prints the new directory; NAME is its prefix.
bench_workdir() {
    local parent=${TMPDIR:-/tmp}/fhirvault-bench
    mkdir -p "$parent"
    chattr +T "$parent" 2>/dev/null || true
    mktemp -d "$parent/$1.XXXXXX"
}

# BIN_DIR: the folder of fhirvault and fhirvault-bench, built with PROFILE (default release)
# unless given.
PROFILE=${PROFILE:-release}
if [ -z "${BIN_DIR:-}" ]; then
    cargo build --profile "$PROFILE" --locked --bins -q
    BIN_DIR=target/$PROFILE
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_for WHAT COMMAND...: run COMMAND until it succeeds (a minute at most).
wait_for() {
    local what=$1 i
    shift
    for ((i = 0; i < 300; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "error: $what did not become ready" >&2
    exit 1
}
