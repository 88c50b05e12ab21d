# mqha: see README.md. Every target works on a fresh Debian 12 machine.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN     := bin/mqha-agent
LDFLAGS := -s -w -buildid= -X main.version=$(VERSION)

# Package version: a base version plus the commit, so every build is traceable.
PKG_VERSION ?= 0.1.0+git$(shell git log -1 --format=%cd.%h --date=format:%Y%m%d 2>/dev/null || echo 0)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
NFPM    := $(GO) tool -modfile=tools.mod nfpm
DEB     := dist/mqha-agent_$(PKG_VERSION)-1_amd64.deb
RPM     := dist/mqha-agent-$(PKG_VERSION)-1.x86_64.rpm

.PHONY: build test test-deps lint fuzz bench curves bench-lab clean packages lab lab-down lab-status lab-node e2e soak

build:
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(AGENT_TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN) ./agent

# Every test: unit tests, the tests that run the real nginx, keepalived and
# mosquitto (required here: they fail, never skip, when something is
# missing), then the end-to-end suite on a fresh lab. It needs root (the
# daemons' checks and the lab); for unit tests alone: go test ./...
test: lint test-deps
	MQHA_REQUIRE_REAL=1 $(GO) test -count=1 ./...
	$(MAKE) fuzz
	$(MAKE) e2e

# The fuzz targets, briefly (FUZZTIME each): the definition loader, the
# renderers with fuzzed names and addresses, the agent.conf parser, the
# session keeper's policy, the strip of mosquitto's persistence file.
FUZZTIME ?= 5s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime $(FUZZTIME) ./schema
	$(GO) test -run '^$$' -fuzz '^FuzzNames$$' -fuzztime $(FUZZTIME) ./internal/render
	$(GO) test -run '^$$' -fuzz '^FuzzParseConfig$$' -fuzztime $(FUZZTIME) ./internal/agent
	$(GO) test -run '^$$' -fuzz '^FuzzSessions$$' -fuzztime $(FUZZTIME) ./internal/sessions
	$(GO) test -run '^$$' -fuzz '^FuzzStrip$$' -fuzztime $(FUZZTIME) ./internal/retained

# Installs the Debian packages the tests need (.ci/packages), as root; says
# what is missing otherwise.
test-deps:
	@missing=$$(for p in $$(grep -v '^#' .ci/packages); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "make test needs root and these packages: $$missing"; exit 1; fi; \
	echo "installing: $$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing
	@if [ "$$(id -u)" != 0 ]; then echo "make test needs root: the real-tool tests and the lab run real daemons (for unit tests alone: go test ./...)"; exit 1; fi

# A fresh lab, the suite, and the lab torn down again whatever the outcome.
# Then the short soak (5 min, a fixed seed; internal/soak) on a fresh lab:
# any invariant breached fails. Last, the lab is killed without down (as a
# crash or a killed CI job ends it) and must come up fresh over what it
# left, and go down to nothing.
e2e: packages bin/mqha-lab
	bin/mqha-lab down
	bin/mqha-lab up
	$(GO) test -count=1 -tags e2e -v -timeout 40m ./e2e; rc=$$?; \
	  bin/mqha-lab down; bin/mqha-lab up || rc=1; \
	  $(GO) test -count=1 -tags 'e2e soak' -run '^TestSoak$$' -v -timeout 20m ./e2e || rc=1; \
	  $(GO) test -count=1 -tags 'e2e leftovers' -run '^TestLabLeftovers$$' -v -timeout 10m ./e2e || rc=1; \
	  bin/mqha-lab down; exit $$rc

# Benchmarks on a fresh lab (not part of make test): the targets that the
# e2e suite only bounds, over repeated runs, printed as p50/p95 and written as
# JSON under reports/ (kept: the lab is torn down after). MQHA_BENCH_PUSHES sets the number of pushes (default 10),
# MQHA_BENCH_RUNS the node-loss runs (default 3); MQHA_BENCH_BRIDGE_LONG=1
# adds the bridge faults that take a minute or more each. TestBenchScale grows
# the lab to 16 brokers and draws docs/scale-*.png.
bench-lab: packages bin/mqha-lab
	bin/mqha-lab down >/dev/null
	bin/mqha-lab up
	MQHA_BENCH_SCALE_DOCS=$(CURDIR)/docs $(GO) test -count=1 -tags 'e2e benchlab' -run '^TestBench' -v -timeout 75m ./e2e; rc=$$?; bin/mqha-lab down; exit $$rc

# The soak on a fresh lab: load through the VIP, faults and commits on a
# seeded schedule for DURATION (default 60m), the invariants checked; the
# report (soak.json, soak.txt, soak.png) goes to reports/soak/. SEED replays a
# run (default: random, printed); CLIENTS, FAULTS and COMMITS narrow it.
# DURATION=5m SEED=3547 GAP=15s CLIENTS=60 is the short soak (every group,
# most kinds), which make e2e runs.
DURATION ?= 60m
soak: packages bin/mqha-lab
	bin/mqha-lab down
	bin/mqha-lab up
	MQHA_SOAK_DURATION=$(DURATION) MQHA_SOAK_SEED=$(SEED) MQHA_SOAK_CLIENTS=$(CLIENTS) \
	  MQHA_SOAK_FAULTS=$(FAULTS) MQHA_SOAK_COMMITS=$(COMMITS) MQHA_SOAK_GAP=$(GAP) \
	  $(GO) test -count=1 -tags 'e2e soak' -run '^TestSoak$$' -v -timeout 6h ./e2e; rc=$$?; bin/mqha-lab down; exit $$rc

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# The cost curves that need no lab: what a definition of 10 to 1,000
# brokers costs an agent (evaluate, render, plan), drawn into docs/.
curves:
	MQHA_CURVES=$(CURDIR)/docs $(GO) test -count=1 -run '^TestCostCurves$$' -v -timeout 20m ./internal/plan

# .deb and .rpm, byte-identical for the same commit (SOURCE_DATE_EPOCH).
packages: build
	mkdir -p dist
	gzip -9n < packaging/mqha-agent.8 > dist/mqha-agent.8.gz
	$(BIN) completion bash > dist/mqha-agent.bash
	$(BIN) completion zsh > dist/_mqha-agent
	printf '%s\n' "mqha-agent ($(PKG_VERSION)-1) unstable; urgency=medium" "" \
	  "  * Built from commit $$(git rev-parse --short HEAD 2>/dev/null || echo unknown)." "" \
	  " -- mqha maintainers <maintainers@mqha.dev>  $$(date -u -R -d @$(SOURCE_DATE_EPOCH))" \
	  | gzip -9n > dist/changelog.Debian.gz
	export VERSION=$(PKG_VERSION) SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH); \
	  $(NFPM) package -f packaging/nfpm.yaml -p deb -t $(DEB) && \
	  $(NFPM) package -f packaging/nfpm.yaml -p rpm -t $(RPM)
	ln -sf $(notdir $(DEB)) dist/mqha-agent_amd64.deb
	ln -sf $(notdir $(RPM)) dist/mqha-agent.x86_64.rpm

# The lab: a real 5-node cluster in systemd-nspawn containers (root, Debian 12).
bin/mqha-lab: $(shell find lab internal -name '*.go' 2>/dev/null) go.mod
	$(GO) build -o $@ ./lab

lab: packages bin/mqha-lab
	bin/mqha-lab up

# Says what it removed; nothing at all when no lab is there.
lab-down: bin/mqha-lab
	@bin/mqha-lab down

lab-status: bin/mqha-lab
	bin/mqha-lab status

lab-node: packages bin/mqha-lab
	@test -n "$(NAME)" -a -n "$(ADDR)" || { echo "usage: make lab-node NAME=broker3 ADDR=10.231.7.23"; exit 2; }
	bin/mqha-lab node $(NAME) $(ADDR)

clean:
	rm -rf bin dist
