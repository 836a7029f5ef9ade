// `vdm batch` end to end, as real processes: outputs with the right frame counts (ffprobe), a
// complete manifest, resume, three shard processes into one folder, a process killed with SIGKILL
// mid-shot and resumed, SIGTERM, --concat, and shot-list errors with line numbers.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <thread>

#include "batch/manifest.h"
#include "batch/sha256.h"
#include "batch/shard.h"
#include "io/tensor_io.h"
#include "tests/support/test_support.h"

extern char** environ;

namespace fs = std::filesystem;
using vdm::test::run_command;

namespace {

// A small real model: the diffusers-written reference model when the fixtures are present.
std::string model_dir() {
  const char* env = std::getenv("VDM_BATCH_TEST_MODEL");
  if (env && *env) return env;
  std::string root = vdm::test::diffusers_tiny_root();
  return root.empty() ? root : root + "/t2v_pipeline";
}

#ifdef VDM_WITH_FFMPEG
constexpr bool kHaveCodecs = true;
#else
constexpr bool kHaveCodecs = false;
#endif

#define REQUIRE_MODEL(var)                                                                 \
  if (!kHaveCodecs) GTEST_SKIP() << "built without FFmpeg: vdm batch cannot write video";  \
  const std::string var = model_dir();                                                     \
  if (var.empty()) GTEST_SKIP() << "no model: reference fixtures not found (VDM_FIXTURES) " \
                                   "and VDM_BATCH_TEST_MODEL not set"

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Shots s0..s{n-1}: `frames` frames each at the model's native size, without classifier-free
// guidance (half the work: these tests are about the batch machinery, not the images).
// `steps_of(i)` gives each shot's denoising steps.
std::string shot_list(int n, int frames, const std::function<int(int)>& steps_of) {
  std::string s = fmt::format("defaults:\n  frames: {}\n  guidance: 1\n  fps: 8\nshots:\n", frames);
  for (int i = 0; i < n; ++i)
    s += fmt::format("  - id: s{}\n    prompt: shot {} of a red circle\n    steps: {}\n", i, i,
                     steps_of(i));
  return s;
}
std::string shot_list(int n, int frames, int steps) {
  return shot_list(n, frames, [steps](int) { return steps; });
}

// Shot s1 takes several steps so that a signal reliably lands while it renders.
int slow_second_shot(int i) { return i == 1 ? 10 : 1; }

std::string batch_cmd(const std::string& model, const std::string& list, const std::string& out,
                      const std::string& extra = "") {
  return fmt::format("{} --threads 2 batch {} --out {} --model {} --progress none {}",
                     vdm::test::vdm_binary(), list, out, model, extra);
}

int64_t ffprobe_frames(const std::string& path) {
  std::string out;
  int rc = run_command("ffprobe -v error -select_streams v:0 -count_frames -show_entries "
                       "stream=nb_read_frames -of csv=p=0 '" + path + "'",
                       &out);
  EXPECT_EQ(rc, 0) << out;
  return std::atoll(out.c_str());
}

std::vector<std::string> temp_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".tmp") out.push_back(e.path().filename().string());
  return out;
}

using vdm::test::spawn_vdm;
using vdm::test::wait_exit;

// Polls until `ready()` or the process ends or 120 s pass. Returns whether `ready()` held.
bool wait_until(pid_t pid, const std::function<bool()>& ready) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    if (ready()) return true;
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return false;  // ended (reaped) before ready
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

size_t done_count(const std::string& dir) {
  size_t n = 0;
  for (const auto& [id, r] : vdm::batch::read_manifests(dir).records) n += r.done();
  return n;
}

class BatchCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = vdm::test::make_temp_dir("batchcli");
    out_ = dir_ + "/out";
    list_ = dir_ + "/shots.yaml";
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  std::string dir_, out_, list_;
};

}  // namespace

// --lora applies to every shot and is recorded in each output's tags; a LoRA that does not fit the
// model stops the batch before anything renders (exit 2, no output, no manifest).
TEST_F(BatchCli, LoraForEveryShotCheckedBeforeRendering) {
  if (!kHaveCodecs) GTEST_SKIP() << "built without FFmpeg: vdm batch cannot write video";
  const std::string shapes = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  const std::string to_q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
  vdm::io::save_safetensors(dir_ + "/good.safetensors",
                            {{to_q + ".lora_A.weight", at::randn({2, 32})}, {to_q + ".lora_B.weight", at::randn({32, 2})}});
  vdm::io::save_safetensors(dir_ + "/bad.safetensors", {{to_q + ".lora_A.weight", at::randn({2, 32})}});
  write_text(list_, shot_list(1, 4, 1));
  std::string out;
  EXPECT_EQ(run_command(batch_cmd(shapes, list_, dir_ + "/bad", "--lora " + dir_ + "/bad.safetensors 2>&1"), &out), 2)
      << out;
  EXPECT_NE(out.find("has a down (A) but no up (B)"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir_ + "/bad/s0.mp4"));
  EXPECT_TRUE(vdm::batch::read_manifests(dir_ + "/bad").records.empty());

  ASSERT_EQ(run_command(batch_cmd(shapes, list_, out_, "--lora " + dir_ + "/good.safetensors:0.5 2>&1"), &out), 0) << out;
  auto lora_tag = [](const std::string& file) {
    std::string tags;
    EXPECT_EQ(run_command("ffprobe -v error -show_entries format_tags=lora -of csv=p=0 '" + file + "'", &tags), 0);
    return tags;
  };
  EXPECT_NE(lora_tag(out_ + "/s0.mp4").find(dir_ + "/good.safetensors:0.5"), std::string::npos);
  // The batch-wide LoRA is part of every shot's settings: the same one is up to date, another strength
  // or none renders again.
  ASSERT_EQ(run_command(batch_cmd(shapes, list_, out_, "--lora " + dir_ + "/good.safetensors:0.5 2>&1"), &out), 0) << out;
  EXPECT_NE(out.find("0 shots rendered, 1 up to date"), std::string::npos) << out;
  ASSERT_EQ(run_command(batch_cmd(shapes, list_, out_, "--lora " + dir_ + "/good.safetensors:0.25 2>&1"), &out), 0) << out;
  EXPECT_NE(out.find("1 shot rendered, 0 up to date"), std::string::npos) << out;
  EXPECT_NE(lora_tag(out_ + "/s0.mp4").find(dir_ + "/good.safetensors:0.25"), std::string::npos);
  ASSERT_EQ(run_command(batch_cmd(shapes, list_, out_, "2>&1"), &out), 0) << out;
  EXPECT_NE(out.find("1 shot rendered, 0 up to date"), std::string::npos) << out;
  EXPECT_EQ(lora_tag(out_ + "/s0.mp4").find("good"), std::string::npos);

  // A shot's own `lora:`: only that shot has it; the shot after it renders as without any LoRA; a
  // changed strength re-renders that shot alone.
  auto two_shots = [&](const std::string& strength) {
    write_text(list_, "defaults:\n  frames: 4\n  steps: 1\n  guidance: 1\nshots:\n"
                      "  - {id: styled, prompt: a red circle, lora: 'good.safetensors:" + strength + "'}\n"
                      "  - {id: plain, prompt: a blue square}\n");
  };
  two_shots("0.8");
  ASSERT_EQ(run_command(batch_cmd(shapes, list_, dir_ + "/shots", "2>&1"), &out), 0) << out;
  EXPECT_NE(lora_tag(dir_ + "/shots/styled.mp4").find(dir_ + "/good.safetensors:0.8"), std::string::npos);
  EXPECT_EQ(lora_tag(dir_ + "/shots/plain.mp4").find("good"), std::string::npos);
  write_text(dir_ + "/plain.yaml", "defaults:\n  frames: 4\n  steps: 1\n  guidance: 1\nshots:\n"
                                   "  - {id: plain, prompt: a blue square}\n");
  ASSERT_EQ(run_command(batch_cmd(shapes, dir_ + "/plain.yaml", dir_ + "/alone", "2>&1"), &out), 0) << out;
  EXPECT_EQ(read_text(dir_ + "/shots/plain.mp4"), read_text(dir_ + "/alone/plain.mp4"))
      << "the shot after a LoRA shot did not render as the plain model";
  const std::string plain_before = read_text(dir_ + "/shots/plain.mp4"), styled_before = read_text(dir_ + "/shots/styled.mp4");
  two_shots("0.4");
  ASSERT_EQ(run_command(batch_cmd(shapes, list_, dir_ + "/shots", "2>&1"), &out), 0) << out;
  EXPECT_NE(read_text(dir_ + "/shots/styled.mp4"), styled_before);
  EXPECT_EQ(read_text(dir_ + "/shots/plain.mp4"), plain_before);
  EXPECT_NE(out.find("1 shot rendered, 1 up to date"), std::string::npos) << out;
}

// A shot's context_frames: rendered in frame windows and tagged; the shot without keeps its frames as
// rendered alone; a changed stride re-renders that shot only.
TEST_F(BatchCli, ContextFramesOfAShotAreUsedRecordedAndRerenderOnChange) {
  if (!kHaveCodecs) GTEST_SKIP() << "built without FFmpeg: vdm batch cannot write video";
  const std::string shapes = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  auto list = [&](int stride) {
    write_text(list_, fmt::format("defaults:\n  frames: 8\n  steps: 2\n  guidance: 1\n  t2v_mode: joint\n  seed: 4\n"
                                  "shots:\n  - {{id: long, prompt: a red circle, context_frames: 4, context_stride: {}}}\n"
                                  "  - {{id: plain, prompt: a red circle}}\n",
                                  stride));
  };
  auto context_tag = [](const std::string& file) {
    std::string tags;
    EXPECT_EQ(run_command("ffprobe -v error -show_entries format_tags=context -of csv=p=0 '" + file + "'", &tags), 0);
    return tags;
  };
  list(2);
  std::string out;
  ASSERT_EQ(run_command(batch_cmd(shapes, list_, out_, "2>&1"), &out), 0) << out;
  EXPECT_NE(context_tag(out_ + "/long.mp4").find("4 frames every 2, pyramid weights"), std::string::npos);
  EXPECT_EQ(context_tag(out_ + "/plain.mp4").find("frames every"), std::string::npos);
  // The decoded pictures (the tags differ anyway): same prompt and seed, only the windows tell the two
  // shots apart.
  auto pictures = [](const std::string& file) {
    std::string md5;
    EXPECT_EQ(run_command("ffmpeg -v error -i '" + file + "' -map 0:v -f framemd5 - | grep -v '^#'", &md5), 0) << md5;
    return md5;
  };
  const std::string long_before = pictures(out_ + "/long.mp4"), plain_before = read_text(out_ + "/plain.mp4");
  EXPECT_NE(long_before, pictures(out_ + "/plain.mp4"));
  list(4);
  ASSERT_EQ(run_command(batch_cmd(shapes, list_, out_, "2>&1"), &out), 0) << out;
  EXPECT_NE(out.find("1 shot rendered, 1 up to date"), std::string::npos) << out;
  EXPECT_NE(pictures(out_ + "/long.mp4"), long_before);
  EXPECT_EQ(read_text(out_ + "/plain.mp4"), plain_before);
}

// A video shot with `extend`: the source's frames then the new ones, tagged as an extension; the same
// video without it is restyled; a changed `extend` renders that shot again.
TEST_F(BatchCli, ExtendContinuesAVideoShot) {
  if (!kHaveCodecs) GTEST_SKIP() << "built without FFmpeg: vdm batch cannot write video";
  const std::string shapes = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  std::string out;
  ASSERT_EQ(run_command(fmt::format("{} --threads 2 generate --model {} --prompt 'a red circle moving right on a "
                                    "black background' --frames 4 --steps 2 --seed 1 --progress none --output {}/src.mp4 "
                                    "2>&1",
                                    vdm::test::vdm_binary(), shapes, dir_),
                        &out),
            0)
      << out;
  auto list = [&](int extend) {
    write_text(list_, fmt::format("defaults:\n  steps: 2\n  guidance: 1\n  seed: 4\n  video: src.mp4\nshots:\n"
                                  "  - {{id: longer, prompt: a red circle moving right on a black background, extend: {}}}\n"
                                  "  - {{id: restyled, prompt: a blue circle}}\n",
                                  extend));
  };
  list(3);
  ASSERT_EQ(run_command(batch_cmd(shapes, list_, out_, "2>&1"), &out), 0) << out;
  EXPECT_EQ(ffprobe_frames(out_ + "/longer.mp4"), 7);
  EXPECT_EQ(ffprobe_frames(out_ + "/restyled.mp4"), 4);
  std::string mode;
  EXPECT_EQ(run_command("ffprobe -v error -show_entries format_tags=mode -of csv=p=0 '" + out_ + "/longer.mp4'", &mode),
            0);
  EXPECT_NE(mode.find("video-extension"), std::string::npos) << mode;
  const std::string restyled_before = read_text(out_ + "/restyled.mp4");
  list(5);
  ASSERT_EQ(run_command(batch_cmd(shapes, list_, out_, "2>&1"), &out), 0) << out;
  EXPECT_NE(out.find("1 shot rendered, 1 up to date"), std::string::npos) << out;
  EXPECT_EQ(ffprobe_frames(out_ + "/longer.mp4"), 9);
  EXPECT_EQ(read_text(out_ + "/restyled.mp4"), restyled_before);
}

// Shots with FreeU and FreeInit render with them and are tagged; a changed factor renders that shot
// again and leaves the others.
TEST_F(BatchCli, FreeUAndFreeInitShotsAreRenderedAndRecorded) {
  if (!kHaveCodecs) GTEST_SKIP() << "built without FFmpeg: vdm batch cannot write video";
  const std::string shapes = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  auto list = [&](const char* s1) {
    write_text(list_, fmt::format("defaults:\n  frames: 4\n  steps: 2\n  guidance: 4\n  t2v_mode: joint\n  seed: 4\n"
                                  "shots:\n  - {{id: freeu, prompt: a red circle, freeu: 'b1=1.2,b2=1.4,s1={},s2=0.2'}}\n"
                                  "  - {{id: init, prompt: a red circle, free_init: 2}}\n"
                                  "  - {{id: plain, prompt: a red circle}}\n",
                                  s1));
  };
  auto tag = [](const std::string& file, const char* key) {
    std::string value;
    EXPECT_EQ(run_command(fmt::format("ffprobe -v error -show_entries format_tags={} -of csv=p=0 '{}'", key, file),
                          &value),
              0);
    return value;
  };
  auto pictures = [](const std::string& file) {
    std::string md5;
    EXPECT_EQ(run_command("ffmpeg -v error -i '" + file + "' -map 0:v -f framemd5 - | grep -v '^#'", &md5), 0) << md5;
    return md5;
  };
  list("0.9");
  std::string out;
  ASSERT_EQ(run_command(batch_cmd(shapes, list_, out_, "2>&1"), &out), 0) << out;
  EXPECT_NE(tag(out_ + "/freeu.mp4", "freeu").find("b1=1.2,b2=1.4,s1=0.9,s2=0.2"), std::string::npos);
  EXPECT_NE(tag(out_ + "/init.mp4", "free_init").find("2 passes, butterworth"), std::string::npos);
  EXPECT_EQ(tag(out_ + "/plain.mp4", "freeu").find("b1="), std::string::npos);
  const std::string plain = pictures(out_ + "/plain.mp4"), init_before = read_text(out_ + "/init.mp4");
  EXPECT_NE(pictures(out_ + "/freeu.mp4"), plain);
  EXPECT_NE(pictures(out_ + "/init.mp4"), plain);
  list("0.5");
  ASSERT_EQ(run_command(batch_cmd(shapes, list_, out_, "2>&1"), &out), 0) << out;
  EXPECT_NE(out.find("1 shot rendered, 2 up to date"), std::string::npos) << out;
  EXPECT_NE(tag(out_ + "/freeu.mp4", "freeu").find("s1=0.5"), std::string::npos);
  EXPECT_EQ(read_text(out_ + "/init.mp4"), init_before);
}

TEST_F(BatchCli, RendersAShotListResumesAndRerendersOnlyWhatIsMissing) {
  REQUIRE_MODEL(model);
  write_text(list_, shot_list(2, 2, 1) +
                        "  - id: longer\n    prompt: a blue square\n    frames: 3\n    steps: 1\n"
                        "    seed: 5\n");
  std::string log;
  ASSERT_EQ(run_command(batch_cmd(model, list_, out_, "--concat " + dir_ + "/all.mp4"), &log), 0)
      << log;
  EXPECT_EQ(ffprobe_frames(out_ + "/s0.mp4"), 2);
  EXPECT_EQ(ffprobe_frames(out_ + "/s1.mp4"), 2);
  EXPECT_EQ(ffprobe_frames(out_ + "/longer.mp4"), 3);
  // Same size, rate and encoder for every shot: the join copies packets.
  EXPECT_EQ(ffprobe_frames(dir_ + "/all.mp4"), 7);
  EXPECT_NE(log.find("remuxed"), std::string::npos) << log;

  auto m = vdm::batch::read_manifests(out_);
  ASSERT_EQ(m.records.size(), 3u);
  std::map<std::string, std::string> hashes;
  std::map<std::string, int64_t> finished;
  for (const auto& [id, r] : m.records) {
    EXPECT_EQ(r.status, "done") << id;
    EXPECT_EQ(r.sha256, vdm::batch::sha256_file(out_ + "/" + r.output)) << id;
    EXPECT_TRUE(r.settings.contains("seed")) << id;
    EXPECT_GT(r.resolved.at("width").get<int>(), 0);
    EXPECT_GT(r.timings.at("render_s").get<double>(), 0);
    hashes[id] = r.sha256;
    finished[id] = r.finished_unix_ms;
  }
  EXPECT_EQ(m.find("longer")->settings.at("seed"), 5);
  EXPECT_EQ(m.find("s0")->resolved.at("frames"), 2);

  // Rerun: nothing rendered, nothing rewritten.
  ASSERT_EQ(run_command(batch_cmd(model, list_, out_), &log), 0) << log;
  EXPECT_NE(log.find("3 up to date, 0 to render"), std::string::npos) << log;
  for (const auto& [id, r] : vdm::batch::read_manifests(out_).records)
    EXPECT_EQ(r.finished_unix_ms, finished[id]) << id;

  // Delete one output: exactly that shot is rendered again, to the same bytes.
  fs::remove(out_ + "/s1.mp4");
  ASSERT_EQ(run_command(batch_cmd(model, list_, out_), &log), 0) << log;
  EXPECT_NE(log.find("2 up to date, 1 to render"), std::string::npos) << log;
  m = vdm::batch::read_manifests(out_);
  EXPECT_EQ(m.find("s0")->finished_unix_ms, finished["s0"]);
  EXPECT_EQ(m.find("longer")->finished_unix_ms, finished["longer"]);
  EXPECT_GT(m.find("s1")->finished_unix_ms, finished["s1"]);
  EXPECT_EQ(m.find("s1")->sha256, hashes["s1"]) << "same seed and settings: same file";
  EXPECT_TRUE(temp_files(out_).empty());
}

TEST_F(BatchCli, ThreeShardProcessesIntoOneFolder) {
  REQUIRE_MODEL(model);
  const int n = 6;
  write_text(list_, shot_list(n, 2, 1));
  // The same command as shard 1 by --shard, shard 2 as a Slurm array task (--array=1-3) and
  // shard 3 as a Kubernetes Indexed Job pod.
  const std::vector<std::vector<std::string>> how = {
      {"--shard", "1/3"},
      {"SLURM_ARRAY_TASK_ID=2", "SLURM_ARRAY_TASK_COUNT=3", "SLURM_ARRAY_TASK_MIN=1"},
      {"JOB_COMPLETION_INDEX=2", "VDM_SHARD_COUNT=3"}};
  std::vector<pid_t> pids;
  for (int k = 1; k <= 3; ++k) {
    std::vector<std::string> args = {"--threads", "1",          "batch",  list_,
                                     "--out",     out_,         "--model", model,
                                     "--progress", "none",      "--concat", dir_ + "/all.mp4"};
    // The first definition of a name wins; the empty ones hide any inherited from this shell.
    std::vector<std::string> env;
    if (k == 1)
      args.insert(args.end(), how[0].begin(), how[0].end());
    else
      env = how[k - 1];
    env.insert(env.end(), {"SLURM_ARRAY_TASK_ID=", "JOB_COMPLETION_INDEX="});
    pids.push_back(spawn_vdm(args, fmt::format("{}/shard{}.log", dir_, k), env));
  }
  for (size_t k = 0; k < pids.size(); ++k)
    EXPECT_EQ(wait_exit(pids[k]), 0) << read_text(fmt::format("{}/shard{}.log", dir_, k + 1));

  // Each shard's manifest holds exactly its own shots; together they hold every shot once.
  std::set<std::string> seen;
  for (int k = 1; k <= 3; ++k) {
    const std::string path = fmt::format("{}/manifest.shard-{}-of-3.jsonl", out_, k);
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      const std::string id = j.at("id");
      EXPECT_EQ(vdm::batch::shard_of(id, 3), k - 1) << id;
      EXPECT_TRUE(seen.insert(id).second) << id << " rendered by two shards";
      EXPECT_EQ(j.at("status"), "done");
    }
    // Each process rendered only its own share.
    const std::string log = read_text(fmt::format("{}/shard{}.log", dir_, k));
    for (int i = 0; i < n; ++i) {
      const std::string id = fmt::format("s{}", i);
      const bool rendered_here = log.find(fmt::format("shot {} (", id)) != std::string::npos;
      EXPECT_EQ(rendered_here, vdm::batch::shard_of(id, 3) == k - 1) << id << " in shard " << k;
    }
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) EXPECT_EQ(ffprobe_frames(fmt::format("{}/s{}.mp4", out_, i)), 2);
  // The last shard to finish joined all shots.
  EXPECT_EQ(ffprobe_frames(dir_ + "/all.mp4"), 2 * n);
  EXPECT_TRUE(temp_files(out_).empty());
  EXPECT_TRUE(temp_files(dir_).empty());
}

TEST_F(BatchCli, KilledMidShotThenRerunCompletesWithoutTouchingFinishedShots) {
  REQUIRE_MODEL(model);
  write_text(list_, shot_list(3, 2, slow_second_shot));
  const std::string log_path = dir_ + "/run1.log";
  pid_t pid = spawn_vdm({"--threads", "1", "batch", list_, "--out", out_, "--model", model,
                         "--progress", "json"},
                        log_path);
  // Kill once s0 is finished and s1 is being denoised.
  bool mid_shot = wait_until(pid, [&] {
    return done_count(out_) >= 1 && read_text(log_path).find("\"detail\":\"shot s1") != std::string::npos;
  });
  ASSERT_TRUE(mid_shot) << read_text(log_path);
  ::kill(pid, SIGKILL);
  EXPECT_EQ(wait_exit(pid), 128 + SIGKILL);

  auto m = vdm::batch::read_manifests(out_);
  EXPECT_TRUE(m.warnings.empty());
  ASSERT_NE(m.find("s0"), nullptr);
  EXPECT_EQ(m.find("s1"), nullptr);
  EXPECT_FALSE(fs::exists(out_ + "/s1.mp4"));
  const std::string s0_hash = vdm::batch::sha256_file(out_ + "/s0.mp4");
  const int64_t s0_finished = m.find("s0")->finished_unix_ms;
  // What a kill during encoding leaves: the writer's temporary under the killed process id.
  write_text(fmt::format("{}/.s1.mp4.{}.0.tmp", out_, pid), "partial");

  std::string log;
  ASSERT_EQ(run_command(batch_cmd(model, list_, out_), &log), 0) << log;
  EXPECT_NE(log.find("1 up to date, 2 to render"), std::string::npos) << log;
  EXPECT_NE(log.find("removed"), std::string::npos) << log;
  m = vdm::batch::read_manifests(out_);
  ASSERT_EQ(m.records.size(), 3u);
  for (const auto& [id, r] : m.records) EXPECT_EQ(r.status, "done") << id;
  EXPECT_EQ(vdm::batch::sha256_file(out_ + "/s0.mp4"), s0_hash);
  EXPECT_EQ(m.find("s0")->finished_unix_ms, s0_finished);
  EXPECT_EQ(ffprobe_frames(out_ + "/s1.mp4"), 2);
  EXPECT_EQ(ffprobe_frames(out_ + "/s2.mp4"), 2);
  EXPECT_TRUE(temp_files(out_).empty()) << fmt::format("{}", fmt::join(temp_files(out_), ", "));
}

TEST_F(BatchCli, SigtermMidShotExits143WithAConsistentManifest) {
  REQUIRE_MODEL(model);
  write_text(list_, shot_list(3, 2, slow_second_shot));
  const std::string log_path = dir_ + "/run.log";
  pid_t pid = spawn_vdm({"--threads", "1", "batch", list_, "--out", out_, "--model", model,
                         "--progress", "json"},
                        log_path);
  bool mid_shot = wait_until(pid, [&] {
    return done_count(out_) >= 1 && read_text(log_path).find("\"detail\":\"shot s1") != std::string::npos;
  });
  ASSERT_TRUE(mid_shot) << read_text(log_path);
  ::kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 143) << read_text(log_path);
  auto m = vdm::batch::read_manifests(out_);
  EXPECT_TRUE(m.warnings.empty());
  EXPECT_EQ(m.records.size(), 1u);
  EXPECT_NE(m.find("s0"), nullptr);
  EXPECT_FALSE(fs::exists(out_ + "/s1.mp4"));
  EXPECT_TRUE(temp_files(out_).empty());
  EXPECT_NE(read_text(log_path).find("interrupted"), std::string::npos);
}

TEST_F(BatchCli, FailingShotDoesNotStopTheOthersAndExitsNonZero) {
  REQUIRE_MODEL(model);
  // A restyle source that is not a video: that shot fails when it renders, the others finish.
  write_text(dir_ + "/broken.mp4", "not a video at all");
  write_text(list_, shot_list(1, 2, 1) +
                        "  - id: broken\n    prompt: x\n    video: broken.mp4\n    strength: 0.5\n"
                        "    steps: 1\n"
                        "  - id: after\n    prompt: y\n    steps: 1\n");
  std::string log;
  EXPECT_EQ(run_command(batch_cmd(model, list_, out_), &log), 1) << log;
  EXPECT_NE(log.find("1 of 3 shots failed (broken)"), std::string::npos) << log;
  auto m = vdm::batch::read_manifests(out_);
  EXPECT_EQ(m.find("broken")->status, "failed");
  EXPECT_NE(m.find("broken")->error.find("broken.mp4"), std::string::npos);
  EXPECT_EQ(m.find("after")->status, "done");
  EXPECT_EQ(ffprobe_frames(out_ + "/after.mp4"), 2);
  EXPECT_FALSE(fs::exists(out_ + "/broken.mp4"));
}

// A shot the model cannot render as asked (factorized text-to-video on a plain UNet) is found
// before the first shot renders, with its line, and nothing is written.
TEST_F(BatchCli, FactorizedShotOnAPlainUNetIsRefusedBeforeRendering) {
  REQUIRE_MODEL(model);
  write_text(list_, shot_list(1, 2, 1) + "  - id: fact\n    prompt: x\n    steps: 1\n    t2v_mode: factorized\n");
  std::string log;
  EXPECT_EQ(run_command(batch_cmd(model, list_, out_), &log), 2) << log;
  EXPECT_NE(log.find("shot 'fact'"), std::string::npos) << log;
  EXPECT_NE(log.find("use --t2v-mode joint"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(out_ + "/fact.mp4"));
  EXPECT_FALSE(fs::exists(out_ + "/s0.mp4"));
}

// ---- errors that need no model ------------------------------------------------------------------

TEST_F(BatchCli, ShotListErrorsAreReportedTogetherWithLineNumbersAndNothingRenders) {
  write_text(list_,
             "defaults:\n"
             "  frames: 8\n"
             "shots:\n"
             "  - id: a\n"
             "    prompt: fine\n"
             "  - id: b\n"
             "    promt: typo\n"
             "  - id: a\n"
             "    prompt: again\n"
             "    steps: many\n"
             "    fps: 0\n");
  std::string log;
  EXPECT_EQ(run_command(batch_cmd("/nonexistent-model", list_, out_), &log), 2) << log;
  for (const char* expected : {
           "shots.yaml:7: shot 'b': unknown key 'promt' (did you mean 'prompt'?)",
           "shots.yaml:6: shot 'b': missing 'prompt'",
           "shots.yaml:8: shot 'a': duplicate id 'a' (first used at line 4)",
           "shots.yaml:10: shot 'a': key 'steps': expected an integer, got 'many'",
           "shots.yaml:11: shot 'a': key 'fps': 0 is out of range",
       })
    EXPECT_NE(log.find(expected), std::string::npos) << "missing: " << expected << "\n" << log;
  EXPECT_FALSE(fs::exists(out_ + "/a.mp4"));

  write_text(list_, "shots:\n  - id: a\n    prompt: [unclosed\n");
  EXPECT_EQ(run_command(batch_cmd("/nonexistent-model", list_, out_), &log), 2) << log;
  EXPECT_NE(log.find("invalid YAML/JSON syntax"), std::string::npos) << log;
}

TEST_F(BatchCli, BadArgumentsExitWithCode2) {
  write_text(list_, shot_list(1, 2, 1));
  std::string log;
  EXPECT_EQ(run_command(batch_cmd("/nonexistent-model", list_, out_, "--shard 4/3"), &log), 2)
      << log;
  EXPECT_NE(log.find("--shard 4/3"), std::string::npos) << log;
  EXPECT_EQ(run_command(batch_cmd("/nonexistent-model", list_, out_, "--concat all.txt"), &log), 2)
      << log;
  EXPECT_NE(log.find("--concat all.txt"), std::string::npos) << log;
  EXPECT_EQ(run_command("JOB_COMPLETION_INDEX=1 " + batch_cmd("/nonexistent-model", list_, out_),
                        &log),
            2)
      << log;
  EXPECT_NE(log.find("VDM_SHARD_COUNT"), std::string::npos) << log;
  // A missing model is reported before anything renders.
  if (!kHaveCodecs) return;
  EXPECT_EQ(run_command(batch_cmd("/nonexistent-model", list_, out_), &log), 2) << log;
  EXPECT_NE(log.find("/nonexistent-model"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(out_ + "/s0.mp4"));
}
