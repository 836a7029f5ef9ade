// libFuzzer target: model_index.json of a diffusers model folder (pipelines::ModelFolder::open)
// and the `vdm info` summary of the folder it describes. The folder around model_index.json
// holds every component with small valid files, so the fuzzer explores how model_index.json
// names them. ModelFolder::open must succeed or throw InputError (ConfigError included).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "pipelines/model_folder.h"

namespace fs = std::filesystem;

namespace {

std::string g_root;

void write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  char tmpl[] = "/tmp/vdm-fuzz-model-XXXXXX";
  if (!::mkdtemp(tmpl)) std::abort();
  g_root = tmpl;
  const fs::path root(g_root);
  // An empty but valid safetensors file: header length 2, header "{}".
  const std::string empty_st("\x02\0\0\0\0\0\0\0{}", 10);
  write(root / "unet/config.json", R"({"in_channels": 4, "block_out_channels": [32, 64]})");
  write(root / "unet/diffusion_pytorch_model.safetensors", empty_st);
  write(root / "vae/config.json", R"({"latent_channels": 4, "scaling_factor": 0.18215})");
  write(root / "vae/diffusion_pytorch_model.safetensors", empty_st);
  write(root / "text_encoder/config.json", R"({"hidden_size": 32})");
  write(root / "text_encoder/model.safetensors", empty_st);
  write(root / "tokenizer/vocab.json", "{}");
  write(root / "tokenizer/merges.txt", "#version: 0.2\n");
  write(root / "tokenizer/tokenizer_config.json", R"({"model_max_length": 77})");
  write(root / "scheduler/scheduler_config.json", R"({"_class_name": "DDIMScheduler"})");
  fs::create_directories(root / "empty_component");
  std::atexit([] {
    std::error_code ec;
    fs::remove_all(g_root, ec);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path index = fs::path(g_root) / "model_index.json";
  {
    std::ofstream out(index, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    vdm::pipelines::ModelFolder folder = vdm::pipelines::ModelFolder::open(g_root);
    std::string summary = vdm::pipelines::describe_model_folder(folder);
    if (summary.empty()) std::abort();
    (void)folder.component("unet");
  } catch (const vdm::InputError&) {
  }
  return 0;
}
