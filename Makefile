# Two commands do everything on a fresh Debian 12 machine:
#   make run    install what is missing, build, render a clip from a sample prompt into out/
#   make test   install what is missing, build, run the test suite (ctest)
# Reliability checks (docs/robustness.md):
#   make test-sanitize   the test suite built with GCC's AddressSanitizer + UBSan (build-asan/)
#   make fuzz            the libFuzzer targets of tests/fuzz, built with clang (build-fuzz/)
#   make fuzz-smoke      each fuzz target for FUZZ_SECONDS (10) seconds; fails on any finding
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
MODEL ?= samples/models/shapes
PROMPT ?= a red circle moving right on a black background

ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 10
SANITIZE_FLAGS = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# LibTorch and FFmpeg are not instrumented, and AddressSanitizer's container-overflow check gives
# false reports when a std::vector is changed by both instrumented and uninstrumented code.
SANITIZE_ENV = ASAN_OPTIONS=detect_container_overflow=0:abort_on_error=1 \
               UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

.PHONY: all deps configure build run test test-parity bench clean test-sanitize fuzz fuzz-smoke

all: build

deps:
	@./install-deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

configure: deps $(BUILD)/CMakeCache.txt

build: configure
	cmake --build $(BUILD) -j$(JOBS)

run: build
	@mkdir -p out
	./$(BUILD)/vdm generate --model $(MODEL) --prompt "$(PROMPT)" --seed 1 --guidance 4 --output out/sample.mp4
	@echo "wrote out/sample.mp4"

test: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

test-parity: build
	cd $(BUILD) && ctest --output-on-failure -L parity

test-sanitize: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVDM_BUILD_BENCHMARKS=OFF \
	  -DCMAKE_CXX_FLAGS="$(SANITIZE_FLAGS)" \
	  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" $(CMAKE_FLAGS)
	cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(ASAN_BUILD) && $(SANITIZE_ENV) ctest --output-on-failure -j$(JOBS) $(CTEST_ARGS)

fuzz:
	@./install-deps.sh --fuzz
	CC=clang CXX=clang++ cmake -S tests/fuzz -B $(FUZZ_BUILD)
	cmake --build $(FUZZ_BUILD) -j$(JOBS)

fuzz-smoke: fuzz
	tests/fuzz/run_fuzzers.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) out
