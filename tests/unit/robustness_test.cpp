// Bad input and faults at the library level (docs/robustness.md): the memory guard's estimate and
// its message, weights with NaN/Inf or the wrong dtype, config values of the wrong type or out
// of range, and the inputs the fuzz targets (tests/fuzz) found, kept as regression tests.
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "batch/shot_list.h"
#include "core/error.h"
#include "io/json_config.h"
#include "io/tensor_io.h"
#include "pipelines/memory_guard.h"
#include "tests/support/test_support.h"
#include "text/bpe_trainer.h"
#include "text/clip_tokenizer.h"

namespace fs = std::filesystem;
using vdm::pipelines::MemoryJob;
using vdm::pipelines::MemoryModel;

namespace {

// ModelScope text-to-video 1.7B's shapes (UNet3D 320..1280, VAE 128..512, CLIP ViT-H text).
MemoryModel modelscope_like() {
  MemoryModel m;
  m.latent_channels = 4;
  m.unet_in_channels = 4;
  m.unet_block_out_channels = {320, 640, 1280, 1280};
  m.unet_layers_per_block = 2;
  m.unet_heads = {64, 64, 64, 64};
  m.vae_factor = 8;
  m.vae_block_out_channels = {128, 256, 512, 512};
  m.text_length = 77;
  m.text_dim = 1024;
  m.activation_bytes = 4;
  m.attention_score_budget = int64_t(1) << 24;
  return m;
}

MemoryJob job(int64_t frames, int64_t width, int64_t height, bool guidance = true, int64_t decode_chunk = 0) {
  MemoryJob j;
  j.frames = frames;
  j.width = width;
  j.height = height;
  j.guidance = guidance;
  j.decode_chunk = decode_chunk;
  return j;
}

template <typename E, typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "(no error)";
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

}  // namespace

// ---- the memory guard ----------------------------------------------------------------------------

TEST(MemoryGuard, EstimateGrowsWithFramesSizeAndGuidance) {
  const MemoryModel m = modelscope_like();
  const auto base = vdm::pipelines::estimate_memory(m, job(16, 256, 256));
  const auto more_frames = vdm::pipelines::estimate_memory(m, job(32, 256, 256));
  const auto larger = vdm::pipelines::estimate_memory(m, job(16, 512, 512));
  const auto no_guidance = vdm::pipelines::estimate_memory(m, job(16, 256, 256, false));
  EXPECT_GT(more_frames.total(), base.total());
  EXPECT_GT(larger.total(), base.total());
  EXPECT_GT(more_frames.unet, base.unet);
  EXPECT_GT(larger.unet, 3 * base.unet);  // 4x the pixels
  // Classifier-free guidance runs the UNet on a batch of two.
  EXPECT_NEAR(static_cast<double>(base.unet) / static_cast<double>(no_guidance.unet), 2.0, 1e-6);
  EXPECT_LT(no_guidance.total(), base.total());
  // Every part is there and the total is the latents plus the larger phase.
  EXPECT_GT(base.latents, 0u);
  EXPECT_GT(base.attention, 0u);
  EXPECT_GT(base.decode, 0u);
  const uint64_t peak = base.latents + std::max(base.unet + base.attention, base.decode);
  EXPECT_NEAR(static_cast<double>(base.overhead), 0.15 * static_cast<double>(peak), 1.0);
  EXPECT_EQ(base.total(), peak + base.overhead);
  // Attention scores are chunked: bounded by the budget (scores, softmax, one temporary).
  EXPECT_LE(base.attention, 3u * 4u * (uint64_t(1) << 24));
  // The right order of magnitude for 16 float32 frames at 256x256 through a 1.7B UNet: the 32
  // latent images of 32x32 at 320 channels alone take 42 MiB per tensor.
  EXPECT_GT(base.total(), uint64_t(512) << 20);
  EXPECT_LT(base.total(), uint64_t(8) << 30);
}

// Frame windows (--context-frames): the temporal transformers hold each frame once per window that
// covers it, and attend over pairs of frames within a window only.
TEST(MemoryGuard, FrameWindowsCountTheirCopiesAndTheirPairs) {
  MemoryModel m = modelscope_like();
  auto windowed = [](int64_t frames, int64_t length, int64_t stride) {
    MemoryJob j = job(frames, 256, 256);
    j.window_length = length;
    j.window_stride = stride;
    return j;
  };
  const auto plain = vdm::pipelines::estimate_memory(m, job(64, 256, 256));
  // Windows of 16 every 4 hold each frame about 4 times: 6 tensors per copy outgrow the level's 20.
  const auto overlapping = vdm::pipelines::estimate_memory(m, windowed(64, 16, 4));
  EXPECT_GT(overlapping.unet, plain.unet);
  // Windows side by side hold each frame once: the block's usual working set is the larger.
  EXPECT_EQ(vdm::pipelines::estimate_memory(m, windowed(64, 16, 16)).unet, plain.unet);
  // A clip no longer than a window is not split.
  const auto whole = vdm::pipelines::estimate_memory(m, windowed(16, 16, 4));
  EXPECT_EQ(whole.total(), vdm::pipelines::estimate_memory(m, job(16, 256, 256)).total());
  // Without a score budget the temporal attention of a long clip of small frames dominates the scores;
  // windows cut it: 1,024 frames, 253 windows of 16 (every 4), 64,768 pairs per sequence instead of
  // 1,048,576 (the spatial attention of 8x8 latents takes 2,048 x 4,096 per head).
  m.attention_score_budget = 0;
  MemoryJob small = windowed(1024, 16, 4);
  small.width = small.height = 64;
  const auto long_windowed = vdm::pipelines::estimate_memory(m, small);
  const auto long_plain = vdm::pipelines::estimate_memory(m, job(1024, 64, 64));
  EXPECT_LT(long_windowed.attention * 10, long_plain.attention);
}

TEST(MemoryGuard, DecodeChunkOnlyChangesTheDecodePhase) {
  const MemoryModel m = modelscope_like();
  const auto one = vdm::pipelines::estimate_memory(m, job(24, 576, 320, true, 1));
  const auto eight = vdm::pipelines::estimate_memory(m, job(24, 576, 320, true, 8));
  EXPECT_EQ(one.unet, eight.unet);
  EXPECT_EQ(one.attention, eight.attention);
  EXPECT_GT(eight.decode, one.decode);
  EXPECT_EQ(one.decode_chunk, 1);
  EXPECT_EQ(eight.decode_chunk, 8);
  // Automatic: about 1.5 GB of decoder activations per call, never more frames than the clip.
  const auto automatic = vdm::pipelines::estimate_memory(m, job(24, 576, 320));
  EXPECT_EQ(automatic.decode_chunk, vdm::pipelines::auto_decode_chunk(m, 576, 320));
  // 6 float32 tensors of 512 channels per frame: 2.3 GB at 576x320 (one frame), 50 MB at 64x64.
  EXPECT_EQ(vdm::pipelines::auto_decode_chunk(m, 576, 320), 1);
  EXPECT_EQ(vdm::pipelines::auto_decode_chunk(m, 64, 64), 29);
  EXPECT_EQ(vdm::pipelines::estimate_memory(m, job(2, 64, 64)).decode_chunk, 2);
}

TEST(MemoryGuard, RefusesWithOneLineNamingTheSettingToLower) {
  const MemoryModel m = modelscope_like();
  const MemoryJob big = job(64, 512, 512);
  const auto est = vdm::pipelines::estimate_memory(m, big);
  // Enough memory: no error; 0 = no check.
  EXPECT_NO_THROW(vdm::pipelines::check_memory(m, big, est.total(), "--max-memory"));
  EXPECT_NO_THROW(vdm::pipelines::check_memory(m, big, 0, "--max-memory"));

  const uint64_t limit = est.total() / 4;
  const std::string msg = error_of<vdm::InputError>(
      [&] { vdm::pipelines::check_memory(m, big, limit, "--max-memory"); });
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_NE(msg.find("not enough memory for this render"), std::string::npos) << msg;
  EXPECT_NE(msg.find(vdm::pipelines::format_bytes(est.total())), std::string::npos) << msg;
  EXPECT_NE(msg.find(vdm::pipelines::format_bytes(limit) + " is available (--max-memory)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lower --frames (now 64; at most "), std::string::npos) << msg;
  // The frame count it proposes does fit, one more does not.
  const size_t at = msg.find("at most ") + 8;
  const int64_t fit = std::stoll(msg.substr(at));
  ASSERT_GE(fit, 1);
  ASSERT_LT(fit, 64);
  EXPECT_LE(vdm::pipelines::estimate_memory(m, job(fit, 512, 512)).total(), limit);
  EXPECT_GT(vdm::pipelines::estimate_memory(m, job(fit + 1, 512, 512)).total(), limit);

  // Nothing fits at this size: the size is the setting to lower.
  const std::string tiny = error_of<vdm::InputError>(
      [&] { vdm::pipelines::check_memory(m, big, 1 << 20, "--max-memory"); });
  EXPECT_NE(tiny.find("lower --width/--height (now 512x512; not even 1 frame fits"), std::string::npos) << tiny;
}

TEST(MemoryGuard, DecodeBoundJobsAreToldToLowerTheDecodeChunk) {
  // A small UNet with a wide VAE at a large size: decoding dominates.
  MemoryModel m = modelscope_like();
  m.unet_block_out_channels = {32, 64};
  m.unet_heads = {4, 4};
  const MemoryJob j = job(16, 1024, 1024, false, 16);
  const auto est = vdm::pipelines::estimate_memory(m, j);
  ASSERT_TRUE(est.decode_dominates());
  const auto at2 = vdm::pipelines::estimate_memory(m, job(16, 1024, 1024, false, 2));
  const std::string msg = error_of<vdm::InputError>(
      [&] { vdm::pipelines::check_memory(m, j, at2.total(), "free memory on this machine"); });
  EXPECT_NE(msg.find("lower --decode-chunk (now 16; 2 fits)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("is available (free memory on this machine)"), std::string::npos) << msg;
}

TEST(MemoryGuard, ParsesSizesAndRejectsNonsense) {
  using vdm::pipelines::parse_memory_size;
  EXPECT_EQ(parse_memory_size("0"), 0u);
  EXPECT_EQ(parse_memory_size("1048576"), 1048576u);
  EXPECT_EQ(parse_memory_size("512M"), 512ull << 20);
  EXPECT_EQ(parse_memory_size("8G"), 8ull << 30);
  EXPECT_EQ(parse_memory_size("8g"), 8ull << 30);
  EXPECT_EQ(parse_memory_size("1.5GiB"), 3ull << 29);
  EXPECT_EQ(parse_memory_size("64KB"), 64ull << 10);
  EXPECT_EQ(parse_memory_size("2T"), 2ull << 40);
  for (const char* bad : {"", "lots", "-1G", "8X", "1.2.3G", "G", "1e9", "99999999999T"}) {
    SCOPED_TRACE(bad);
    const std::string msg = error_of<vdm::InputError>([&] { parse_memory_size(bad); });
    EXPECT_NE(msg.find("--max-memory"), std::string::npos) << msg;
    EXPECT_NE(msg.find("expected a size such as 8G"), std::string::npos) << msg;
  }
  EXPECT_EQ(vdm::pipelines::format_bytes(512), "512 B");
  EXPECT_EQ(vdm::pipelines::format_bytes(3ull << 29), "1.5 GiB");
}

TEST(MemoryGuard, ReadsTheMachinesFreeMemory) {
  const uint64_t available = vdm::pipelines::available_host_memory();
  EXPECT_GT(available, uint64_t(16) << 20);  // every machine that runs the tests has this much
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  ASSERT_TRUE(in >> key >> kib);
  ASSERT_EQ(key, "MemTotal:");
  EXPECT_LE(available, kib * 1024);
}

// ---- weights -------------------------------------------------------------------------------------

TEST(WeightsLoading, NanOrInfWeightsAreReportedWithKeyAndFile) {
  const std::string dir = vdm::test::make_temp_dir("nan-weights");
  torch::nn::Linear linear(3, 2);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    vdm::io::TensorMap t = vdm::io::state_dict(*linear);
    t["weight"] = t["weight"].clone();
    t["weight"][1][2] = bad;
    const std::string path = dir + "/w.safetensors";
    vdm::io::save_safetensors(path, t);
    const std::string msg = error_of<vdm::WeightsError>([&] { vdm::io::load_module_weights(*linear, path); });
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("'weight' contains NaN or Inf values"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("'bias'"), std::string::npos) << msg;
  }
  // Half-precision files are checked the same way.
  vdm::io::TensorMap t = vdm::io::state_dict(*linear, at::kHalf);
  t["bias"] = at::full({2}, std::numeric_limits<float>::infinity()).to(at::kHalf);
  vdm::io::save_safetensors(dir + "/h.safetensors", t);
  EXPECT_NE(error_of<vdm::WeightsError>([&] { vdm::io::load_module_weights(*linear, dir + "/h.safetensors"); })
                .find("'bias' contains NaN or Inf"),
            std::string::npos);
  // Nothing was copied into the module by the failed loads.
  EXPECT_TRUE(at::isfinite(linear->weight).all().item<bool>());
  EXPECT_TRUE(at::isfinite(linear->bias).all().item<bool>());
}

TEST(WeightsLoading, IntegerTensorsForFloatWeightsAreADtypeMismatch) {
  const std::string dir = vdm::test::make_temp_dir("dtype-weights");
  torch::nn::Linear linear(3, 2);
  vdm::io::TensorMap t = vdm::io::state_dict(*linear);
  t["weight"] = at::ones({2, 3}, at::kInt);
  t["bias"] = at::ones({2}, at::kBool);
  vdm::io::save_safetensors(dir + "/w.safetensors", t);
  const std::string msg = error_of<vdm::WeightsError>(
      [&] { vdm::io::load_module_weights(*linear, dir + "/w.safetensors"); });
  EXPECT_NE(msg.find("2 problems"), std::string::npos) << msg;
  EXPECT_NE(msg.find("dtype mismatch for 'weight': expected floating-point values, got Int"), std::string::npos) << msg;
  EXPECT_NE(msg.find("dtype mismatch for 'bias': expected floating-point values, got Bool"), std::string::npos) << msg;
  // Float widths convert: a float16 file loads into a float32 module.
  vdm::io::save_safetensors(dir + "/h.safetensors", vdm::io::state_dict(*linear, at::kHalf));
  EXPECT_NO_THROW(vdm::io::load_module_weights(*linear, dir + "/h.safetensors"));
}

// ---- configs -------------------------------------------------------------------------------------

TEST(JsonConfigRobustness, NonFiniteAndHugeNumbersAreNotIntegers) {
  // A fuzz_json_config finding (docs/robustness.md): a non-finite or huge number asked for as an
  // integer must be a ConfigError, never a conversion of a double that int64 cannot hold.
  auto cfg = vdm::io::JsonConfig::parse(
      R"({"a": -Infinity, "b": NaN, "c": 1e300, "d": 18446744073709551615, "e": 4.0, "f": 4.5,
          "g": [1, 18446744073709551615], "h": 9223372036854775807, "i": -9223372036854775808})",
      "cfg.json");
  for (const char* key : {"a", "b", "c", "d", "f"}) {
    SCOPED_TRACE(key);
    const std::string msg = error_of<vdm::ConfigError>([&] { cfg.get_int(key); });
    EXPECT_NE(msg.find(std::string("cfg.json: key '") + key + "' must be an integer"), std::string::npos) << msg;
    EXPECT_THROW(cfg.get_int_or_list(key, 3), vdm::ConfigError);
  }
  EXPECT_EQ(error_of<vdm::ConfigError>([&] { cfg.get_int("a"); }),
            "cfg.json: key 'a' must be an integer, got number -Infinity");
  EXPECT_EQ(error_of<vdm::ConfigError>([&] { cfg.get_int("b"); }), "cfg.json: key 'b' must be an integer, got number NaN");
  EXPECT_EQ(cfg.get_int("e"), 4);
  EXPECT_EQ(cfg.get_int("h"), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(cfg.get_int("i"), std::numeric_limits<int64_t>::min());
  EXPECT_NE(error_of<vdm::ConfigError>([&] { cfg.get_int_list("g"); }).find("key 'g' must be a list of integers"),
            std::string::npos);
  EXPECT_EQ(cfg.get_int_or_list("e", 3), (std::vector<int64_t>{4, 4, 4}));
  EXPECT_TRUE(std::isinf(cfg.get_double("a")));
}

TEST(JsonConfigRobustness, WrongTypesNameTheFileKeyExpectedAndGot) {
  auto cfg = vdm::io::JsonConfig::parse(
      R"({"layers_per_block": "two", "block_out_channels": [32, "64"], "act_fn": 3, "flag": 1})", "unet/config.json");
  EXPECT_EQ(error_of<vdm::ConfigError>([&] { cfg.get_int("layers_per_block"); }),
            "unet/config.json: key 'layers_per_block' must be an integer, got string \"two\"");
  EXPECT_EQ(error_of<vdm::ConfigError>([&] { cfg.get_int_list("block_out_channels"); }),
            "unet/config.json: key 'block_out_channels' must be a list of integers, got array [32,\"64\"]");
  EXPECT_EQ(error_of<vdm::ConfigError>([&] { cfg.get_string("act_fn", "silu"); }),
            "unet/config.json: key 'act_fn' must be a string, got number 3");
  EXPECT_EQ(error_of<vdm::ConfigError>([&] { cfg.get_bool("flag"); }),
            "unet/config.json: key 'flag' must be true or false, got number 1");
  EXPECT_EQ(error_of<vdm::ConfigError>([&] { cfg.get_int("missing"); }),
            "unet/config.json: required key 'missing' is missing");
  EXPECT_NE(error_of<vdm::ConfigError>([&] { vdm::io::JsonConfig::parse("[1, 2]", "x.json"); })
                .find("x.json: expected a JSON object at the top level, got array"),
            std::string::npos);
  EXPECT_NE(error_of<vdm::ConfigError>([&] { vdm::io::JsonConfig::parse("{\"a\": ", "x.json"); })
                .find("x.json: not valid JSON"),
            std::string::npos);
}

// ---- shot lists (regressions found by fuzz_shot_list) -----------------------------------------------

TEST(ShotListRobustness, StrayCommaIsASyntaxErrorNotAnEndlessLoop) {
  // yaml-cpp 0.7's LoadAll yields the same empty document forever on these inputs, until memory
  // runs out; the shot list parser reads documents one at a time instead.
  for (const std::string text : {",3", ",[3", "shots:\n  - id: a\n    prompt: p\n...\n,b\n", "- a\n,b"}) {
    SCOPED_TRACE(text);
    const auto t0 = std::chrono::steady_clock::now();
    const std::string msg = error_of<vdm::ConfigError>([&] { vdm::batch::parse_shot_list(text, "s.yaml", "."); });
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
    EXPECT_NE(msg.find("invalid YAML/JSON syntax: unexpected ','"), std::string::npos) << msg;
    EXPECT_NE(msg.find("nothing was rendered"), std::string::npos) << msg;
  }
  // Several real documents are still reported as such.
  const std::string multi = error_of<vdm::ConfigError>(
      [&] { vdm::batch::parse_shot_list("shots:\n  - {id: a, prompt: p}\n---\nshots: []\n", "s.yaml", "."); });
  EXPECT_NE(multi.find("s.yaml:3: 2 YAML documents"), std::string::npos) << multi;
}

TEST(ShotListRobustness, BlockFlowAndAnchoredMappingsParse) {
  // A fuzz_shot_list finding under AddressSanitizer: keys must not be read through references into a
  // temporary. Block, flow and JSON mappings, anchors and aliases all go through that code.
  const auto list = vdm::batch::parse_shot_list(
      "defaults: &d {steps: 3, frames: 4}\n"
      "shots:\n"
      "  - {id: a, prompt: p}\n"
      "  - id: b\n"
      "    prompt: q\n"
      "    seed: 18446744073709551615\n",
      "s.yaml", ".");
  ASSERT_EQ(list.shots.size(), 2u);
  EXPECT_EQ(list.shots[0].steps, 3);
  EXPECT_EQ(list.shots[1].frames, 4);
  EXPECT_EQ(list.shots[1].seed, 18446744073709551615ull);
}

TEST(ShotListRobustness, DefaultsWithBothImageAndVideoAreRefused) {
  // fuzz_shot_list checks that no accepted shot has both an image and a video; defaults that set
  // both would give every shot both (docs/robustness.md).
  const fs::path dir = vdm::test::make_temp_dir("shots-both");
  write_text(dir / "still.png", "png");
  write_text(dir / "clip.mp4", "mp4");
  const std::string msg = error_of<vdm::ConfigError>([&] {
    vdm::batch::parse_shot_list("defaults:\n  image: still.png\n  video: clip.mp4\nshots:\n  - {id: a, prompt: p}\n",
                                "s.yaml", dir.string());
  });
  EXPECT_NE(msg.find("s.yaml:3: defaults: sets both 'image' and 'video'"), std::string::npos) << msg;
  // A shot may still override one default input with the other kind.
  const auto list = vdm::batch::parse_shot_list(
      "defaults:\n  image: still.png\nshots:\n  - {id: a, prompt: p}\n  - {id: b, prompt: q, video: clip.mp4}\n",
      "s.yaml", dir.string());
  ASSERT_EQ(list.shots.size(), 2u);
  EXPECT_EQ(list.shots[0].mode(), vdm::batch::Shot::Mode::kAnimate);
  EXPECT_EQ(list.shots[1].mode(), vdm::batch::Shot::Mode::kRestyle);
  EXPECT_TRUE(list.shots[1].image.empty());
}

// ---- tokenizer files (regressions) -------------------------------------------------------------

TEST(TokenizerRobustness, BadSpecialTokenEntriesAreConfigErrors) {
  const fs::path dir = vdm::test::make_temp_dir("tok-bad");
  vdm::text::write_clip_tokenizer({{"r", "e"}}, dir.string());
  fs::remove(dir / "special_tokens_map.json");  // it would override the tokens set below
  // An empty special token must not reach the token-id lookup (std::out_of_range).
  write_text(dir / "tokenizer_config.json", R"({"bos_token": ""})");
  std::string msg = error_of<vdm::ConfigError>([&] { vdm::text::ClipTokenizer::load(dir.string()); });
  EXPECT_NE(msg.find("bos_token is an empty string"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir.string()), std::string::npos) << msg;
  // A flag of the wrong type must not escape as nlohmann::json::type_error.
  write_text(dir / "tokenizer_config.json", R"({"pad_token": {"content": "!", "lstrip": "yes"}})");
  msg = error_of<vdm::ConfigError>([&] { vdm::text::ClipTokenizer::load(dir.string()); });
  EXPECT_NE(msg.find("tokenizer_config.json: \"pad_token\".lstrip must be true or false, got \"yes\""),
            std::string::npos)
      << msg;
  write_text(dir / "tokenizer_config.json", R"({"added_tokens_decoder": {"7": {"content": "x", "special": 1}}})");
  msg = error_of<vdm::ConfigError>([&] { vdm::text::ClipTokenizer::load(dir.string()); });
  EXPECT_NE(msg.find("\"added_tokens_decoder.7\".special must be true or false"), std::string::npos) << msg;
}
