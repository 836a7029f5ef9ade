// vdm: generate, animate and restyle short video clips with diffusion models.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/runtime.h"

namespace vdm::cli {

const char* default_model_dir() {
  static std::string dir = [] {
    const char* env = std::getenv("VDM_DEFAULT_MODEL");
    return std::string(env && *env ? env : VDM_SOURCE_DIR "/samples/models/shapes");
  }();
  return dir.c_str();
}

}  // namespace vdm::cli

int main(int argc, char** argv) {
  CLI::App app{"vdm: video diffusion engine (text-to-video, image-to-video, video-to-video)"};
  app.require_subcommand(1);
  // A flag given twice takes its last value (scripts append overrides).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.set_version_flag("--version", "vdm 0.1.0");
  vdm::init_runtime(0);
  app.add_option_function<int>("--threads", [](const int& n) { vdm::init_runtime(n); },
                               "CPU threads (default: all cores)")
      ->trigger_on_parse();
  app.add_flag_callback("-q,--quiet", [] { vdm::log::set_level(vdm::log::Level::kWarn); },
                        "Only print warnings and errors")
      ->trigger_on_parse();

  vdm::cli::register_info(app);
  vdm::cli::register_generate(app);
  vdm::cli::register_batch(app);
  vdm::cli::register_train(app);
  vdm::cli::register_eval(app);
  vdm::cli::register_bench(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "vdm: error: %s (see vdm --help)\n", e.what());
    return 2;
  } catch (const vdm::Error& e) {
    std::fprintf(stderr, "vdm: error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vdm: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
