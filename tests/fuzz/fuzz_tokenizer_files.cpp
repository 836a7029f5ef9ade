// libFuzzer target: loading a CLIP tokenizer folder (ClipTokenizer::load): vocab.json,
// merges.txt, tokenizer_config.json and special_tokens_map.json, taken from one input split at
// lines holding only "@@@" (missing parts: the file is absent). Loading must succeed or throw
// InputError (ConfigError included); a loaded tokenizer must encode a prompt.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/log.h"
#include "text/clip_tokenizer.h"

namespace fs = std::filesystem;

namespace {
std::string g_dir;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  vdm::log::set_level(vdm::log::Level::kQuiet);
  char tmpl[] = "/tmp/vdm-fuzz-tokfiles-XXXXXX";
  if (!::mkdtemp(tmpl)) std::abort();
  g_dir = tmpl;
  std::atexit([] {
    std::error_code ec;
    fs::remove_all(g_dir, ec);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  static const char* const kNames[] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                                       "special_tokens_map.json"};
  const std::string sep = "\n@@@\n";
  size_t pos = 0;
  for (const char* name : kNames) {
    const fs::path path = fs::path(g_dir) / name;
    std::error_code ec;
    fs::remove(path, ec);
    if (pos > input.size()) continue;
    size_t end = input.find(sep, pos);
    if (end == std::string::npos) end = input.size();
    std::ofstream(path, std::ios::binary) << input.substr(pos, end - pos);
    pos = end + sep.size();
  }
  try {
    const auto tok = vdm::text::ClipTokenizer::load(g_dir);
    const auto ids = tok.encode("a red circle moving right <|endoftext|> !");
    if (ids.size() < 2 || static_cast<int64_t>(ids.size()) > tok.max_length()) std::abort();
    (void)tok.decode(ids);
  } catch (const vdm::InputError&) {
  }
  return 0;
}
