# syntax=docker/dockerfile:1
# The eaas binary (controller, expert pod, attention worker) in one image.
#   docker build -t ghcr.io/eaas-dev/eaas:0.1.0 .
# The image runs as user 65532 and defaults to `eaas controller`; pods pass their own arguments.

# The Swift the project is developed and tested with (6.3); Debian 12 like the runtime stage.
FROM swift:6.3-bookworm AS builder
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       libcurl4-openssl-dev libyaml-dev libibverbs-dev libopenblas-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Package.resolved is optional (it is not committed); the pattern lets COPY go on without it.
COPY Package.swift Package.resolve[d] ./
# Tests/ is not sent (.dockerignore), but SwiftPM wants a directory with a source for every target
# the manifest declares; give each test target an empty one. Nothing here builds them.
RUN for t in $(sed -n 's/.*testTarget(name: "\([A-Za-z0-9_]*\)".*/\1/p' Package.swift); do \
      mkdir -p "Tests/$t" && : > "Tests/$t/Empty.swift"; \
    done \
    && swift package resolve
COPY Sources ./Sources
RUN swift build -c release --product eaas --static-swift-stdlib \
    && install -D "$(swift build -c release --show-bin-path)/eaas" /out/eaas

FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       libcurl4 libyaml-0-2 libibverbs1 ibverbs-providers libopenblas0 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/eaas /usr/local/bin/eaas
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/eaas"]
CMD ["controller"]
