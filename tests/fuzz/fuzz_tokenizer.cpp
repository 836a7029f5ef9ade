// libFuzzer target: the CLIP BPE tokenizer on arbitrary prompt bytes (invalid UTF-8, control
// characters, added tokens, very long input). Two tokenizers are trained at start-up with vdm's
// own BPE trainer: one SD 1.x style (pad <|endoftext|>), one SD 2.x style (pad "!", an added
// token). Encoding never throws; the ids respect bos/eos, truncation and the vocabulary.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/log.h"
#include "text/bpe_trainer.h"
#include "text/clip_tokenizer.h"

namespace fs = std::filesystem;
using vdm::text::ClipTokenizer;

namespace {

std::vector<std::unique_ptr<ClipTokenizer>> g_tokenizers;

void check(bool ok) {
  if (!ok) std::abort();
}

void exercise(const ClipTokenizer& tok, const std::string& text) {
  const int64_t max_len = tok.max_length();
  const auto full = tok.encode_with_info(text, /*add_special=*/true, /*truncate=*/false);
  const auto cut = tok.encode_with_info(text, /*add_special=*/true, /*truncate=*/true);
  check(full.ids.size() >= 2 && full.ids.front() == tok.bos_id() && full.ids.back() == tok.eos_id());
  check(static_cast<int64_t>(cut.ids.size()) <= max_len);
  check(cut.ids.front() == tok.bos_id() && cut.ids.back() == tok.eos_id());
  check(cut.num_truncated == static_cast<int64_t>(full.ids.size()) - static_cast<int64_t>(cut.ids.size()));
  const auto body = tok.encode(text, /*add_special=*/false, /*truncate=*/false);
  check(body.size() + 2 == full.ids.size());
  const auto tokens = tok.tokenize(text);
  check(tokens.size() == body.size());
  for (int64_t id : body) check(id >= 0);
  // Decoding and re-encoding must not fail either (the text may differ: normalisation).
  const std::string decoded = tok.decode(full.ids);
  (void)tok.encode(decoded);
  (void)tok.decode(cut.ids, /*skip_special=*/false);
  (void)ClipTokenizer::pre_tokenize(text);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  vdm::log::set_level(vdm::log::Level::kQuiet);
  char tmpl[] = "/tmp/vdm-fuzz-tok-XXXXXX";
  if (!::mkdtemp(tmpl)) std::abort();
  const std::vector<std::string> captions = {
      "a red circle moving right on a black background",
      "a blue square moving left, slowly", "two green triangles bounce up and down",
      "a yellow star spins in the centre", "the circle drifts up", "watercolor, soft light",
      "panda eating bamboo", "Ünïcödé café naïve 東京 don't we'll I'm",
  };
  for (const char* pad : {"<|endoftext|>", "!"}) {
    vdm::text::BpeTrainOptions opts;
    opts.num_merges = 200;
    opts.min_frequency = 1;
    opts.pad_token = pad;
    const std::string dir = std::string(tmpl) + (pad[0] == '!' ? "/sd2" : "/sd1");
    vdm::text::train_clip_bpe(captions, opts, dir);
    g_tokenizers.push_back(std::make_unique<ClipTokenizer>(ClipTokenizer::load(dir)));
  }
  std::error_code ec;
  fs::remove_all(tmpl, ec);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (const auto& tok : g_tokenizers) exercise(*tok, text);
  return 0;
}
