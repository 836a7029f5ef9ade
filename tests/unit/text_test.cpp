// src/text without reference fixtures: the BPE trainer round trip through ClipTokenizer,
// truncation reporting, tokenizer loading errors, the Unicode normaliser, and the CLIP text
// model's folder writer, strict loading and pooling rules.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/tensor_io.h"
#include "tests/support/test_support.h"
#include "text/bpe_trainer.h"
#include "text/clip_text_model.h"
#include "text/clip_tokenizer.h"
#include "text/unicode.h"

namespace {
namespace fs = std::filesystem;
using vdm::text::BpeTrainOptions;
using vdm::text::ClipTokenizer;

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

// Captions in the style of vdm's synthetic training set: every combination of a few colours,
// shapes and motions.
std::vector<std::string> shape_captions() {
  std::vector<std::string> captions;
  for (const char* colour : {"red", "green", "blue", "yellow", "white"})
    for (const char* shape : {"circle", "square", "triangle"})
      for (const char* motion : {"moving left", "moving right", "moving up", "moving down", "bouncing"})
        captions.push_back(std::string("a ") + colour + " " + shape + " " + motion + " on a black background");
  return captions;
}

std::vector<std::string> split_words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

// ---- BPE trainer ----------------------------------------------------------------------------

TEST(BpeTrainer, RoundTripEveryCaptionWordIsOneToken) {
  const auto captions = shape_captions();
  const std::string dir = vdm::test::make_temp_dir("bpe");
  BpeTrainOptions options;
  options.num_merges = 400;
  auto result = vdm::text::train_clip_bpe(captions, options, dir);
  ASSERT_GT(result.merges.size(), 0u);
  EXPECT_LT(static_cast<int64_t>(result.merges.size()), options.num_merges);  // ran out of frequent pairs
  EXPECT_EQ(result.vocab_size, 512 + static_cast<int64_t>(result.merges.size()) + 2);

  ClipTokenizer tok = ClipTokenizer::load(dir);
  EXPECT_EQ(tok.vocab_size(), result.vocab_size);
  EXPECT_EQ(tok.num_merges(), static_cast<int64_t>(result.merges.size()));
  EXPECT_EQ(tok.bos_id(), result.vocab_size - 2);
  EXPECT_EQ(tok.eos_id(), result.vocab_size - 1);
  EXPECT_EQ(tok.pad_id(), tok.eos_id());
  EXPECT_EQ(tok.max_length(), 77);

  for (const auto& caption : captions) {
    SCOPED_TRACE(caption);
    const auto words = split_words(caption);
    const auto tokens = tok.tokenize(caption);
    ASSERT_EQ(tokens.size(), words.size());
    for (size_t i = 0; i < words.size(); ++i) EXPECT_EQ(tokens[i], words[i] + "</w>");
    const auto ids = tok.encode(caption);
    ASSERT_EQ(ids.size(), words.size() + 2);
    EXPECT_EQ(ids.front(), tok.bos_id());
    EXPECT_EQ(ids.back(), tok.eos_id());
    for (int64_t id : ids) EXPECT_TRUE(id >= 0 && id < tok.vocab_size());
    EXPECT_EQ(tok.decode(ids), caption);
  }
  // A word never seen still encodes, through smaller pieces.
  EXPECT_GT(tok.tokenize("purple").size(), 1u);
  EXPECT_EQ(tok.decode(tok.encode("a purple hexagon")), "a purple hexagon");
}

TEST(BpeTrainer, VocabularyLayoutIsClips) {
  const std::string dir = vdm::test::make_temp_dir("bpe-layout");
  auto result = vdm::text::train_clip_bpe(shape_captions(), 50, dir);
  const auto vocab = nlohmann::json::parse(read_file(fs::path(dir) / "vocab.json"));
  EXPECT_EQ(static_cast<int64_t>(vocab.size()), result.vocab_size);
  EXPECT_EQ(vocab.at("!").get<int64_t>(), 0);
  EXPECT_EQ(vocab.at("!</w>").get<int64_t>(), 256);
  EXPECT_EQ(vocab.at("\xc5\x83").get<int64_t>(), 255);  // U+0143, the last byte symbol
  for (size_t r = 0; r < result.merges.size(); ++r) {
    EXPECT_EQ(vocab.at(result.merges[r].first + result.merges[r].second).get<int64_t>(), 512 + static_cast<int64_t>(r));
  }
  EXPECT_EQ(vocab.at("<|startoftext|>").get<int64_t>(), result.vocab_size - 2);
  EXPECT_EQ(vocab.at("<|endoftext|>").get<int64_t>(), result.vocab_size - 1);

  const std::string merges = read_file(fs::path(dir) / "merges.txt");
  EXPECT_EQ(merges.rfind("#version: 0.2\n", 0), 0u);
  EXPECT_EQ(std::count(merges.begin(), merges.end(), '\n'), static_cast<long>(result.merges.size()) + 1);
  const auto config = nlohmann::json::parse(read_file(fs::path(dir) / "tokenizer_config.json"));
  EXPECT_EQ(config.at("tokenizer_class"), "CLIPTokenizer");
  EXPECT_EQ(config.at("model_max_length"), 77);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "special_tokens_map.json"));
  // No temporary files are left behind.
  for (const auto& e : fs::directory_iterator(dir)) EXPECT_EQ(e.path().extension() == ".tmp", false) << e.path();
}

TEST(BpeTrainer, DeterministicAndMostFrequentFirst) {
  const auto captions = shape_captions();
  auto a = vdm::text::learn_clip_bpe(captions);
  auto b = vdm::text::learn_clip_bpe(captions);
  EXPECT_EQ(a.merges, b.merges);
  const std::string d1 = vdm::test::make_temp_dir("bpe-a"), d2 = vdm::test::make_temp_dir("bpe-b");
  vdm::text::write_clip_tokenizer(a.merges, d1);
  vdm::text::write_clip_tokenizer(b.merges, d2);
  for (const char* f : {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}) {
    EXPECT_EQ(read_file(fs::path(d1) / f), read_file(fs::path(d2) / f)) << f;
  }
  // The first merge is a pair of maximal count in the initial split.
  std::map<std::pair<std::string, std::string>, int64_t> counts;
  for (const auto& c : captions) {
    for (const auto& w : ClipTokenizer::pre_tokenize(c)) {
      std::vector<std::string> sym;
      for (char ch : w) sym.push_back(std::string(1, ch));
      sym.back() += "</w>";
      for (size_t i = 0; i + 1 < sym.size(); ++i) ++counts[{sym[i], sym[i + 1]}];
    }
  }
  int64_t best = 0;
  for (const auto& [p, n] : counts) best = std::max(best, n);
  ASSERT_FALSE(a.merges.empty());
  EXPECT_EQ(counts[a.merges[0]], best);
}

TEST(BpeTrainer, MinFrequencyStopsAtRarePairs) {
  BpeTrainOptions options;
  options.num_merges = 1000;
  options.min_frequency = 1000000;
  EXPECT_TRUE(vdm::text::learn_clip_bpe(shape_captions(), options).merges.empty());
  options.num_merges = -1;
  EXPECT_THROW(vdm::text::learn_clip_bpe(shape_captions(), options), vdm::InputError);
  options.num_merges = ClipTokenizer::kMaxMerges + 1;
  EXPECT_THROW(vdm::text::learn_clip_bpe(shape_captions(), options), vdm::InputError);
}

TEST(BpeTrainer, ExclamationPadSharesItsIdWithLiteralExclamation) {
  const std::string dir = vdm::test::make_temp_dir("bpe-bang");
  BpeTrainOptions options;
  options.num_merges = 100;
  options.pad_token = "!";
  vdm::text::train_clip_bpe(shape_captions(), options, dir);
  ClipTokenizer tok = ClipTokenizer::load(dir);
  EXPECT_EQ(tok.pad_id(), 0);
  const auto ids = tok.encode("red!!");
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids[ids.size() - 2], tok.pad_id());
  EXPECT_EQ(ids[ids.size() - 3], tok.pad_id());
  at::Tensor batch = tok.batch({"red!"});
  EXPECT_EQ(batch.size(1), tok.max_length());
  EXPECT_EQ(batch[0][tok.max_length() - 1].item<int64_t>(), 0);
}

// ---- truncation -----------------------------------------------------------------------------

TEST(ClipTokenizer, ReportsTruncation) {
  const std::string dir = vdm::test::make_temp_dir("bpe-trunc");
  vdm::text::train_clip_bpe(shape_captions(), 400, dir);
  ClipTokenizer tok = ClipTokenizer::load(dir);
  std::string long_prompt;
  for (int i = 0; i < 100; ++i) long_prompt += "red circle ";
  auto enc = tok.encode_with_info(long_prompt);
  EXPECT_TRUE(enc.truncated());
  EXPECT_EQ(enc.num_truncated, 200 - (tok.max_length() - 2));
  ASSERT_EQ(static_cast<int64_t>(enc.ids.size()), tok.max_length());
  EXPECT_EQ(enc.ids.back(), tok.eos_id());
  EXPECT_EQ(static_cast<int64_t>(tok.encode(long_prompt, true, false).size()), 202);
  EXPECT_EQ(static_cast<int64_t>(tok.encode(long_prompt, false, true).size()), tok.max_length());

  auto short_enc = tok.encode_with_info("a red circle");
  EXPECT_FALSE(short_enc.truncated());
  EXPECT_EQ(short_enc.num_truncated, 0);

  std::vector<int64_t> truncated;
  at::Tensor ids = tok.batch({"a red circle", long_prompt}, &truncated);
  EXPECT_EQ(ids.sizes(), (at::IntArrayRef{2, tok.max_length()}));
  EXPECT_EQ(truncated, (std::vector<int64_t>{0, enc.num_truncated}));
  at::Tensor mask = tok.batch_attention_mask({"a red circle", long_prompt});
  EXPECT_EQ(mask[0].sum().item<int64_t>(), 5);
  EXPECT_EQ(mask[1].sum().item<int64_t>(), tok.max_length());
}

// ---- loading errors -------------------------------------------------------------------------

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const vdm::ConfigError& e) {
    return e.what();
  }
  return "(no ConfigError)";
}

TEST(ClipTokenizer, MissingAndCorruptFilesNameTheFile) {
  const fs::path dir = vdm::test::make_temp_dir("tok-err");
  EXPECT_NE(error_of([&] { ClipTokenizer::load(dir.string()); }).find("vocab.json"), std::string::npos);
  EXPECT_NE(error_of([&] { ClipTokenizer::load((dir / "nope").string()); }).find("nope"), std::string::npos);

  vdm::text::write_clip_tokenizer({}, dir.string());
  fs::remove(dir / "merges.txt");
  EXPECT_NE(error_of([&] { ClipTokenizer::load(dir.string()); }).find("merges.txt"), std::string::npos);

  write_file(dir / "merges.txt", "#version: 0.2\na b c\n");
  EXPECT_NE(error_of([&] { ClipTokenizer::load(dir.string()); }).find("merges.txt:2"), std::string::npos);

  write_file(dir / "merges.txt", "#version: 0.2\n");
  write_file(dir / "vocab.json", "{\"a\": 0,");
  EXPECT_NE(error_of([&] { ClipTokenizer::load(dir.string()); }).find("vocab.json"), std::string::npos);
  write_file(dir / "vocab.json", "{\"a\": \"zero\"}");
  EXPECT_NE(error_of([&] { ClipTokenizer::load(dir.string()); }).find("vocab.json"), std::string::npos);
}

TEST(ClipTokenizer, DefaultsWithoutConfigFiles) {
  const fs::path dir = vdm::test::make_temp_dir("tok-defaults");
  vdm::text::write_clip_tokenizer({{"r", "e"}, {"re", "d</w>"}}, dir.string());
  fs::remove(dir / "tokenizer_config.json");
  fs::remove(dir / "special_tokens_map.json");
  ClipTokenizer tok = ClipTokenizer::load(dir.string());
  EXPECT_EQ(tok.bos_id(), 514);
  EXPECT_EQ(tok.eos_id(), 515);
  EXPECT_EQ(tok.pad_id(), 515);
  EXPECT_EQ(tok.max_length(), ClipTokenizer::kDefaultMaxLength);
  EXPECT_EQ(tok.tokenize("Red"), (std::vector<std::string>{"red</w>"}));
  EXPECT_EQ(tok.encode("red"), (std::vector<int64_t>{514, 513, 515}));
}

// ---- Unicode --------------------------------------------------------------------------------

TEST(Unicode, NormalisationAndLowercase) {
  using namespace vdm::text;
  EXPECT_EQ(unicode::nfc(U"e\u0301"), U"\u00e9");
  EXPECT_EQ(unicode::nfc(U"a\u0323\u0302"), U"\u1ead");        // reordered marks compose
  EXPECT_EQ(unicode::nfc(U"a\u0302\u0323"), U"\u1ead");
  EXPECT_EQ(unicode::nfc(U"\u1100\u1161\u11a8"), U"\uac01");   // Hangul jamo
  EXPECT_EQ(unicode::nfc(U"\u212b"), U"\u00c5");                // singleton (Angstrom sign)
  EXPECT_EQ(unicode::to_lower(U"\u039f\u0394\u039f\u03a3"), U"\u03bf\u03b4\u03bf\u03c2");  // final sigma
  EXPECT_EQ(unicode::to_lower(U"\u03a3\u039f"), U"\u03c3\u03bf");
  EXPECT_EQ(unicode::to_lower(U"\u0130"), U"i\u0307");
  EXPECT_EQ(unicode::to_lower(U"\u00c9COLE"), U"\u00e9cole");
  EXPECT_TRUE(unicode::is_letter(U'\u00e9'));
  EXPECT_TRUE(unicode::is_number(U'\u0663'));
  EXPECT_EQ(unicode::char_class(U'\u200b'), unicode::CharClass::kControl);
  EXPECT_EQ(utf8_to_utf32("a\xff" "b"), U"a\ufffdb");
  EXPECT_EQ(utf32_to_utf8(utf8_to_utf32("caf\xc3\xa9 \xf0\x9f\x90\xb1")), "caf\xc3\xa9 \xf0\x9f\x90\xb1");
}

// ---- CLIP text model ------------------------------------------------------------------------

vdm::text::CLIPTextConfig tiny_config() { return vdm::test::tiny_clip_text_config(); }

TEST(CLIPTextModel, SaveLoadRoundTripWithTransformersKeys) {
  at::manual_seed(3);
  vdm::text::CLIPTextModel model(tiny_config());
  std::vector<std::string> names;
  for (const auto& p : model->named_parameters()) names.push_back(p.key());
  EXPECT_NE(std::find(names.begin(), names.end(), "text_model.embeddings.token_embedding.weight"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "text_model.encoder.layers.1.self_attn.out_proj.bias"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "text_model.encoder.layers.0.mlp.fc2.weight"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "text_model.final_layer_norm.weight"), names.end());
  EXPECT_EQ(names.size(), 4u + 16u * 2u);

  const std::string dir = vdm::test::make_temp_dir("clip-save");
  vdm::text::save_clip_text_model(model, dir);
  const auto config = nlohmann::json::parse(read_file(fs::path(dir) / "config.json"));
  EXPECT_EQ(config.at("architectures"), nlohmann::json::array({"CLIPTextModel"}));
  EXPECT_EQ(config.at("model_type"), "clip_text_model");
  EXPECT_EQ(config.at("hidden_act"), "quick_gelu");
  EXPECT_EQ(config.at("eos_token_id"), 39);

  vdm::text::CLIPTextModel loaded = vdm::text::load_clip_text_model(dir);
  at::Tensor ids = at::tensor({38, 5, 7, 39, 0, 0, 38, 9, 39, 0, 0, 0}, at::kLong).view({2, 6});
  at::NoGradGuard no_grad;
  model->eval();
  auto a = model->forward(ids);
  auto b = loaded->forward(ids);
  EXPECT_EQ(vdm::test::max_abs_diff(a.last_hidden_state, b.last_hidden_state), 0.0);
  ASSERT_EQ(b.hidden_states.size(), 3u);
  EXPECT_EQ(b.last_hidden_state.sizes(), (at::IntArrayRef{2, 6, 16}));
  EXPECT_EQ(b.pooler_output.sizes(), (at::IntArrayRef{2, 16}));
  // eos_token_id != 2: pooled at the first eos.
  EXPECT_EQ(vdm::test::max_abs_diff(b.pooler_output[0], b.last_hidden_state[0][3]), 0.0);
  EXPECT_EQ(vdm::test::max_abs_diff(b.pooler_output[1], b.last_hidden_state[1][2]), 0.0);
  // Causal attention: a later token does not change earlier outputs.
  at::Tensor ids2 = ids.clone();
  ids2[0][5] = 11;
  EXPECT_LT(vdm::test::max_abs_diff(loaded->forward(ids2).last_hidden_state[0].narrow(0, 0, 5),
                                    b.last_hidden_state[0].narrow(0, 0, 5)),
            1e-6);
}

// A folder holding only the fp16 variant (model.fp16.safetensors) loads, in float32.
TEST(CLIPTextModel, LoadsTheFp16VariantWhenItIsTheOnlyWeights) {
  at::manual_seed(4);
  vdm::text::CLIPTextModel model(tiny_config());
  const std::string dir = vdm::test::make_temp_dir("clip-fp16");
  vdm::text::save_clip_text_model(model, dir, at::kHalf);
  fs::rename(fs::path(dir) / "model.safetensors", fs::path(dir) / "model.fp16.safetensors");
  vdm::text::CLIPTextModel loaded = vdm::text::load_clip_text_model(dir);
  const at::Tensor w = model->named_parameters()["text_model.final_layer_norm.weight"];
  const at::Tensor l = loaded->named_parameters()["text_model.final_layer_norm.weight"];
  EXPECT_EQ(l.scalar_type(), at::kFloat);
  EXPECT_EQ(vdm::test::max_abs_diff(l, w.to(at::kHalf).to(at::kFloat)), 0.0);
  fs::remove(fs::path(dir) / "model.fp16.safetensors");
  try {
    vdm::text::load_clip_text_model(dir);
    ADD_FAILURE() << "loading a folder without weights must fail";
  } catch (const vdm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.fp16.safetensors"), std::string::npos) << e.what();
  }
}

TEST(CLIPTextModel, LegacyEosTwoPoolsAtLargestId) {
  auto c = tiny_config();
  c.eos_token_id = 2;
  at::manual_seed(4);
  vdm::text::CLIPTextModel model(c);
  model->eval();
  at::NoGradGuard no_grad;
  at::Tensor ids = at::tensor({1, 30, 2, 35, 2, 0}, at::kLong).view({1, 6});
  auto out = model->forward(ids);
  EXPECT_EQ(vdm::test::max_abs_diff(out.pooler_output[0], out.last_hidden_state[0][3]), 0.0);
}

TEST(CLIPTextModel, StrictLoadingAcceptsOnlyPositionIds) {
  at::manual_seed(5);
  vdm::text::CLIPTextModel model(tiny_config());
  const std::string dir = vdm::test::make_temp_dir("clip-strict");
  vdm::text::save_clip_text_model(model, dir);
  const std::string weights = (fs::path(dir) / "model.safetensors").string();
  auto tensors = vdm::io::load_safetensors(weights);

  tensors["text_model.embeddings.position_ids"] = at::arange(12, at::kLong).view({1, 12});
  vdm::io::save_safetensors(weights, tensors);
  EXPECT_NO_THROW(vdm::text::load_clip_text_model(dir));

  tensors["text_projection.weight"] = at::zeros({16, 16});
  vdm::io::save_safetensors(weights, tensors);
  EXPECT_THROW(vdm::text::load_clip_text_model(dir), vdm::WeightsError);

  tensors.erase("text_projection.weight");
  tensors.erase("text_model.final_layer_norm.bias");
  vdm::io::save_safetensors(weights, tensors);
  EXPECT_THROW(vdm::text::load_clip_text_model(dir), vdm::WeightsError);
}

TEST(CLIPTextModel, RejectsBadConfigAndInputs) {
  auto c = tiny_config();
  c.num_attention_heads = 3;
  EXPECT_THROW(c.validate(), vdm::ConfigError);
  c = tiny_config();
  c.hidden_act = "swish";
  EXPECT_THROW(c.validate(), vdm::ConfigError);
  vdm::text::CLIPTextModel model(tiny_config());
  at::NoGradGuard no_grad;
  EXPECT_THROW(model->forward(at::zeros({1, 13}, at::kLong)), vdm::InputError);
}

}  // namespace
