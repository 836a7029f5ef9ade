// `vdm generate` end to end as a user runs it, on the reference fixture model: the MP4 has the
// requested frames, size and fps (checked with ffprobe), seeds are reproducible, and bad input
// exits with code 2, one clear line, and no output file.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/tensor_io.h"
#include "models/attention_cpu.h"
#include "tests/support/test_support.h"

namespace fs = std::filesystem;
using vdm::test::run_command;

namespace {

std::string model_dir() {
  std::string root = vdm::test::diffusers_tiny_root();
  return root.empty() ? root : root + "/t2v_pipeline";
}

std::string generate_cmd(const std::string& model, const std::string& out, const std::string& extra) {
  return fmt::format("{} --threads 2 generate --model {} --prompt 'a panda eating bamboo' --frames 6 "
                     "--width 32 --height 32 --steps 3 --progress none {} --output {}",
                     vdm::test::vdm_binary(), model, extra, out);
}

nlohmann::json ffprobe(const std::string& path) {
  std::string out;
  int rc = run_command(fmt::format("ffprobe -v error -count_frames -select_streams v:0 -show_entries "
                                   "stream=nb_read_frames,width,height,r_frame_rate:format_tags "
                                   "-of json '{}'", path), &out);
  EXPECT_EQ(rc, 0) << out;
  return nlohmann::json::parse(out);
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

TEST(GenerateCli, WritesMp4WithRequestedFramesSizeFps) {
  std::string model = model_dir();
  if (model.empty()) GTEST_SKIP() << "reference fixtures not found (VDM_FIXTURES)";
  std::string dir = vdm::test::make_temp_dir("gen");
  std::string out_path = dir + "/clip.mp4", log;
  ASSERT_EQ(run_command(generate_cmd(model, out_path, "--seed 7 --fps 12"), &log), 0) << log;
  auto j = ffprobe(out_path);
  const auto& s = j.at("streams").at(0);
  EXPECT_EQ(s.at("nb_read_frames").get<std::string>(), "6");
  EXPECT_EQ(s.at("width").get<int>(), 32);
  EXPECT_EQ(s.at("height").get<int>(), 32);
  EXPECT_EQ(s.at("r_frame_rate").get<std::string>(), "12/1");
  EXPECT_EQ(j.at("format").at("tags").at("prompt").get<std::string>(), "a panda eating bamboo");
  EXPECT_EQ(j.at("format").at("tags").at("seed").get<std::string>(), "7");
  EXPECT_EQ(j.at("format").at("tags").at("t2v_mode").get<std::string>(), "joint");  // a plain UNet
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string(), "clip.mp4") << "stray file left behind";
}

// Text-to-video mode: the embedded model (a UNet that takes a first frame) is factorized unless
// told otherwise, and the clip says which mode made it; a plain UNet refuses factorized before any
// work, naming the way out, and leaves no output.
TEST(GenerateCli, TextToVideoModeIsRecordedAndChecked) {
  const std::string shapes = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  std::string dir = vdm::test::make_temp_dir("t2v_mode"), log;
  auto cmd = [&](const std::string& model, const std::string& out, const std::string& extra) {
    return fmt::format("{} --threads 2 generate --model {} --prompt 'a red circle moving right on a black "
                       "background' --frames 4 --steps 2 --guidance 4 --seed 3 --progress text {} --output {} 2>&1",
                       vdm::test::vdm_binary(), model, extra, out);
  };
  ASSERT_EQ(run_command(cmd(shapes, dir + "/f.mp4", ""), &log), 0) << log;
  EXPECT_NE(log.find("first-frame"), std::string::npos) << log;  // the first pass's progress
  EXPECT_EQ(ffprobe(dir + "/f.mp4").at("format").at("tags").at("t2v_mode").get<std::string>(), "factorized");
  ASSERT_EQ(run_command(cmd(shapes, dir + "/j.mp4", "--t2v-mode joint"), &log), 0) << log;
  EXPECT_EQ(log.find("first-frame"), std::string::npos) << log;
  EXPECT_EQ(ffprobe(dir + "/j.mp4").at("format").at("tags").at("t2v_mode").get<std::string>(), "joint");
  EXPECT_NE(read_bytes(dir + "/f.mp4"), read_bytes(dir + "/j.mp4"));
  EXPECT_NE(run_command(cmd(shapes, dir + "/x.mp4", "--t2v-mode both"), &log), 0);
  EXPECT_NE(log.find("expected joint or factorized"), std::string::npos) << log;
  std::string model = model_dir();
  if (model.empty()) GTEST_SKIP() << "reference fixtures not found (VDM_FIXTURES)";
  EXPECT_NE(run_command(cmd(model, dir + "/p.mp4", "--t2v-mode factorized"), &log), 0);
  EXPECT_NE(log.find("use --t2v-mode joint"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(dir + "/p.mp4"));
  EXPECT_FALSE(fs::exists(dir + "/x.mp4"));
}

TEST(GenerateCli, SameSeedSameFramesDifferentSeedDifferentFrames) {
  std::string model = model_dir();
  if (model.empty()) GTEST_SKIP() << "reference fixtures not found (VDM_FIXTURES)";
  std::string dir = vdm::test::make_temp_dir("seed");
  std::string log;
  // PNG frames are lossless: compare the exact pixels.
  ASSERT_EQ(run_command(generate_cmd(model, dir + "/a", "--seed 11"), &log), 0) << log;
  ASSERT_EQ(run_command(generate_cmd(model, dir + "/b", "--seed 11"), &log), 0) << log;
  ASSERT_EQ(run_command(generate_cmd(model, dir + "/c", "--seed 12"), &log), 0) << log;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir + "/a")) names.push_back(e.path().filename().string());
  ASSERT_EQ(names.size(), 6u);
  int differing = 0;
  for (const auto& n : names) {
    EXPECT_EQ(read_bytes(dir + "/a/" + n), read_bytes(dir + "/b/" + n)) << n;
    differing += read_bytes(dir + "/a/" + n) != read_bytes(dir + "/c/" + n);
  }
  EXPECT_EQ(differing, 6);
}

TEST(GenerateCli, BadInputExitsTwoWithOneLineAndNoOutput) {
  std::string model = model_dir();
  if (model.empty()) GTEST_SKIP() << "reference fixtures not found (VDM_FIXTURES)";
  std::string dir = vdm::test::make_temp_dir("bad");
  fs::create_directories(dir + "/readonly");
  fs::permissions(dir + "/readonly", fs::perms::owner_read | fs::perms::owner_exec);
  struct Case {
    std::string name, model, extra, output, expect;
  };
  const std::vector<Case> cases = {
      {"frames 0", model, "--frames 0", dir + "/f.mp4", "--frames 0"},
      {"steps 0", model, "--steps 0", dir + "/s.mp4", "--steps 0"},
      {"negative guidance", model, "--guidance -1", dir + "/g.mp4", "--guidance -1"},
      {"nan guidance", model, "--guidance nan", dir + "/n.mp4", "--guidance"},
      {"guidance rescale above 1", model, "--guidance-rescale 1.5", dir + "/gr.mp4", "--guidance-rescale 1.5: must be in [0, 1]"},
      {"size the model cannot take", model, "--width 30", dir + "/w.mp4", "--width 30"},
      {"missing model folder", dir + "/no-model", "", dir + "/m.mp4", "does not exist"},
      {"unknown sampler", model, "--sampler heun9", dir + "/u.mp4", "heun9"},
      {"CUDA graph on the CPU", model, "--cuda-graph", dir + "/cg.mp4", "--cuda-graph needs --device cuda"},
      {"unknown output extension", model, "", dir + "/x.avi", ".avi"},
      {"output folder missing", model, "", dir + "/no/such/dir/o.mp4", "does not exist"},
      // Encoder settings are checked before the model is even read (the folder here does not exist).
      {"crf out of range", dir + "/no-model", "--crf 99", dir + "/c.mp4", "crf 99 is out of range for H.264"},
      {"crf out of range for VP9", dir + "/no-model", "--crf 70", dir + "/c.webm", "crf 70 is out of range for VP9"},
      {"unknown preset", dir + "/no-model", "--preset warp", dir + "/p.mp4", "unknown preset 'warp'"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    std::string log;
    // A flag given twice takes its last value, so `extra` overrides the defaults above.
    int rc = run_command(generate_cmd(c.model, c.output, c.extra), &log);
    EXPECT_EQ(rc, 2) << log;
    EXPECT_NE(log.find(c.expect), std::string::npos) << log;
    EXPECT_NE(log.find("vdm: error: "), std::string::npos) << log;
    EXPECT_FALSE(fs::exists(c.output));
  }
  if (::geteuid() != 0) {  // root writes anywhere
    std::string log;
    int rc = run_command(generate_cmd(model, dir + "/readonly/o.mp4", ""), &log);
    EXPECT_EQ(rc, 2) << log;
    EXPECT_NE(log.find("not writable"), std::string::npos) << log;
  }
  {
    // An unknown VDM_UPSAMPLE fails before any work, naming the variable and the modes.
    std::string log;
    int rc = run_command("VDM_UPSAMPLE=bilinear " + generate_cmd(model, dir + "/up.mp4", ""), &log);
    EXPECT_EQ(rc, 2) << log;
    EXPECT_NE(log.find("VDM_UPSAMPLE=bilinear: unknown mode; expected 'transposed'"), std::string::npos) << log;
    EXPECT_FALSE(fs::exists(dir + "/up.mp4"));
    rc = run_command("VDM_TEMPORAL_CONV=conv1d " + generate_cmd(model, dir + "/tc.mp4", ""), &log);
    EXPECT_EQ(rc, 2) << log;
    EXPECT_NE(log.find("VDM_TEMPORAL_CONV=conv1d: unknown mode; expected 'conv2d'"), std::string::npos) << log;
    EXPECT_FALSE(fs::exists(dir + "/tc.mp4"));
  }
  std::string log;
  int rc = run_command(fmt::format("{} animate --model {} --image {}/missing.png --prompt x --output {}/a.mp4",
                                   vdm::test::vdm_binary(), model, dir, dir), &log);
  EXPECT_EQ(rc, 2) << log;
  EXPECT_NE(log.find("missing.png"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(dir + "/a.mp4"));
}

// --lora on the embedded model: the file is merged (a different clip from the same seed), named in the
// clip's metadata, and a LoRA that does not fit, or is missing, stops the command before any work
// with exit code 2, one line, and no output.
TEST(GenerateCli, LoraIsMergedRecordedAndCheckedFirst) {
  const std::string shapes = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  const std::string dir = vdm::test::make_temp_dir("lora_cli");
  const std::string to_q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
  at::manual_seed(1);
  vdm::io::save_safetensors(dir + "/style.safetensors",
                            {{to_q + ".lora_A.weight", at::randn({4, 32}) * 0.5}, {to_q + ".lora_B.weight", at::randn({32, 4}) * 0.5}});
  vdm::io::save_safetensors(dir + "/other.safetensors",
                            {{to_q + ".lora_A.weight", at::randn({4, 320})}, {to_q + ".lora_B.weight", at::randn({320, 4})}});
  auto cmd = [&](const std::string& out, const std::string& extra) {
    return fmt::format("{} --threads 2 generate --model {} --prompt 'a red circle moving right on a black background' "
                       "--frames 4 --steps 2 --seed 3 --t2v-mode joint --progress none {} --output {} 2>&1",
                       vdm::test::vdm_binary(), shapes, extra, out);
  };
  std::string log;
  ASSERT_EQ(run_command(cmd(dir + "/plain.mp4", ""), &log), 0) << log;
  ASSERT_EQ(run_command(cmd(dir + "/lora.mp4", fmt::format("--lora {}/style.safetensors:0.7", dir)), &log), 0) << log;
  EXPECT_NE(log.find("peft, 1 layer (unet 1), rank 4"), std::string::npos) << log;
  EXPECT_NE(read_bytes(dir + "/plain.mp4"), read_bytes(dir + "/lora.mp4"));
  EXPECT_EQ(ffprobe(dir + "/lora.mp4").at("format").at("tags").at("lora").get<std::string>(),
            dir + "/style.safetensors:0.7");
  EXPECT_FALSE(ffprobe(dir + "/plain.mp4").at("format").at("tags").contains("lora"));

  for (const auto& [lora, expect] : std::vector<std::pair<std::string, std::string>>{
           {dir + "/other.safetensors", "weight [32, 32] needs down [r, 32] and up [32, r], got down [4, 320]"},
           {dir + "/missing.safetensors", "does not exist; check the path"},
           {dir + "/style.safetensors:x1", "does not exist"}}) {
    SCOPED_TRACE(lora);
    EXPECT_EQ(run_command(cmd(dir + "/bad.mp4", "--lora " + lora), &log), 2) << log;
    EXPECT_NE(log.find(expect), std::string::npos) << log;
    EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
    EXPECT_FALSE(fs::exists(dir + "/bad.mp4"));
  }
}

// restyle's help shows the strength default that applies to it (0.6), animate's its own (0.8).
TEST(GenerateCli, StrengthDefaultsInHelp) {
  std::string log;
  ASSERT_EQ(run_command(vdm::test::vdm_binary() + " restyle --help", &log), 0) << log;
  EXPECT_NE(log.find("--strength FLOAT=0.6"), std::string::npos) << log;
  ASSERT_EQ(run_command(vdm::test::vdm_binary() + " animate --help", &log), 0) << log;
  EXPECT_NE(log.find("--strength FLOAT=0.8"), std::string::npos) << log;
}

// `vdm bench --json` on the fixture model: every stage timed the requested number of times, and
// with --profile the UNet steps broken down by operator (convolutions and matmuls among them).
TEST(BenchCli, StagesAndOperatorProfile) {
  std::string model = model_dir();
  if (model.empty()) GTEST_SKIP() << "reference fixtures not found (VDM_FIXTURES)";
  const std::string dir = vdm::test::make_temp_dir("bench");
  std::string out;
  // The report on stdout, the progress log (stderr) apart.
  const int rc = run_command(fmt::format("({} --threads 2 bench --model {} --frames 4 --width 32 --height 32 --steps 2 "
                                         "--json --profile > {}/bench.json)",
                                         vdm::test::vdm_binary(), model, dir),
                             &out);
  ASSERT_EQ(rc, 0) << out;
  std::ifstream in(dir + "/bench.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j.at("batch"), 2);
  EXPECT_EQ(j.at("threads"), 2);
#if defined(VDM_WITH_OPENMP)
  EXPECT_EQ(j.at("kernel_threads"), 2);  // vdm's own kernels on every thread
  EXPECT_EQ(j.at("cpu_kernels"), std::string(vdm::models::fused_attention_cpu_isa()) +
                                   (vdm::models::fused_attention_cpu_bf16_pairs() ? "+bf16" : ""));
#endif
  EXPECT_EQ(j.at("stages").at("unet_step").at("runs"), 2);
  EXPECT_GT(j.at("stages").at("unet_step").at("median_ms").get<double>(), 0.0);
  EXPECT_EQ(j.at("stages").at("vae_decode").at("runs"), 1);
  EXPECT_EQ(j.at("stages").at("text_encoder").at("runs"), 1);
  EXPECT_GT(j.at("peak_host_mb").get<double>(), 0.0);
  const auto& ops = j.at("unet_ops").at("ops");
  ASSERT_FALSE(ops.empty());
  double self_sum = 0;
  bool conv = false, mm = false;
  for (const auto& op : ops) {
    self_sum += op.at("self_ms").get<double>();
    EXPECT_GE(op.at("total_ms").get<double>(), 0.0);
    const std::string name = op.at("name");
    conv = conv || name.find("convolution") != std::string::npos;
    // The linear layers: BLAS (mm/addmm) or, for CPU inference, oneDNN (vdm::onednn_linear on the
    // tensors' own memory, or LibTorch's mkldnn_linear in a build without oneDNN's headers).
    mm = mm || name == "aten::mm" || name == "aten::addmm" || name == "aten::mkldnn_linear" ||
         name == "vdm::onednn_linear";
  }
  EXPECT_TRUE(conv);
  EXPECT_TRUE(mm);
  // Two threads at most run operators at once.
  EXPECT_LE(self_sum, 2.0 * j.at("unet_ops").at("wall_ms").get<double>() + 1.0);

  EXPECT_EQ(j.at("fused_qkv_modules"), 0);  // apart on CPU unless asked

  // --fuse-qkv on: the self-attention modules run q, k and v as one product; a bad value is refused
  // before anything loads, naming the option.
  ASSERT_EQ(run_command(fmt::format("({} --threads 2 bench --model {} --frames 4 --width 32 --height 32 --steps 1 "
                                    "--skip-vae --fuse-qkv on --deep-cache-branch 0 --freeu b1=1.2,b2=1.4,s1=0.9,s2=0.2 --json > "
                                    "{}/fused.json)",
                                    vdm::test::vdm_binary(), model, dir),
                        &out),
            0)
      << out;
  std::ifstream fused_in(dir + "/fused.json");
  const nlohmann::json fused = nlohmann::json::parse(fused_in);
  EXPECT_GT(fused.at("fused_qkv_modules").get<int>(), 0);
  // --deep-cache-branch: DeepCache's shallow pass timed as a stage of its own.
  EXPECT_EQ(fused.at("stages").at("unet_step_shallow").at("runs"), 1);
  // --freeu: the UNet steps are timed with it, and the report says so.
  EXPECT_EQ(fused.at("freeu"), "b1=1.2,b2=1.4,s1=0.9,s2=0.2");
  EXPECT_EQ(j.at("freeu"), "off");
  EXPECT_EQ(run_command(fmt::format("{} bench --model {} --freeu b1=2 2>&1", vdm::test::vdm_binary(), model), &out), 2);
  EXPECT_NE(out.find("--freeu 'b1=2': b2 is missing"), std::string::npos) << out;
  EXPECT_EQ(run_command(fmt::format("{} bench --model {} --deep-cache-branch 99 2>&1", vdm::test::vdm_binary(), model),
                        &out),
            2);
  EXPECT_NE(out.find("--deep-cache-branch 99: this UNet has"), std::string::npos) << out;
  EXPECT_EQ(run_command(fmt::format("{} bench --model {} --fuse-qkv sometimes 2>&1", vdm::test::vdm_binary(), model),
                        &out),
            2);
  EXPECT_NE(out.find("--fuse-qkv: expected auto, on or off, got 'sometimes'"), std::string::npos) << out;

  // --profile cannot look inside a captured CUDA graph.
  ASSERT_NE(run_command(fmt::format("{} bench --model {} --cuda-graph --profile 2>&1", vdm::test::vdm_binary(), model),
                        &out),
            0);
}

// --context-frames: a clip longer than the window is rendered differently and tagged; a clip no longer
// than the window is byte-identical to one rendered without windows; bad settings exit 2 before any
// work with the option named.
TEST(GenerateCli, ContextWindowsSplitOnlyLongerClipsAndAreRecorded) {
  const std::string shapes = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  std::string dir = vdm::test::make_temp_dir("context"), log;
  auto cmd = [&](int frames, const std::string& out, const std::string& extra) {
    return fmt::format("{} --threads 2 generate --model {} --prompt 'a red circle moving right on a black "
                       "background' --frames {} --steps 2 --guidance 4 --seed 3 --t2v-mode joint --progress none "
                       "{} --output {} 2>&1",
                       vdm::test::vdm_binary(), shapes, frames, extra, out);
  };
  ASSERT_EQ(run_command(cmd(8, dir + "/plain", ""), &log), 0) << log;
  ASSERT_EQ(run_command(cmd(8, dir + "/whole", "--context-frames 8"), &log), 0) << log;
  ASSERT_EQ(run_command(cmd(8, dir + "/split", "--context-frames 4 --context-stride 2"), &log), 0) << log;
  EXPECT_NE(log.find("frame windows: 4 frames every 2, pyramid weights, shuffle_context noise"), std::string::npos)
      << log;
  // The embedded model knows each frame's position: it is told that windows are not for it.
  EXPECT_NE(log.find("takes a frame-position channel and renders long clips without frame windows"), std::string::npos)
      << log;
  int split_differs = 0;
  for (int f = 0; f < 8; ++f) {
    const std::string name = fmt::format("/frame_{:05d}.png", f);
    ASSERT_TRUE(fs::exists(dir + "/plain" + name)) << name;
    EXPECT_EQ(read_bytes(dir + "/plain" + name), read_bytes(dir + "/whole" + name)) << name;
    split_differs += read_bytes(dir + "/plain" + name) != read_bytes(dir + "/split" + name);
  }
  EXPECT_GE(split_differs, 4);
  ASSERT_EQ(run_command(cmd(8, dir + "/w.mp4", "--context-frames 4"), &log), 0) << log;
  EXPECT_EQ(ffprobe(dir + "/w.mp4").at("format").at("tags").at("context").get<std::string>(),
            "4 frames every 4, pyramid weights, shuffle_context noise");
  ASSERT_EQ(run_command(cmd(8, dir + "/p.mp4", ""), &log), 0) << log;
  EXPECT_FALSE(ffprobe(dir + "/p.mp4").at("format").at("tags").contains("context"));
  for (const auto& [extra, message] :
       std::vector<std::pair<std::string, std::string>>{{"--context-frames 1", "--context-frames 1: expected 0 (off)"},
                                                        {"--context-frames 8 --context-stride 9", "--context-stride 9"},
                                                        {"--context-frames 8 --context-weights ramp", "--context-weights ramp"},
                                                        {"--context-frames 8 --context-noise zero", "--context-noise zero"}}) {
    EXPECT_EQ(run_command(cmd(16, dir + "/bad.mp4", extra), &log), 2) << extra << "\n" << log;
    EXPECT_NE(log.find(message), std::string::npos) << log;
    EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
  }
  EXPECT_FALSE(fs::exists(dir + "/bad.mp4"));
}

// --deep-cache on the embedded model: logged and recorded in the clip's metadata, its branches listed by
// `vdm info`, and a branch the UNet does not have refused before any work.
// --freeu: the render changes and is tagged; a malformed value exits 2 before any work, naming the key.
TEST(GenerateCli, FreeUIsRecordedAndChecked) {
  const std::string shapes = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  std::string dir = vdm::test::make_temp_dir("freeu"), log;
  auto cmd = [&](const std::string& out, const std::string& extra) {
    return fmt::format("{} --threads 2 generate --model {} --prompt 'a red circle moving right on a black "
                       "background' --frames 4 --steps 3 --guidance 4 --seed 3 --t2v-mode joint --progress none "
                       "{} --output {} 2>&1",
                       vdm::test::vdm_binary(), shapes, extra, out);
  };
  ASSERT_EQ(run_command(cmd(dir + "/plain", "--format png"), &log), 0) << log;
  ASSERT_EQ(run_command(cmd(dir + "/f.mp4", "--freeu b1=1.2,b2=1.4,s1=0.9,s2=0.2"), &log), 0) << log;
  EXPECT_NE(log.find("FreeU: b1=1.2,b2=1.4,s1=0.9,s2=0.2"), std::string::npos) << log;
  EXPECT_EQ(ffprobe(dir + "/f.mp4").at("format").at("tags").at("freeu").get<std::string>(),
            "b1=1.2,b2=1.4,s1=0.9,s2=0.2");
  ASSERT_EQ(run_command(cmd(dir + "/freeu", "--format png --freeu b1=1.3,b2=1.3,s1=0.5,s2=0.5"), &log), 0) << log;
  EXPECT_NE(read_bytes(dir + "/plain/frame_00003.png"), read_bytes(dir + "/freeu/frame_00003.png"));
  EXPECT_FALSE(read_bytes(dir + "/freeu/frame_00003.png").empty());
  EXPECT_EQ(run_command(cmd(dir + "/bad.mp4", "--freeu b1=1.2,b2=1.4"), &log), 2);
  EXPECT_NE(log.find("--freeu 'b1=1.2,b2=1.4': s1 is missing"), std::string::npos) << log;
  EXPECT_FALSE(std::filesystem::exists(dir + "/bad.mp4"));
}

// --free-init: the passes are logged and the clip tagged; restyle and bad settings exit 2 before any
// work, naming the option.
TEST(GenerateCli, FreeInitIsRecordedAndChecked) {
  const std::string shapes = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  std::string dir = vdm::test::make_temp_dir("free_init"), log;
  auto cmd = [&](const std::string& verb, const std::string& out, const std::string& extra) {
    return fmt::format("{} --threads 2 {} --model {} --prompt 'a red circle moving right on a black background' "
                       "--steps 2 --guidance 4 --seed 3 --progress none {} --output {} 2>&1",
                       vdm::test::vdm_binary(), verb, shapes, extra, out);
  };
  ASSERT_EQ(run_command(cmd("generate", dir + "/f.mp4", "--frames 4 --t2v-mode joint --free-init 2"), &log), 0)
      << log;
  EXPECT_NE(log.find("FreeInit pass 2/2"), std::string::npos) << log;
  EXPECT_EQ(ffprobe(dir + "/f.mp4").at("format").at("tags").at("free_init").get<std::string>(),
            "2 passes, butterworth filter of order 4, stops 0.25 spatial / 0.25 temporal");
  EXPECT_EQ(run_command(cmd("restyle", dir + "/r.mp4", "--video " + dir + "/f.mp4 --free-init 2"), &log), 2);
  EXPECT_NE(log.find("--free-init 2: restyle starts part-way"), std::string::npos) << log;
  EXPECT_EQ(run_command(cmd("generate", dir + "/b.mp4", "--free-init 3 --free-init-spatial 2"), &log), 2);
  EXPECT_NE(log.find("--free-init-spatial 2: the stop frequency must be in (0, 1]"), std::string::npos) << log;
  EXPECT_FALSE(std::filesystem::exists(dir + "/r.mp4"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/b.mp4"));
}

TEST(GenerateCli, DeepCacheIsRecordedListedAndChecked) {
  const std::string shapes = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  std::string dir = vdm::test::make_temp_dir("deep_cache"), log;
  auto cmd = [&](const std::string& out, const std::string& extra) {
    return fmt::format("{} --threads 2 generate --model {} --prompt 'a red circle moving right on a black "
                       "background' --frames 4 --steps 4 --guidance 4 --seed 3 --t2v-mode joint --progress none "
                       "{} --output {} 2>&1",
                       vdm::test::vdm_binary(), shapes, extra, out);
  };
  ASSERT_EQ(run_command(cmd(dir + "/c.mp4", "--deep-cache 2 --deep-cache-branch 1"), &log), 0) << log;
  EXPECT_NE(log.find("deep cache: every 2 steps, branch 1"), std::string::npos) << log;
  EXPECT_EQ(ffprobe(dir + "/c.mp4").at("format").at("tags").at("deep_cache").get<std::string>(),
            "every 2 steps, branch 1");
  ASSERT_EQ(run_command(cmd(dir + "/p.mp4", "--deep-cache 1"), &log), 0) << log;
  EXPECT_FALSE(ffprobe(dir + "/p.mp4").at("format").at("tags").contains("deep_cache"));
  // The embedded UNet: transformer_in, one layer and a downsampler, one layer.
  ASSERT_EQ(run_command(fmt::format("{} info {}", vdm::test::vdm_binary(), shapes), &log), 0) << log;
  EXPECT_NE(log.find("deep cache branches      0 transformer_in (32 ch, 1/1)"), std::string::npos) << log;
  EXPECT_NE(log.find("3 down_blocks.1.temp_convs.0 (64 ch, 1/2)"), std::string::npos) << log;
  EXPECT_EQ(run_command(cmd(dir + "/bad.mp4", "--deep-cache 3 --deep-cache-branch 4"), &log), 2) << log;
  EXPECT_NE(log.find("--deep-cache-branch 4: this UNet has 4 skip connections; use 0..3"), std::string::npos) << log;
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
  EXPECT_FALSE(fs::exists(dir + "/bad.mp4"));
}

// --prompt-at: the keyframes are logged and recorded in the clip's metadata as JSON; a malformed entry
// or a frame past the clip's end exits 2 before any work.
TEST(GenerateCli, PromptTravelIsRecordedAndChecked) {
  const std::string shapes = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  std::string dir = vdm::test::make_temp_dir("travel"), log;
  auto cmd = [&](const std::string& out, const std::string& extra) {
    return fmt::format("{} --threads 2 generate --model {} --prompt 'a red circle moving right on a black "
                       "background' --frames 4 --steps 2 --guidance 4 --seed 3 --t2v-mode joint --progress none "
                       "{} --output {} 2>&1",
                       vdm::test::vdm_binary(), shapes, extra, out);
  };
  ASSERT_EQ(run_command(cmd(dir + "/t.mp4", "--prompt-at '3:a blue circle moving right on a black background' "
                                             "--negative-prompt-at 2:blurry"),
                        &log),
            0)
      << log;
  EXPECT_NE(log.find(R"(prompt travel: {"3":"a blue circle moving right on a black background"})"), std::string::npos)
      << log;
  const auto tags = ffprobe(dir + "/t.mp4").at("format").at("tags");
  EXPECT_EQ(nlohmann::json::parse(tags.at("prompt_at").get<std::string>()).at("3"),
            "a blue circle moving right on a black background");
  EXPECT_EQ(nlohmann::json::parse(tags.at("negative_prompt_at").get<std::string>()).at("2"), "blurry");
  for (const auto& [extra, message] :
       std::vector<std::pair<std::string, std::string>>{{"--prompt-at 'a blue circle'", "expected FRAME:PROMPT"},
                                                        {"--prompt-at 4:x", "frame 4 is not in the clip's frames 1..3"},
                                                        {"--prompt-at 2:x --prompt-at 2:y", "frame 2 already has"}}) {
    EXPECT_EQ(run_command(cmd(dir + "/bad.mp4", extra), &log), 2) << extra << "\n" << log;
    EXPECT_NE(log.find(message), std::string::npos) << log;
    EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
  }
  EXPECT_FALSE(fs::exists(dir + "/bad.mp4"));
}

// vdm extend: the source's frames then the new ones in one clip, tagged as an extension of the source;
// a frame count out of range exits 2 with nothing written.
TEST(GenerateCli, ExtendAppendsFramesToTheSource) {
  const std::string shapes = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  std::string dir = vdm::test::make_temp_dir("extend"), log;
  const std::string common = "--prompt 'a red circle moving right on a black background' --steps 2 --guidance 4 "
                             "--seed 3 --progress none";
  ASSERT_EQ(run_command(fmt::format("{} --threads 2 generate --model {} {} --frames 4 --output {}/src 2>&1",
                                    vdm::test::vdm_binary(), shapes, common, dir),
                        &log),
            0)
      << log;
  auto extend = [&](const std::string& extra, const std::string& out) {
    return run_command(fmt::format("{} --threads 2 extend --model {} --video {}/src {} {} --output {} 2>&1",
                                   vdm::test::vdm_binary(), shapes, dir, common, extra, out),
                       &log);
  };
  ASSERT_EQ(extend("--frames 3", dir + "/long.mp4"), 0) << log;
  EXPECT_NE(log.find("extending 4 frames of"), std::string::npos) << log;
  const auto probe = ffprobe(dir + "/long.mp4");
  EXPECT_EQ(std::stoi(probe.at("streams").at(0).at("nb_read_frames").get<std::string>()), 7);
  EXPECT_EQ(probe.at("format").at("tags").at("mode"), "video-extension");
  EXPECT_EQ(probe.at("format").at("tags").at("source"), dir + "/src");
  // PNG frames: the source's pictures come through unchanged (the files' metadata differ).
  ASSERT_EQ(extend("--frames 2", dir + "/long_png"), 0) << log;
  auto pixels = [&](const std::string& file) {
    std::string md5;
    EXPECT_EQ(run_command("ffmpeg -v error -i '" + file + "' -f framemd5 - | grep -v '^#'", &md5), 0) << md5;
    return md5;
  };
  for (int f = 0; f < 4; ++f) {
    const std::string name = fmt::format("/frame_{:05d}.png", f);
    EXPECT_EQ(pixels(dir + "/src" + name), pixels(dir + "/long_png" + name)) << name;
  }
  EXPECT_TRUE(fs::exists(dir + "/long_png/frame_00005.png"));
  EXPECT_FALSE(fs::exists(dir + "/long_png/frame_00006.png"));
  EXPECT_EQ(extend("--frames 0", dir + "/bad.mp4"), 2) << log;
  EXPECT_NE(log.find("--frames 0: the frames to add must be between 1 and 1023"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(dir + "/bad.mp4"));
}

// --prompt-weights: recorded in the metadata; a weight that is not a number exits 2 before any work.
TEST(GenerateCli, PromptWeightsAreRecordedAndChecked) {
  const std::string shapes = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  std::string dir = vdm::test::make_temp_dir("weights"), log;
  auto cmd = [&](const std::string& prompt, const std::string& out) {
    return fmt::format("{} --threads 2 generate --model {} --prompt '{}' --frames 4 --steps 2 --seed 3 --t2v-mode joint "
                       "--progress none --prompt-weights --output {} 2>&1",
                       vdm::test::vdm_binary(), shapes, prompt, out);
  };
  ASSERT_EQ(run_command(cmd("a (red:1.3) circle moving right on a black background", dir + "/w.mp4"), &log), 0) << log;
  EXPECT_EQ(ffprobe(dir + "/w.mp4").at("format").at("tags").at("prompt_weights"), "on");
  EXPECT_EQ(run_command(cmd("a (red:1..3) circle", dir + "/bad.mp4"), &log), 2) << log;
  EXPECT_NE(log.find("prompt weight '1..3' in 'a (red:1..3) circle' is not a number"), std::string::npos) << log;
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
  EXPECT_FALSE(fs::exists(dir + "/bad.mp4"));
}
