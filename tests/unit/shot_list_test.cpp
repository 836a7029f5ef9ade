// Shot lists: parsing, defaults, derived seeds, relative paths, every kind of error with its line
// number, the JSON form, and shard assignment.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "batch/batch_runner.h"
#include "batch/sha256.h"
#include "batch/shard.h"
#include "batch/shot_list.h"
#include "core/error.h"
#include "tests/support/test_support.h"

namespace fs = std::filesystem;
using vdm::batch::parse_shot_list;
using vdm::batch::Shot;
using vdm::batch::ShotList;

namespace {

// Parses `text` expecting a ConfigError; returns its message.
std::string error_of(const std::string& text, const std::string& base = "/tmp") {
  try {
    parse_shot_list(text, "shots.yaml", base);
  } catch (const vdm::ConfigError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected ConfigError, got: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected ConfigError for:\n" << text;
  return {};
}

void write(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << s;
}

}  // namespace

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(vdm::batch::sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(vdm::batch::sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(vdm::batch::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // One million 'a', fed in uneven pieces to exercise the buffering.
  vdm::batch::Sha256 h;
  std::string chunk(997, 'a');
  size_t left = 1000000;
  while (left > 0) {
    size_t n = std::min(left, chunk.size());
    h.update(chunk.data(), n);
    left -= n;
  }
  EXPECT_EQ(h.hex_digest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(ShotList, ParsesShotsWithDefaultsAndDerivedSeeds) {
  const std::string text =
      "defaults:\n"
      "  frames: 8\n"
      "  negative_prompt: blurry\n"
      "  guidance: 7.5\n"
      "shots:\n"
      "  - id: intro\n"
      "    prompt: a red circle moving right\n"
      "    seed: 42\n"
      "  - id: outro\n"
      "    prompt: a blue square\n"
      "    frames: 12\n"
      "    fps: 12\n"
      "    width: 64\n"
      "    height: 48\n"
      "    steps: 10\n"
      "    sampler: ddim\n"
      "    t2v_mode: joint\n"
      "    output: last.webm\n";
  ShotList list = parse_shot_list(text, "shots.yaml", "/tmp");
  ASSERT_EQ(list.shots.size(), 2u);
  const Shot& a = list.shots[0];
  EXPECT_EQ(a.id, "intro");
  EXPECT_EQ(a.prompt, "a red circle moving right");
  EXPECT_EQ(a.negative_prompt, "blurry");
  EXPECT_EQ(a.seed, 42u);
  EXPECT_FALSE(a.seed_derived);
  EXPECT_EQ(a.frames, 8);
  EXPECT_DOUBLE_EQ(a.guidance, 7.5);
  EXPECT_EQ(a.steps, vdm::batch::ShotDefaults::kSteps);
  EXPECT_EQ(a.output, "intro.mp4");
  EXPECT_EQ(a.line, 6);
  EXPECT_EQ(a.mode(), Shot::Mode::kGenerate);
  const Shot& b = list.shots[1];
  EXPECT_TRUE(b.seed_derived);
  EXPECT_EQ(b.seed, vdm::batch::derive_seed("outro"));
  EXPECT_EQ(b.frames, 12);
  EXPECT_EQ(b.fps, 12);
  EXPECT_EQ(b.width, 64);
  EXPECT_EQ(b.height, 48);
  EXPECT_EQ(b.steps, 10);
  EXPECT_EQ(b.sampler, "ddim");
  EXPECT_EQ(b.t2v_mode, "joint");
  EXPECT_EQ(a.t2v_mode, "");  // the model's default
  EXPECT_EQ(b.output, "last.webm");
  EXPECT_EQ(b.index, 1u);
  // Derived seeds depend only on the id: stable across runs, different across ids.
  EXPECT_EQ(vdm::batch::derive_seed("outro"), vdm::batch::derive_seed("outro"));
  EXPECT_NE(vdm::batch::derive_seed("outro"), vdm::batch::derive_seed("intro"));
  EXPECT_LT(vdm::batch::derive_seed("outro"), 1ull << 32);
}

TEST(ShotList, UnknownKeyWithSuggestionAndLine) {
  std::string msg = error_of(
      "shots:\n"
      "  - id: a\n"
      "    prompt: x\n"
      "  - id: b\n"
      "    promt: y\n");
  EXPECT_NE(msg.find("shots.yaml:5: shot 'b': unknown key 'promt' (did you mean 'prompt'?)"),
            std::string::npos)
      << msg;
  // The missing prompt of the same shot is reported too.
  EXPECT_NE(msg.find("shots.yaml:4: shot 'b': missing 'prompt'"), std::string::npos) << msg;
  // Keys with no close match list the known ones; unknown top-level keys are caught as well.
  msg = error_of("shots:\n  - id: a\n    prompt: x\n    colour: red\nshot_list: 1\n");
  EXPECT_NE(msg.find("shots.yaml:4: shot 'a': unknown key 'colour' (known keys: id, prompt"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("shots.yaml:5: unknown key 'shot_list'"), std::string::npos) << msg;
  msg = error_of("defaults:\n  frame: 8\n  id: x\nshots:\n  - id: a\n    prompt: x\n");
  EXPECT_NE(msg.find("shots.yaml:2: defaults: unknown key 'frame' (did you mean 'frames'?)"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("shots.yaml:3: defaults: 'id' cannot be set in defaults"), std::string::npos)
      << msg;
}

TEST(ShotList, DuplicateIdsAndKeys) {
  std::string msg = error_of(
      "shots:\n"
      "  - id: a\n"
      "    prompt: x\n"
      "  - id: b\n"
      "    prompt: y\n"
      "  - id: a\n"
      "    prompt: z\n"
      "    prompt: w\n");
  EXPECT_NE(msg.find("shots.yaml:6: shot 'a': duplicate id 'a' (first used at line 2)"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("shots.yaml:8: shot 'a': duplicate key 'prompt' (first at line 7)"),
            std::string::npos)
      << msg;
  // Two shots writing the same output file.
  msg = error_of("shots:\n  - id: a\n    prompt: x\n  - id: b\n    prompt: y\n    output: a.mp4\n");
  EXPECT_NE(msg.find("shots.yaml:6: shot 'b': output 'a.mp4' is also written by shot 'a'"),
            std::string::npos)
      << msg;
}

TEST(ShotList, WrongTypes) {
  std::string msg = error_of(
      "shots:\n"
      "  - id: a\n"
      "    prompt: [one, two]\n"
      "    frames: ten\n"
      "    guidance: {a: 1}\n"
      "    seed: \"12\"\n"
      "    steps: 2.5\n"
      "    width:\n"
      "  - just a string\n");
  EXPECT_NE(msg.find("shots.yaml:3: shot 'a': key 'prompt': expected a string, got a list"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("shots.yaml:4: shot 'a': key 'frames': expected an integer, got 'ten'"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("shots.yaml:5: shot 'a': key 'guidance': expected a number, got a mapping"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("shots.yaml:6: shot 'a': key 'seed': expected a non-negative integer, got "
                     "the string \"12\""),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("shots.yaml:7: shot 'a': key 'steps': expected an integer, got '2.5'"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("shots.yaml:8: shot 'a': key 'width': expected an integer, got nothing"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("shots.yaml:9: shot #2: expected a mapping with 'id' and 'prompt', got "
                     "'just a string'"),
            std::string::npos)
      << msg;
  // Everything is reported in one error, counted.
  EXPECT_NE(msg.find("has 7 problems"), std::string::npos) << msg;
  msg = error_of("shots: {id: a}\n");
  EXPECT_NE(msg.find("shots.yaml:1: shots: expected a list of shots, got a mapping"),
            std::string::npos)
      << msg;
}

TEST(ShotList, OutOfRangeValues) {
  std::string msg = error_of(
      "defaults:\n"
      "  steps: 0\n"
      "shots:\n"
      "  - id: a\n"
      "    prompt: x\n"
      "    frames: 0\n"
      "    fps: -3\n"
      "    width: 100\n"
      "    height: 100000\n"
      "    guidance: 1000\n"
      "    seed: -1\n"
      "  - id: b\n"
      "    prompt: y\n"
      "    frames: 5000\n"
      "    strength: 0.5\n"
      "  - id: c\n"
      "    prompt: z\n"
      "    t2v_mode: both\n"
      "  - id: d\n"
      "    prompt: w\n"
      "    image: still.png\n"
      "    t2v_mode: joint\n");
  for (const char* expected : {
           "shots.yaml:2: defaults: key 'steps': 0 is out of range; expected 1 to 1000",
           "shots.yaml:6: shot 'a': key 'frames': 0 is out of range; expected 1 to 1024",
           "shots.yaml:7: shot 'a': key 'fps': -3 is out of range",
           "shots.yaml:8: shot 'a': key 'width': 100 is not a multiple of 8; use 96 or 104",
           "shots.yaml:9: shot 'a': key 'height': 100000 is out of range",
           "shots.yaml:10: shot 'a': key 'guidance': 1000 is out of range; expected 0 to 100",
           "shots.yaml:11: shot 'a': key 'seed': -1 is out of range",
           "shots.yaml:14: shot 'b': key 'frames': 5000 is out of range",
           "shots.yaml:15: shot 'b': key 'strength' applies only to shots with 'image' or 'video'",
           "shots.yaml:18: shot 'c': key 't2v_mode': 'both' is not a mode; expected joint or factorized",
           "shots.yaml:22: shot 'd': key 't2v_mode' applies only to text-to-video shots (without 'image' or 'video')",
       }) {
    EXPECT_NE(msg.find(expected), std::string::npos) << "missing: " << expected << "\nin:\n" << msg;
  }
}

TEST(ShotList, BadSyntaxAndStructure) {
  std::string msg = error_of(
      "shots:\n"
      "  - id: a\n"
      "    prompt: [unclosed\n"
      "  - id: b\n");
  EXPECT_NE(msg.find("shots.yaml:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("invalid YAML/JSON syntax"), std::string::npos) << msg;
  msg = error_of("shots:\n  - id: a\n    prompt: x\n   bad_indent: 1\n");
  EXPECT_NE(msg.find("shots.yaml:4: invalid YAML/JSON syntax"), std::string::npos) << msg;
  EXPECT_NE(error_of("").find("the file is empty"), std::string::npos);
  EXPECT_NE(error_of("- a\n- b\n").find("shots.yaml:1: expected a mapping with 'shots:'"),
            std::string::npos);
  EXPECT_NE(error_of("defaults:\n  frames: 8\n").find("missing 'shots:'"), std::string::npos);
  EXPECT_NE(error_of("shots: []\n").find("shots.yaml:1: shots: the list is empty"),
            std::string::npos);
}

TEST(ShotList, MissingPromptAndIdAndBadIds) {
  std::string msg = error_of(
      "shots:\n"
      "  - id: a\n"
      "    seed: 1\n"
      "  - prompt: no id here\n"
      "  - id: has space\n"
      "    prompt: x\n"
      "  - id: ok\n"
      "    prompt: \"\"\n");
  EXPECT_NE(msg.find("shots.yaml:2: shot 'a': missing 'prompt'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("shots.yaml:4: shot #2: missing 'id'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("shots.yaml:5: shot 'has space': id 'has space' is not usable"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("shots.yaml:8: shot 'ok': key 'prompt' is empty"), std::string::npos) << msg;
  // A default prompt satisfies every shot.
  ShotList list = parse_shot_list("defaults:\n  prompt: p\nshots:\n  - id: a\n", "s.yaml", "/tmp");
  EXPECT_EQ(list.shots.at(0).prompt, "p");
}

TEST(ShotList, OutputNames) {
  std::string msg = error_of(
      "shots:\n"
      "  - {id: a, prompt: x, output: sub/a.mp4}\n"
      "  - {id: b, prompt: x, output: b.avi}\n"
      "  - {id: c, prompt: x, output: .c.mp4}\n"
      "  - {id: d, prompt: x, output: manifest.jsonl}\n");
  EXPECT_NE(msg.find("shots.yaml:2: shot 'a': key 'output': 'sub/a.mp4' must be a file name"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("shots.yaml:3: shot 'b': key 'output': 'b.avi' has extension '.avi'"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("shots.yaml:4: shot 'c': key 'output': '.c.mp4' starts with '.'"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("shots.yaml:5: shot 'd': key 'output': 'manifest.jsonl' is reserved"),
            std::string::npos)
      << msg;
}

TEST(ShotList, JsonFormWithLineNumbers) {
  const std::string json = R"({
  "defaults": {"frames": 4, "fps": 6},
  "shots": [
    {"id": "a", "prompt": "one", "seed": 3},
    {"id": "b", "prompt": "two", "steps": 5}
  ]
})";
  ShotList list = parse_shot_list(json, "shots.json", "/tmp");
  ASSERT_EQ(list.shots.size(), 2u);
  EXPECT_EQ(list.shots[0].frames, 4);
  EXPECT_EQ(list.shots[0].seed, 3u);
  EXPECT_EQ(list.shots[1].fps, 6);
  EXPECT_EQ(list.shots[1].steps, 5);
  EXPECT_EQ(list.shots[1].line, 5);

  const std::string bad = R"({
  "shots": [
    {"id": "a", "prompt": "one"},
    {"id": "b", "prompt": "two", "frames": "8"},
    {"id": "a", "prompt": "three", "sed": 1}
  ]
})";
  std::string msg = error_of(bad);
  EXPECT_NE(msg.find("shots.yaml:4: shot 'b': key 'frames': expected an integer, got the string "
                     "\"8\""),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("shots.yaml:5: shot 'a': unknown key 'sed' (did you mean 'seed'?)"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("shots.yaml:5: shot 'a': duplicate id 'a' (first used at line 3)"),
            std::string::npos)
      << msg;
  msg = error_of("{\"shots\": [{\"id\": \"a\", \"prompt\": \"x\"}\n");
  EXPECT_NE(msg.find("invalid YAML/JSON syntax"), std::string::npos) << msg;
}

TEST(ShotList, RelativePathsResolveAgainstTheListFolder) {
  const std::string dir = vdm::test::make_temp_dir("shotlist");
  write(fs::path(dir) / "lists" / "stills" / "circle.png", "png");
  write(fs::path(dir) / "clips" / "take.mp4", "mp4");
  const std::string list_path = (fs::path(dir) / "lists" / "shots.yaml").string();
  write(list_path,
        "shots:\n"
        "  - id: still\n"
        "    prompt: drift\n"
        "    image: stills/circle.png\n"
        "  - id: restyle\n"
        "    prompt: watercolor\n"
        "    video: ../clips/take.mp4\n"
        "    strength: 0.6\n"
        "  - id: missing\n"
        "    prompt: x\n"
        "    image: stills/nope.png\n");
  try {
    vdm::batch::load_shot_list(list_path);
    FAIL() << "expected an error for the missing image";
  } catch (const vdm::ConfigError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(list_path + ":11: shot 'missing': image 'stills/nope.png' not found "
                                   "(looked for " +
                       (fs::path(dir) / "lists" / "stills" / "nope.png").string() + ")"),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("has 1 problem;"), std::string::npos) << msg;
  }
  // Without the broken shot the list loads and the paths are absolute.
  std::string text;
  {
    std::ifstream in(list_path);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  text = text.substr(0, text.find("  - id: missing"));
  write(list_path, text);
  ShotList list = vdm::batch::load_shot_list(list_path);
  ASSERT_EQ(list.shots.size(), 2u);
  EXPECT_EQ(list.shots[0].image, (fs::path(dir) / "lists" / "stills" / "circle.png").string());
  EXPECT_EQ(list.shots[0].mode(), Shot::Mode::kAnimate);
  EXPECT_EQ(list.shots[1].video, (fs::path(dir) / "clips" / "take.mp4").string());
  EXPECT_EQ(list.shots[1].mode(), Shot::Mode::kRestyle);
  EXPECT_DOUBLE_EQ(list.shots[1].strength, 0.6);
  EXPECT_EQ(list.dir, (fs::path(dir) / "lists").string());
  fs::remove_all(dir);
  EXPECT_THROW(vdm::batch::load_shot_list(list_path), vdm::InputError);
}

// `lora:` names one or more LoRAs for a shot (FILE[:STRENGTH], comma-separated), relative to the
// list's folder; a folder means the LoRA file inside it; defaults give every shot theirs. Missing
// files and bad strengths are problems with their line, like missing images.
TEST(ShotList, LoraKeyResolvesFilesAndStrengths) {
  const std::string dir = vdm::test::make_temp_dir("shotlist_lora");
  write(fs::path(dir) / "loras" / "a.safetensors", "x");
  write(fs::path(dir) / "loras" / "big" / "pytorch_lora_weights.safetensors", "x");
  ShotList list = parse_shot_list(
      "defaults:\n  lora: loras/a.safetensors\n"
      "shots:\n  - {id: one, prompt: p}\n  - {id: two, prompt: p, lora: 'loras/big:0.5, loras/a.safetensors:-1'}\n",
      "shots.yaml", dir);
  ASSERT_EQ(list.shots.size(), 2u);
  ASSERT_EQ(list.shots[0].loras.size(), 1u);
  EXPECT_EQ(list.shots[0].loras[0].path, (fs::path(dir) / "loras" / "a.safetensors").string());
  EXPECT_DOUBLE_EQ(list.shots[0].loras[0].strength, 1.0);
  ASSERT_EQ(list.shots[1].loras.size(), 2u);
  EXPECT_EQ(list.shots[1].loras[0].path, (fs::path(dir) / "loras" / "big" / "pytorch_lora_weights.safetensors").string());
  EXPECT_DOUBLE_EQ(list.shots[1].loras[0].strength, 0.5);
  EXPECT_DOUBLE_EQ(list.shots[1].loras[1].strength, -1.0);

  const std::string msg = error_of(
      "shots:\n  - {id: a, prompt: p, lora: loras/none.safetensors}\n"
      "  - {id: b, prompt: p, lora: 'loras/a.safetensors:inf'}\n"
      "  - {id: c, prompt: p, lora: 'loras/a.safetensors,'}\n",
      dir);
  for (const char* expected : {"shots.yaml:2: shot 'a': key 'lora': LoRA file", "none.safetensors' does not exist",
                               "shots.yaml:3: shot 'b': key 'lora': LoRA 'loras/a.safetensors:inf': strength 'inf' is not a finite number",
                               "shots.yaml:4: shot 'c': key 'lora': LoRA list 'loras/a.safetensors,' has an empty entry"})
    EXPECT_NE(msg.find(expected), std::string::npos) << expected << "\n" << msg;
}

TEST(ShotList, ContextKeysSetFrameWindowsPerShot) {
  ShotList list = parse_shot_list(
      "defaults:\n  context_frames: 16\n"
      "shots:\n  - {id: one, prompt: p, frames: 64}\n  - {id: two, prompt: p, context_stride: 8}\n"
      "  - {id: three, prompt: p, context_frames: 0}\n",
      "shots.yaml", "/tmp");
  ASSERT_EQ(list.shots.size(), 3u);
  EXPECT_EQ(list.shots[0].context_frames, 16);
  EXPECT_EQ(list.shots[0].context_stride, 4);
  EXPECT_EQ(list.shots[1].context_frames, 16);
  EXPECT_EQ(list.shots[1].context_stride, 8);
  EXPECT_EQ(list.shots[2].context_frames, 0);
  EXPECT_EQ(parse_shot_list("shots:\n  - {id: a, prompt: p}\n", "shots.yaml", "/tmp").shots[0].context_frames, 0);

  const std::string msg = error_of(
      "shots:\n  - {id: a, prompt: p, context_frames: 1}\n"
      "  - {id: b, prompt: p, context_frames: 8, context_stride: 9}\n"
      "  - {id: c, prompt: p, context_stride: 0}\n"
      "  - {id: d, prompt: p, context_frames: many}\n",
      "/tmp");
  for (const char* expected : {"shots.yaml:2: shot 'a': key 'context_frames': 1 is out of range; expected 0 (off) or 2 to 1024",
                               "shots.yaml:3: shot 'b': key 'context_stride': 9 is more than context_frames 8",
                               "shots.yaml:4: shot 'c': key 'context_stride': 0 is out of range; expected 1 to 1024",
                               "shots.yaml:5: shot 'd': key 'context_frames': expected an integer"})
    EXPECT_NE(msg.find(expected), std::string::npos) << expected << "\n" << msg;
}

TEST(ShotList, GuidanceRescaleKey) {
  ShotList list = parse_shot_list("defaults:\n  guidance_rescale: 0.7\nshots:\n  - {id: a, prompt: p}\n"
                                  "  - {id: b, prompt: p, guidance_rescale: 0}\n",
                                  "shots.yaml", "/tmp");
  EXPECT_DOUBLE_EQ(list.shots[0].guidance_rescale, 0.7);
  EXPECT_DOUBLE_EQ(list.shots[1].guidance_rescale, 0.0);
  const std::string msg = error_of("shots:\n  - {id: a, prompt: p, guidance_rescale: 1.2}\n");
  EXPECT_NE(msg.find("shots.yaml:2: shot 'a': key 'guidance_rescale': 1.2 is out of range; expected 0 to 1"),
            std::string::npos)
      << msg;
}

TEST(ShotList, DeepCacheKeysAreReadAndRecorded) {
  ShotList list = parse_shot_list("defaults:\n  deep_cache: 3\nshots:\n  - {id: a, prompt: p}\n"
                                  "  - {id: b, prompt: p, deep_cache: 0, deep_cache_branch: 2}\n",
                                  "shots.yaml", "/tmp");
  EXPECT_EQ(list.shots[0].deep_cache, 3);
  EXPECT_EQ(list.shots[0].deep_cache_branch, 0);
  EXPECT_EQ(list.shots[1].deep_cache, 0);
  EXPECT_EQ(list.shots[1].deep_cache_branch, 2);
  // The manifest's settings carry them when they change the render, so a change renders again.
  auto settings = vdm::batch::shot_settings(list.shots[0]);
  EXPECT_EQ(settings.at("deep_cache"), 3);
  EXPECT_EQ(settings.at("deep_cache_branch"), 0);
  list.shots[0].deep_cache_branch = 1;
  EXPECT_NE(vdm::batch::shot_settings(list.shots[0]), settings);
  EXPECT_FALSE(vdm::batch::shot_settings(list.shots[1]).contains("deep_cache"));
  const std::string msg = error_of("shots:\n  - {id: a, prompt: p, deep_cache: -1}\n"
                                   "  - {id: b, prompt: p, deep_cache_branch: -2}\n");
  for (const char* expected : {"shots.yaml:2: shot 'a': key 'deep_cache': -1 is out of range; expected 0 (off) to 1000",
                               "shots.yaml:3: shot 'b': key 'deep_cache_branch': -2 is out of range; expected 0 or more"})
    EXPECT_NE(msg.find(expected), std::string::npos) << expected << "\n" << msg;
}

TEST(ShotList, FreeUKeyIsReadCheckedAndRecorded) {
  ShotList list = parse_shot_list("defaults:\n  freeu: b1=1.2,b2=1.4,s1=0.9,s2=0.2\nshots:\n  - {id: a, prompt: p}\n"
                                  "  - {id: b, prompt: p, freeu: 'b1=1,b2=1,s1=0.5,s2=0.5'}\n",
                                  "shots.yaml", "/tmp");
  ASSERT_TRUE(list.shots[0].freeu.has_value());
  EXPECT_EQ(*list.shots[0].freeu, (vdm::models::FreeU{1.2, 1.4, 0.9, 0.2}));
  EXPECT_EQ(*list.shots[1].freeu, (vdm::models::FreeU{1, 1, 0.5, 0.5}));
  // Recorded in the manifest's settings: changing a factor renders the shot again.
  auto settings = vdm::batch::shot_settings(list.shots[0]);
  EXPECT_EQ(settings.at("freeu"), "b1=1.2,b2=1.4,s1=0.9,s2=0.2");
  list.shots[0].freeu->s2 = 0.3;
  EXPECT_NE(vdm::batch::shot_settings(list.shots[0]), settings);
  list.shots[0].freeu.reset();
  EXPECT_FALSE(vdm::batch::shot_settings(list.shots[0]).contains("freeu"));
  const std::string msg = error_of("shots:\n  - {id: a, prompt: p, freeu: 'b1=1.2,b2=1.4'}\n"
                                   "  - {id: b, prompt: p, freeu: 'b1=1,b2=1,s1=1,s2=0'}\n");
  for (const char* expected : {"shots.yaml:2: shot 'a': key 'freeu' 'b1=1.2,b2=1.4': s1 is missing",
                               "shots.yaml:3: shot 'b': key 'freeu' 'b1=1,b2=1,s1=1,s2=0': s2 must be a positive number"})
    EXPECT_NE(msg.find(expected), std::string::npos) << expected << "\n" << msg;
}

TEST(ShotList, FreeInitKeyIsReadCheckedAndRecorded) {
  const std::string dir = vdm::test::make_temp_dir("shots_free_init");
  { std::ofstream(dir + "/clip.mp4") << "x"; }
  ShotList list = parse_shot_list("defaults:\n  free_init: 3\nshots:\n  - {id: a, prompt: p}\n"
                                  "  - {id: b, prompt: p, free_init: 0}\n"
                                  "  - {id: c, prompt: p, video: clip.mp4, extend: 8}\n",
                                  "shots.yaml", dir);
  EXPECT_EQ(list.shots[0].free_init, 3);
  EXPECT_EQ(list.shots[1].free_init, 0);
  EXPECT_EQ(list.shots[2].free_init, 3);  // an extension samples its new frames from noise
  auto settings = vdm::batch::shot_settings(list.shots[0]);
  EXPECT_EQ(settings.at("free_init"), 3);
  EXPECT_FALSE(vdm::batch::shot_settings(list.shots[1]).contains("free_init"));
  const std::string msg = error_of("shots:\n  - {id: a, prompt: p, free_init: 11}\n"
                                   "  - {id: b, prompt: p, video: clip.mp4, free_init: 2}\n",
                                   dir);
  for (const char* expected : {"shots.yaml:2: shot 'a': key 'free_init': 11 is out of range; expected 0 (off) to 10",
                               "shots.yaml:3: shot 'b': key 'free_init': FreeInit samples from pure noise, and a "
                               "restyled shot starts from its video"})
    EXPECT_NE(msg.find(expected), std::string::npos) << expected << "\n" << msg;
}

TEST(ShotList, PromptAtKeysAreMappingsOfFramesToPrompts) {
  ShotList list = parse_shot_list("defaults:\n  frames: 16\n  prompt_at: {8: a blue circle}\nshots:\n"
                                  "  - {id: a, prompt: a red circle}\n"
                                  "  - id: b\n    prompt: a red circle\n    prompt_at:\n      4: a red circle\n"
                                  "      12: a green circle\n    negative_prompt_at: {15: blurry}\n",
                                  "shots.yaml", "/tmp");
  EXPECT_EQ(list.shots[0].prompt_at, (std::map<int64_t, std::string>{{8, "a blue circle"}}));
  EXPECT_EQ(list.shots[1].prompt_at, (std::map<int64_t, std::string>{{4, "a red circle"}, {12, "a green circle"}}));
  EXPECT_EQ(list.shots[1].negative_prompt_at, (std::map<int64_t, std::string>{{15, "blurry"}}));
  // Recorded in the manifest's settings: changing a keyframe renders the shot again.
  auto settings = vdm::batch::shot_settings(list.shots[1]);
  EXPECT_EQ(settings.at("prompt_at").at("12"), "a green circle");
  list.shots[1].prompt_at[12] = "a cyan circle";
  EXPECT_NE(vdm::batch::shot_settings(list.shots[1]), settings);
  const std::string msg = error_of("shots:\n  - {id: a, prompt: p, prompt_at: a blue circle}\n"
                                   "  - {id: b, prompt: p, prompt_at: {0: x}}\n"
                                   "  - {id: c, prompt: p, frames: 8, prompt_at: {8: x}}\n");
  for (const char* expected :
       {"shots.yaml:2: shot 'a': key 'prompt_at': expected a mapping of frame numbers to prompts",
        "shots.yaml:3: shot 'b': key 'prompt_at': 0 is out of range; expected frames 1 to 1023 (frame 0 takes 'prompt')",
        "shots.yaml:4: shot 'c': key 'prompt_at': frame 8 is past the shot's last frame 7"})
    EXPECT_NE(msg.find(expected), std::string::npos) << expected << "\n" << msg;
}

TEST(ShotList, ExtendKeyContinuesVideoShotsOnly) {
  const std::string dir = vdm::test::make_temp_dir("extend_key");
  std::ofstream(dir + "/clip.mp4") << "x";
  ShotList list = parse_shot_list("shots:\n  - {id: a, prompt: p, video: clip.mp4, extend: 8}\n"
                                  "  - {id: b, prompt: p, video: clip.mp4}\n",
                                  "shots.yaml", dir);
  EXPECT_EQ(list.shots[0].mode(), Shot::Mode::kExtend);
  EXPECT_EQ(list.shots[0].extend, 8);
  EXPECT_EQ(vdm::batch::shot_settings(list.shots[0]).at("extend"), 8);
  EXPECT_EQ(list.shots[1].mode(), Shot::Mode::kRestyle);
  EXPECT_FALSE(vdm::batch::shot_settings(list.shots[1]).contains("extend"));
  // The batch's --prompt-weights is part of a shot's settings: turning it on renders the shot again.
  EXPECT_FALSE(vdm::batch::shot_settings(list.shots[1]).contains("prompt_weights"));
  list.shots[1].prompt_weights = true;
  EXPECT_EQ(vdm::batch::shot_settings(list.shots[1]).at("prompt_weights"), true);
  const std::string msg = error_of("shots:\n  - {id: a, prompt: p, extend: 8}\n"
                                   "  - {id: b, prompt: p, video: clip.mp4, extend: 0}\n",
                                   dir);
  for (const char* expected : {"shots.yaml:2: shot 'a': key 'extend' applies only to shots with 'video'",
                               "shots.yaml:3: shot 'b': key 'extend': 0 is out of range; expected 1 to 1023 frames to add"})
    EXPECT_NE(msg.find(expected), std::string::npos) << expected << "\n" << msg;
}

TEST(ShotList, ClosestMatch) {
  const auto& keys = vdm::batch::shot_keys();
  EXPECT_EQ(vdm::batch::closest_match("promt", keys), "prompt");
  EXPECT_EQ(vdm::batch::closest_match("negative_promt", keys), "negative_prompt");
  EXPECT_EQ(vdm::batch::closest_match("heigth", keys), "height");
  EXPECT_EQ(vdm::batch::closest_match("xyzzy", keys), "");
}

// --- sharding -----------------------------------------------------------------------------------

TEST(Shard, CompleteDisjointAndStableUnderReordering) {
  std::vector<std::string> ids;
  for (int i = 0; i < 200; ++i) ids.push_back("shot_" + std::to_string(i));
  for (int n : {1, 2, 3, 7}) {
    std::map<std::string, int> owner;
    std::vector<int> per_shard(n, 0);
    for (int k = 0; k < n; ++k) {
      vdm::batch::Shard shard = vdm::batch::parse_shard(std::to_string(k + 1) + "/" +
                                                        std::to_string(n));
      for (const auto& id : ids) {
        if (!shard.contains(id)) continue;
        EXPECT_EQ(owner.count(id), 0u) << id << " in two shards";
        owner[id] = k;
        ++per_shard[k];
      }
    }
    EXPECT_EQ(owner.size(), ids.size()) << "shards of " << n << " do not cover every shot";
    for (int k = 0; k < n; ++k) EXPECT_GT(per_shard[k], 200 / n / 3) << "shard " << k << "/" << n;
    // Reordering the list does not move any shot.
    std::vector<std::string> shuffled = ids;
    std::mt19937 rng(5);
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    for (const auto& id : shuffled) EXPECT_EQ(vdm::batch::shard_of(id, n), owner[id]);
  }
  // Through the parser: the same shots in another order land on the same shards.
  ShotList a = parse_shot_list("shots:\n  - {id: x1, prompt: p}\n  - {id: x2, prompt: p}\n"
                               "  - {id: x3, prompt: p}\n",
                               "a.yaml", "/tmp");
  ShotList b = parse_shot_list("shots:\n  - {id: x3, prompt: p}\n  - {id: x1, prompt: p}\n"
                               "  - {id: x2, prompt: p}\n",
                               "b.yaml", "/tmp");
  for (const auto& s : a.shots) {
    auto it = std::find_if(b.shots.begin(), b.shots.end(),
                           [&](const Shot& t) { return t.id == s.id; });
    ASSERT_NE(it, b.shots.end());
    EXPECT_EQ(vdm::batch::shard_of(s.id, 3), vdm::batch::shard_of(it->id, 3));
    EXPECT_EQ(s.seed, it->seed);
  }
}

TEST(Shard, ParseAndNames) {
  vdm::batch::Shard s = vdm::batch::parse_shard("2/3");
  EXPECT_EQ(s.index, 1);
  EXPECT_EQ(s.count, 3);
  EXPECT_EQ(s.label(), "2/3");
  EXPECT_EQ(s.manifest_name(), "manifest.shard-2-of-3.jsonl");
  EXPECT_EQ(vdm::batch::parse_shard("1/1").manifest_name(), "manifest.jsonl");
  for (const char* bad : {"0/3", "4/3", "3", "a/b", "1/0", "-1/2", "1/3x", ""})
    EXPECT_THROW(vdm::batch::parse_shard(bad), vdm::InputError) << bad;
}

TEST(Shard, FromEnvironment) {
  auto env = [](std::map<std::string, std::string> vars) {
    return [vars = std::move(vars)](const char* name) -> const char* {
      auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  };
  using vdm::batch::shard_from_environment;
  EXPECT_FALSE(shard_from_environment(env({})).sharded());
  auto s = shard_from_environment(env({{"SLURM_ARRAY_TASK_ID", "2"},
                                       {"SLURM_ARRAY_TASK_COUNT", "4"},
                                       {"SLURM_ARRAY_TASK_MIN", "0"}}));
  EXPECT_EQ(s.index, 2);
  EXPECT_EQ(s.count, 4);
  EXPECT_EQ(s.origin, "Slurm array");
  // --array=1-4: task 1 is the first shard.
  s = shard_from_environment(env({{"SLURM_ARRAY_TASK_ID", "1"},
                                  {"SLURM_ARRAY_TASK_COUNT", "4"},
                                  {"SLURM_ARRAY_TASK_MIN", "1"}}));
  EXPECT_EQ(s.index, 0);
  EXPECT_THROW(shard_from_environment(env({{"SLURM_ARRAY_TASK_ID", "1"}})), vdm::InputError);
  EXPECT_THROW(shard_from_environment(env({{"SLURM_ARRAY_TASK_ID", "4"},
                                           {"SLURM_ARRAY_TASK_COUNT", "3"},
                                           {"SLURM_ARRAY_TASK_STEP", "2"}})),
               vdm::InputError);
  EXPECT_THROW(shard_from_environment(env({{"SLURM_ARRAY_TASK_ID", "x"},
                                           {"SLURM_ARRAY_TASK_COUNT", "3"}})),
               vdm::InputError);
  s = shard_from_environment(env({{"JOB_COMPLETION_INDEX", "0"}, {"VDM_SHARD_COUNT", "3"}}));
  EXPECT_EQ(s.index, 0);
  EXPECT_EQ(s.count, 3);
  EXPECT_EQ(s.origin, "Kubernetes Indexed Job");
  EXPECT_THROW(shard_from_environment(env({{"JOB_COMPLETION_INDEX", "0"}})), vdm::InputError);
  EXPECT_THROW(shard_from_environment(env({{"JOB_COMPLETION_INDEX", "3"},
                                           {"VDM_SHARD_COUNT", "3"}})),
               vdm::InputError);
}
