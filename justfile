# Thin wrappers; every recipe works without just through the script it calls.

# Start the demo server (2 clouds x 2 databases on the local PostgreSQL).
demo:
    scripts/demo

# Run the whole test suite against real PostgreSQL and Redis.
test *ARGS:
    scripts/test {{ARGS}}

# Run each fuzz harness for SECONDS (validator, config, every RPC, grpc-web framing).
fuzz SECONDS="60":
    scripts/fuzz {{SECONDS}}

# The load test: 500 ExecuteStream + 200 Execute calls at once, two rounds (see docs/RELIABILITY.md).
load:
    scripts/load

# Everything CI runs: bootstrap, buf lint and breaking, deploy/ checks, fmt, clippy, tests.
ci:
    .ci/run

# Lints only.
lint:
    .tools/node_modules/.bin/buf lint
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Validate deploy/: Dockerfile, Kubernetes manifests, Envoy config (see scripts/check-deploy).
check-deploy:
    scripts/check-deploy

# Run the README's grpcurl session against a fresh demo (as CI does).
readme-session:
    scripts/readme-session

# Check that every relative link in README.md and docs/ resolves.
check-doc-links:
    scripts/check-doc-links

# Criterion benchmarks.
bench:
    cargo bench --workspace

# perf profile of the query path (docs/PERFORMANCE.md, "Where the time goes").
profile-query:
    scripts/profile-query

# Validate a configuration file.
check-config FILE:
    cargo run --quiet --bin pgfleet -- --config {{FILE}} check-config
