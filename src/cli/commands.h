// The `vdm` subcommands. Each cmd_*.cpp file defines one register function that adds its
// subcommand(s) to the app; main.cpp calls them all. Subcommand callbacks throw vdm::Error
// subclasses; main prints one line and exits with the error's code.
#pragma once
#include <cstdint>
#include <string>

namespace CLI {
class App;
}
namespace vdm::temporal {
struct FrameWindows;
struct FreeInit;
}

namespace vdm::cli {

void register_info(CLI::App& app);      // vdm info MODEL_DIR
void register_generate(CLI::App& app);  // vdm generate | animate | restyle
void register_batch(CLI::App& app);     // vdm batch SHOTLIST
void register_train(CLI::App& app);     // vdm train
void register_eval(CLI::App& app);      // vdm eval shapes
void register_bench(CLI::App& app);     // vdm bench

// The model folder used when --model is not given: the embedded default model.
const char* default_model_dir();

// --context-frames, --context-stride, --context-weights and --context-noise: frame windows for long
// clips (temporal/frame_windows.h), on generate, animate, restyle, batch and eval shapes.
void add_context_options(CLI::App* cmd, temporal::FrameWindows& windows);

// --deep-cache and --deep-cache-branch (GenerateOptions::deep_cache_interval/_branch), on generate,
// animate, restyle and eval shapes.
void add_deep_cache_options(CLI::App* cmd, int64_t& interval, int64_t& branch);
// --freeu b1=..,b2=..,s1=..,s2=.. as text (models::parse_freeu reads it), on generate, animate,
// restyle, extend, eval shapes and bench.
void add_freeu_option(CLI::App* cmd, std::string& text);
// --free-init N and its filter's settings (temporal/free_init.h), on generate, animate, extend and
// eval shapes.
void add_free_init_options(CLI::App* cmd, temporal::FreeInit& free_init);

}  // namespace vdm::cli
