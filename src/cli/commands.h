// The `vdm` subcommands. Each cmd_*.cpp file defines one register function that adds its
// subcommand(s) to the app; main.cpp calls them all. Subcommand callbacks throw vdm::Error
// subclasses; main prints one line and exits with the error's code.
#pragma once
#include <cstdint>

namespace CLI {
class App;
}
namespace vdm::temporal {
struct FrameWindows;
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
// --freeu B1,B2,S1,S2 as KEY=VALUE text (models::parse_freeu reads it).
void add_freeu_option(CLI::App* cmd, std::string& text);

}  // namespace vdm::cli
