# Two commands do everything on a fresh Debian 12 machine:
#   make run    install what is missing, build, render a clip from a sample prompt into out/
#   make test   install what is missing, build, run the test suite (ctest)
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
MODEL ?= samples/models/shapes
PROMPT ?= a red circle moving right on a black background

.PHONY: all deps configure build run test test-parity bench clean

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

clean:
	rm -rf $(BUILD) out
