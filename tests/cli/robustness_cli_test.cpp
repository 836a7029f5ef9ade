// Bad input and faults as a user meets them, through the `vdm` command on the reference fixture
// model (docs/robustness.md): partial or corrupt model folders, weights with NaN, wrong config
// types, unknown schedulers, corrupt inputs, sizes out of range, long prompts, the memory guard,
// an unwritable output folder, a full disk, and SIGINT mid-render. Each bad input exits with the
// documented code and one error line, and leaves no output file behind.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <thread>

#include "tests/support/test_support.h"

extern char** environ;

namespace fs = std::filesystem;
using vdm::test::run_command;

namespace {

#ifdef VDM_WITH_FFMPEG
constexpr bool kHaveCodecs = true;
#else
constexpr bool kHaveCodecs = false;
#endif

std::string fixture_model() {
  std::string root = vdm::test::diffusers_tiny_root();
  return root.empty() ? root : root + "/t2v_pipeline";
}

#define REQUIRE_MODEL(var)                                                                        \
  if (!kHaveCodecs) GTEST_SKIP() << "built without FFmpeg: vdm cannot write video";               \
  const std::string var = fixture_model();                                                        \
  if (var.empty()) GTEST_SKIP() << "reference fixtures not found (VDM_FIXTURES)"

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::string generate_cmd(const std::string& model, const std::string& out, const std::string& extra = "") {
  return fmt::format("{} --threads 2 generate --model '{}' --prompt 'a panda eating bamboo' --frames 6 "
                     "--width 32 --height 32 --steps 2 --seed 3 --progress none {} --output '{}'",
                     vdm::test::vdm_binary(), model, extra, out);
}

// A copy of the fixture model made of symbolic links, one per file, so that a test can replace
// single files without copying the weights it does not touch.
std::string linked_model(const std::string& model, const std::string& dest) {
  for (const auto& e : fs::recursive_directory_iterator(model)) {
    const fs::path rel = fs::relative(e.path(), model);
    if (e.is_directory()) fs::create_directories(fs::path(dest) / rel);
    else fs::create_symlink(e.path(), fs::path(dest) / rel);
  }
  return dest;
}

// Replaces a linked file by a real copy that the test may modify.
std::string own_copy(const std::string& dir, const std::string& rel) {
  const fs::path p = fs::path(dir) / rel;
  const fs::path target = fs::read_symlink(p);
  fs::remove(p);
  fs::copy_file(target, p);
  fs::permissions(p, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add);
  return p.string();
}

// Runs vdm expecting a bad-input failure: exit code `code`, "vdm: error: " once, `expect` in it,
// and nothing at `output`. Returns the output.
std::string expect_refused(const std::string& cmd, int code, const std::string& expect, const std::string& output) {
  std::string log;
  EXPECT_EQ(run_command(cmd, &log), code) << log;
  EXPECT_NE(log.find(expect), std::string::npos) << "expected: " << expect << "\n" << log;
  const size_t at = log.find("vdm: error: ");
  EXPECT_NE(at, std::string::npos) << log;
  if (at != std::string::npos) {
    EXPECT_EQ(log.find("vdm: error: ", at + 1), std::string::npos) << "more than one error line\n" << log;
    // The error is one line: the message ends at the first newline, which ends the output.
    const size_t nl = log.find('\n', at);
    EXPECT_TRUE(nl == std::string::npos || nl + 1 == log.size()) << "error spans lines\n" << log;
  }
  EXPECT_FALSE(fs::exists(output)) << output;
  return log;
}

// A PNG whose header says 0x0 pixels (chunks with valid CRCs, so only the size is wrong).
std::string zero_size_png() {
  auto crc32 = [](const std::string& bytes) {
    uint32_t c = 0xffffffffu;
    for (unsigned char b : bytes) {
      c ^= b;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return c ^ 0xffffffffu;
  };
  auto be32 = [](uint32_t v) {
    return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                       static_cast<char>(v)};
  };
  auto chunk = [&](const std::string& type, const std::string& data) {
    return be32(static_cast<uint32_t>(data.size())) + type + data + be32(crc32(type + data));
  };
  const std::string ihdr = be32(0) + be32(0) + std::string("\x08\x02\x00\x00\x00", 5);
  const std::string empty_zlib("\x78\x9c\x03\x00\x00\x00\x00\x01", 8);
  return std::string("\x89PNG\r\n\x1a\n", 8) + chunk("IHDR", ihdr) + chunk("IDAT", empty_zlib) + chunk("IEND", "");
}

std::vector<std::string> leftovers(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  return out;
}

using vdm::test::spawn_vdm;
using vdm::test::wait_exit;

class RobustnessCli : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = vdm::test::make_temp_dir("robust"); }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

}  // namespace

// ---- the memory guard ----------------------------------------------------------------------------

TEST_F(RobustnessCli, MaxMemoryTooSmallIsRefusedBeforeRenderingAndANormalLimitPasses) {
  REQUIRE_MODEL(model);
  std::string log = expect_refused(generate_cmd(model, path("small.mp4"), "--max-memory 1M"), 2,
                                   "not enough memory for this render: it needs about", path("small.mp4"));
  EXPECT_NE(log.find("but 1.0 MiB is available (--max-memory); lower --"), std::string::npos) << log;
  EXPECT_NE(log.find("(--max-memory 0 turns this check off)"), std::string::npos) << log;
  EXPECT_TRUE(leftovers(dir_).empty());

  expect_refused(generate_cmd(model, path("bad.mp4"), "--max-memory lots"), 2, "--max-memory lots: expected a size",
                 path("bad.mp4"));

  ASSERT_EQ(run_command(generate_cmd(model, path("ok.mp4"), "--max-memory 8G"), &log), 0) << log;
  EXPECT_TRUE(fs::is_regular_file(path("ok.mp4")));
  ASSERT_EQ(run_command(generate_cmd(model, path("off.mp4"), "--max-memory 0"), &log), 0) << log;
  EXPECT_TRUE(fs::is_regular_file(path("off.mp4")));
}

TEST_F(RobustnessCli, BatchReportsShotsThatDoNotFitBeforeAnythingRenders) {
  REQUIRE_MODEL(model);
  write_text(path("shots.yaml"),
             "defaults:\n  frames: 2\n  steps: 1\n  guidance: 1\nshots:\n"
             "  - id: small\n    prompt: a red circle\n"
             "  - id: long\n    prompt: a blue square\n    frames: 64\n");
  const std::string cmd = fmt::format("{} --threads 2 batch {} --out {} --model {} --progress none --max-memory ",
                                      vdm::test::vdm_binary(), path("shots.yaml"), path("out"), model);
  // The fixture model needs about 14 MiB for two frames at its native 32x32, 240 MiB for 64.
  std::string log;
  EXPECT_EQ(run_command(cmd + "64M", &log), 2) << log;
  EXPECT_NE(log.find("shots.yaml:8: shot 'long': not enough memory for this render"), std::string::npos) << log;
  EXPECT_NE(log.find("lower --frames (now 64; at most"), std::string::npos) << log;
  EXPECT_EQ(log.find("shot 'small': not enough memory"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(path("out/small.mp4")));
  EXPECT_FALSE(fs::exists(path("out/long.mp4")));
}

// ---- model folders and weights -------------------------------------------------------------------

TEST_F(RobustnessCli, PartialModelFoldersNameWhatIsMissing) {
  REQUIRE_MODEL(model);
  const std::string out = path("o.mp4");
  const std::string m1 = linked_model(model, path("no-weights"));
  fs::remove(m1 + "/vae/diffusion_pytorch_model.safetensors");
  expect_refused(generate_cmd(m1, out), 2,
                 "incomplete model folder: vae/ has no safetensors weights (expected "
                 "diffusion_pytorch_model.safetensors)",
                 out);
  const std::string m2 = linked_model(model, path("no-text-encoder"));
  fs::remove_all(m2 + "/text_encoder");
  fs::remove(m2 + "/tokenizer/merges.txt");
  expect_refused(generate_cmd(m2, out), 2, "folder 'text_encoder/' is missing; tokenizer/merges.txt is missing", out);
  const std::string m3 = linked_model(model, path("no-index"));
  fs::remove(m3 + "/model_index.json");
  expect_refused(generate_cmd(m3, out), 2, "model_index.json not found", out);
  write_text(m3 + "/model_index.json", "{\"unet\": \"UNet3DConditionModel\"}");
  expect_refused(generate_cmd(m3, out), 2, "key 'unet' must be a [library, class] pair", out);
}

TEST_F(RobustnessCli, TruncatedAndCorruptSafetensorsAreWeightsErrors) {
  REQUIRE_MODEL(model);
  const std::string out = path("o.mp4");
  const std::string m = linked_model(model, path("model"));
  const std::string unet = own_copy(m, "unet/diffusion_pytorch_model.safetensors");
  fs::resize_file(unet, fs::file_size(unet) / 2);
  expect_refused(generate_cmd(m, out), 2, "out of range: the data buffer has", out);
  {  // a header length past the end of the file
    std::fstream f(unet, std::ios::in | std::ios::out | std::ios::binary);
    const char huge[8] = {'\xff', '\xff', '\xff', '\x7f', 0, 0, 0, 0};
    f.write(huge, 8);
  }
  expect_refused(generate_cmd(m, out), 2, "header length 2147483647 runs past the end of the file", out);
  fs::resize_file(unet, 5);
  expect_refused(generate_cmd(m, out), 2, "truncated safetensors file: 5 bytes", out);
}

TEST_F(RobustnessCli, NanInWeightsIsDetectedAtLoadAndNamed) {
  REQUIRE_MODEL(model);
  const std::string out = path("o.mp4");
  const std::string m = linked_model(model, path("model"));
  const std::string vae = own_copy(m, "vae/diffusion_pytorch_model.safetensors");
  // The file offset of one float32 weight of the decoder: 8 + header length + data_offsets[0].
  const std::string key = "decoder.conv_out.weight";
  size_t offset = 0;
  {
    std::ifstream in(vae, std::ios::binary);
    uint8_t len[8];
    in.read(reinterpret_cast<char*>(len), 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
    std::string header(n, '\0');
    in.read(header.data(), static_cast<std::streamsize>(n));
    const auto entry = nlohmann::json::parse(header).at(key);
    ASSERT_EQ(entry.at("dtype").get<std::string>(), "F32");
    offset = 8 + n + entry.at("data_offsets").at(0).get<size_t>();
  }
  {
    std::fstream f(vae, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(offset));
    const float nan = std::numeric_limits<float>::quiet_NaN();
    f.write(reinterpret_cast<const char*>(&nan), 4);
  }
  const std::string log = expect_refused(generate_cmd(m, out), 2, "'" + key + "' contains NaN or Inf values", out);
  EXPECT_NE(log.find(vae + ": weights hold values a model cannot use (1 problem)"), std::string::npos) << log;
  EXPECT_NE(log.find("download or export it again"), std::string::npos) << log;
}

TEST_F(RobustnessCli, ConfigsThatDoNotMatchOrHaveWrongTypes) {
  REQUIRE_MODEL(model);
  const std::string out = path("o.mp4");
  const std::string m = linked_model(model, path("model"));
  const std::string unet_cfg = own_copy(m, "unet/config.json");
  const std::string original = read_text(unet_cfg);
  auto with = [&](const std::string& from, const std::string& to) {
    std::string text = original;
    const size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) text.replace(at, from.size(), to);
    write_text(unet_cfg, text);
  };
  with("\"layers_per_block\": 1", "\"layers_per_block\": \"two\"");
  expect_refused(generate_cmd(m, out), 2, "key 'layers_per_block' must be an integer, got string \"two\"", out);
  // A shape the weights do not have: every mismatch is named with expected and got.
  with("\"layers_per_block\": 1", "\"layers_per_block\": 2");
  expect_refused(generate_cmd(m, out), 2, "unet/diffusion_pytorch_model.safetensors: weights do not match the model config", out);
  with("\"norm_num_groups\": 8", "\"norm_num_groups\": 7");
  expect_refused(generate_cmd(m, out), 2, "is not a positive multiple of norm_num_groups 7", out);
  write_text(unet_cfg, original);

  const std::string sched = own_copy(m, "scheduler/scheduler_config.json");
  std::string text = read_text(sched);
  text.replace(text.find("\"DDIMScheduler\""), 15, "\"WarpScheduler\"");
  write_text(sched, text);
  expect_refused(generate_cmd(m, out), 2, "WarpScheduler", out);
}

// ---- settings and inputs -------------------------------------------------------------------------

TEST_F(RobustnessCli, SizesFramesAndStepsOutOfRange) {
  REQUIRE_MODEL(model);
  const std::string out = path("o.mp4");
  expect_refused(generate_cmd(model, out, "--width 8192"), 2,
                 "--width 8192: must be a positive multiple of 4 (VAE factor 2 x UNet factor 2) up to 4096; use 4096",
                 out);
  expect_refused(generate_cmd(model, out, "--height 4098"), 2, "up to 4096; use 4096", out);
  expect_refused(generate_cmd(model, out, "--height 33"), 2, "--height 33: must be a positive multiple of", out);
  expect_refused(generate_cmd(model, out, "--frames 2000"), 2, "--frames 2000: must be between 1 and 1024", out);
  expect_refused(generate_cmd(model, out, "--steps 5000"), 2, "--steps 5000: must be between 1 and 1000", out);
  expect_refused(generate_cmd(model, out, "--frames many"), 2, "--frames", out);
}

TEST_F(RobustnessCli, CorruptEmptyAndMissingImagesAndVideos) {
  REQUIRE_MODEL(model);
  const std::string out = path("o.mp4");
  write_text(path("empty.png"), "");
  write_text(path("garbage.png"), std::string(2048, '\x5a'));
  write_text(path("empty.mp4"), "");
  write_text(path("garbage.mp4"), "not a video at all, just text");
  auto cmd = [&](const char* mode, const char* flag, const std::string& input) {
    return fmt::format("{} {} --model {} --prompt x {} {} --steps 1 --progress none --output {}",
                       vdm::test::vdm_binary(), mode, model, flag, input, out);
  };
  expect_refused(cmd("animate", "--image", path("empty.png")), 2, "empty.png: cannot read image: the file is empty", out);
  expect_refused(cmd("animate", "--image", path("garbage.png")), 2, "garbage.png: opening the image failed", out);
  expect_refused(cmd("animate", "--image", dir_), 2, "Is a directory", out);
  write_text(path("zero.png"), zero_size_png());
  expect_refused(cmd("animate", "--image", path("zero.png")), 2, "zero.png: decoding the image failed", out);
  fs::create_directory(path("no-frames"));
  expect_refused(cmd("restyle", "--video", path("no-frames")), 2, "is a folder without frame_00000.png", out);
  expect_refused(cmd("restyle", "--video", path("empty.mp4")), 2, "empty.mp4", out);
  expect_refused(cmd("restyle", "--video", path("garbage.mp4")), 2, "garbage.mp4", out);
  expect_refused(cmd("restyle", "--video", path("missing.mp4")), 2, "missing.mp4", out);
}

TEST_F(RobustnessCli, LongPromptIsWarnedAndTruncatedAndStillRenders) {
  REQUIRE_MODEL(model);
  std::string prompt;
  for (int i = 0; i < 60; ++i) prompt += "red circle ";
  std::string log;
  const std::string cmd = fmt::format(
      "{} --threads 2 generate --model {} --prompt '{}' --frames 2 --width 32 --height 32 --steps 1 "
      "--progress none --output {}",
      vdm::test::vdm_binary(), model, prompt, path("long.mp4"));
  ASSERT_EQ(run_command(cmd, &log), 0) << log;
  EXPECT_NE(log.find("prompt is longer than the text encoder's 77 tokens: the last"), std::string::npos) << log;
  EXPECT_TRUE(fs::is_regular_file(path("long.mp4")));
}

// ---- output faults -------------------------------------------------------------------------------

TEST_F(RobustnessCli, UnwritableOutputFolderIsRefusedBeforeRendering) {
  REQUIRE_MODEL(model);
  std::string folder = path("locked");
  fs::create_directory(folder);
  fs::permissions(folder, fs::perms::owner_read | fs::perms::owner_exec);
  if (::access(folder.c_str(), W_OK) == 0) {
    // Root ignores permission bits; a read-only file system refuses root too.
    folder = "/proc/sys";
    if (::access(folder.c_str(), W_OK) == 0) GTEST_SKIP() << "no folder here refuses writes to this user";
  }
  expect_refused(generate_cmd(model, folder + "/o.mp4"), 2, "is not writable; choose another folder",
                 folder + "/o.mp4");
  fs::permissions(path("locked"), fs::perms::owner_all);
}

TEST_F(RobustnessCli, FullDiskWhileEncodingLeavesNoFile) {
  REQUIRE_MODEL(model);
  // A disk that fills up, simulated with the file-size limit: writes past 512 bytes fail with EFBIG
  // ("File too large") exactly as they would with ENOSPC. SIGXFSZ is ignored so that the write
  // fails instead of the signal ending the process; the shell passes both to vdm.
  const std::string out = path("full.mp4");
  std::string log;
  const int rc = run_command("sh -c \"trap '' XFSZ; ulimit -f 1; exec " + generate_cmd(model, out) + "\"", &log);
  EXPECT_EQ(rc, 1) << log;
  EXPECT_NE(log.find("File too large; free disk space or choose another output folder"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(leftovers(dir_).empty()) << fmt::format("{}", fmt::join(leftovers(dir_), ", "));
}

TEST_F(RobustnessCli, SigintMidRenderExits130AndLeavesNoFile) {
  REQUIRE_MODEL(model);
  const std::string out = path("clip.mp4");
  const std::string log_path = fmt::format("{}/../robust-sigint-{}.log", dir_, ::getpid());
  pid_t pid = spawn_vdm({"--threads", "1", "generate", "--model", model, "--prompt", "a red circle", "--frames", "4",
                         "--width", "32", "--height", "32", "--steps", "500", "--progress", "json", "--output", out},
                        log_path);
  ASSERT_GT(pid, 0);
  // Wait until denoising has started (a progress line), then interrupt.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  bool started = false;
  int status = 0;
  bool ended = false;
  while (std::chrono::steady_clock::now() < deadline && !started && !ended) {
    started = read_text(log_path).find("\"stage\":\"denoise\"") != std::string::npos;
    ended = !started && waitpid(pid, &status, WNOHANG) == pid;
    if (!started && !ended) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(started) << read_text(log_path);
  ::kill(pid, SIGINT);
  EXPECT_EQ(wait_exit(pid), 130) << read_text(log_path);
  const std::string log = read_text(log_path);
  EXPECT_NE(log.find("vdm: error: interrupted by signal 2"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(leftovers(dir_).empty()) << fmt::format("{}", fmt::join(leftovers(dir_), ", "));
  fs::remove(log_path);
}
