// vdm info MODEL_DIR: components, key settings, parameter counts and dtypes of a model folder.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "cli/commands.h"
#include "pipelines/model_folder.h"

namespace vdm::cli {

void register_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Describe a diffusers-format model folder");
  auto dir = std::make_shared<std::string>();
  cmd->add_option("model_dir", *dir, "Model folder (holding model_index.json)")->required();
  cmd->callback([dir] {
    auto folder = pipelines::ModelFolder::open(*dir);
    std::fputs(pipelines::describe_model_folder(folder).c_str(), stdout);
  });
}

}  // namespace vdm::cli
