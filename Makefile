# imapgw build and checks. `make test` is what CI runs (through .ci/run).

GO ?= go

# Fuzz targets as pkgpath:FuzzName. `make test` runs each for TEST_FUZZTIME,
# `make fuzz` for FUZZTIME, one after another. FUZZ_PARALLEL sets the number
# of fuzz workers (go test -parallel; default: one per CPU).
FUZZ_TARGETS ?= ./proxy/imapwire:FuzzParse ./limiter:FuzzTables ./proxy:FuzzSession ./proxy:FuzzResponse
FUZZTIME ?= 10m
TEST_FUZZTIME ?= 20s
FUZZ_PARALLEL ?=

# fuzz_run TIME: scripts/fuzz.sh runs each target in turn; for a failing one
# it prints the input go test wrote and the command that replays it, and
# exits non-zero after the others ran.
define fuzz_run
	@GO='$(GO)' FUZZ_PARALLEL='$(FUZZ_PARALLEL)' bash scripts/fuzz.sh $(1) $(FUZZ_TARGETS)
endef

# gofmt_check fails listing the files gofmt would change.
define gofmt_check
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then \
		echo "gofmt -l: these files need gofmt -w:"; echo "$$out"; exit 1; \
	fi
endef

.PHONY: all build test deps lint vet fmt-check fuzz demo bench soak clean

all: build

build:
	$(GO) build -o bin/imapgw ./cmd/imapgw

# Steps in order, as recipe lines rather than prerequisites, so that make -j
# cannot reorder them; the first failure stops make with a non-zero status.
test:
	bash scripts/deps.sh
	$(GO) mod tidy -diff
	$(GO) vet ./...
	$(gofmt_check)
	$(GO) test -race -count=1 -timeout 30m ./...
	$(call fuzz_run,$(TEST_FUZZTIME))

deps:
	bash scripts/deps.sh

lint: vet fmt-check

vet:
	$(GO) vet ./...

fmt-check:
	$(gofmt_check)

fuzz:
	$(call fuzz_run,$(FUZZTIME))

demo:
	$(GO) run ./cmd/imapgw demo

# imapgw next to HAProxy and nginx's mail proxy, written to docs/BENCHMARKS.md
# (about 12 minutes); then the Go micro-benchmarks of the parser, the policy and backend routing.
bench:
	bash scripts/bench-deps.sh
	$(GO) run ./bench -out docs/BENCHMARKS.md
	$(GO) test -run='^$$' -bench=. -benchmem ./proxy/imapwire ./limiter ./backend

# 2,000 sessions (IDLE, FETCH, logins) and an attacker for 60 s; see docs/RELIABILITY.md.
soak:
	bash scripts/deps.sh
	$(GO) test -v -count=1 -timeout 20m ./soak -run TestSoak -args -soak -duration=60s

clean:
	rm -rf bin
