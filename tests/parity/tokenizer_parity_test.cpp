// ClipTokenizer against transformers' CLIPTokenizer (4.45, without ftfy): the tiny fixture
// tokenizer (diffusers-tiny/golden/tokenizer.json) and the real 49,408-token CLIP vocabulary
// in both pad configurations (clip-vocab/golden_ids.json).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/support/test_support.h"
#include "text/clip_tokenizer.h"

namespace {
namespace fs = std::filesystem;
using vdm::text::ClipTokenizer;

using vdm::test::read_json;

std::string show(const std::string& prompt) { return nlohmann::json(prompt).dump(); }

// Checks one golden case (tokens, ids, ids_padded_77, attention_mask_77) against `tok`.
void check_case(const ClipTokenizer& tok, const std::string& prompt, const nlohmann::json& golden,
                int64_t* checked) {
  SCOPED_TRACE("prompt " + show(prompt));
  EXPECT_EQ(tok.tokenize(prompt), golden.at("tokens").get<std::vector<std::string>>());
  EXPECT_EQ(tok.encode(prompt, /*add_special=*/true, /*truncate=*/false), golden.at("ids").get<std::vector<int64_t>>());

  const auto padded = golden.at("ids_padded_77").get<std::vector<int64_t>>();
  const auto mask = golden.at("attention_mask_77").get<std::vector<int64_t>>();
  ASSERT_EQ(tok.max_length(), static_cast<int64_t>(padded.size()));
  std::vector<int64_t> truncated;
  at::Tensor ids = tok.batch({prompt}, &truncated);
  at::Tensor att = tok.batch_attention_mask({prompt});
  ASSERT_EQ(ids.sizes(), (at::IntArrayRef{1, tok.max_length()}));
  EXPECT_EQ(std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel()), padded);
  EXPECT_EQ(std::vector<int64_t>(att.data_ptr<int64_t>(), att.data_ptr<int64_t>() + att.numel()), mask);

  // Truncation is reported exactly when the untruncated ids do not fit.
  const int64_t full = static_cast<int64_t>(golden.at("ids").size());
  EXPECT_EQ(truncated.at(0), std::max<int64_t>(0, full - tok.max_length()));
  auto info = tok.encode_with_info(prompt);
  EXPECT_EQ(info.truncated(), full > tok.max_length());
  EXPECT_EQ(info.ids.size(), std::min<size_t>(static_cast<size_t>(full), static_cast<size_t>(tok.max_length())));
  ++*checked;
}

TEST(TokenizerParity, TinyFixtureTokenizer) {
  VDM_REQUIRE_FIXTURES(root);
  const auto golden = read_json(root + "/golden/tokenizer.json");
  ClipTokenizer tok = ClipTokenizer::load(root + "/t2v_pipeline/tokenizer");
  EXPECT_EQ(tok.vocab_size(), golden.at("vocab_size").get<int64_t>());
  EXPECT_EQ(tok.num_merges(), golden.at("n_merges").get<int64_t>());
  EXPECT_EQ(tok.bos_id(), golden.at("bos_id").get<int64_t>());
  EXPECT_EQ(tok.eos_id(), golden.at("eos_id").get<int64_t>());
  EXPECT_EQ(tok.pad_id(), golden.at("pad_id").get<int64_t>());
  int64_t checked = 0;
  for (const auto& c : golden.at("cases")) check_case(tok, c.at("prompt").get<std::string>(), c, &checked);
  EXPECT_GT(checked, 0);
}

// Every pad configuration listed in golden_ids.json ("configs"), every case.
TEST(TokenizerParity, ClipVocabGoldenIds) {
  const std::string shared = vdm::test::shared_fixtures_root();
  if (shared.empty() || !fs::exists(shared + "/clip-vocab/golden_ids.json")) {
    GTEST_SKIP() << "clip-vocab fixtures not found (set VDM_FIXTURES_ROOT or place them at ../shared/fixtures)";
  }
  const auto golden = read_json(shared + "/clip-vocab/golden_ids.json");
  ASSERT_FALSE(golden.at("configs").empty());
  for (const auto& [config_name, config] : golden.at("configs").items()) {
    SCOPED_TRACE("config " + config_name);
    ClipTokenizer tok = ClipTokenizer::load(shared + "/clip-vocab/" + config.at("dir").get<std::string>());
    EXPECT_EQ(tok.vocab_size(), golden.at("vocab_size").get<int64_t>());
    EXPECT_EQ(tok.num_merges(), golden.at("n_merges").get<int64_t>());
    EXPECT_EQ(tok.bos_id(), golden.at("bos_id").get<int64_t>());
    EXPECT_EQ(tok.eos_id(), golden.at("eos_id").get<int64_t>());
    EXPECT_EQ(tok.pad_id(), config.at("pad_id").get<int64_t>());
    EXPECT_EQ(tok.max_length(), config.at("model_max_length").get<int64_t>());

    int64_t checked = 0;
    for (const auto& c : golden.at("cases")) {
      check_case(tok, c.at("prompt").get<std::string>(), c.at(config_name), &checked);
    }
    EXPECT_EQ(checked, static_cast<int64_t>(golden.at("cases").size()));
  }
}

}  // namespace
