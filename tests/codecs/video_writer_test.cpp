// VideoWriter / VideoReader round trips in every format, checked by vdm's reader and by ffprobe;
// container metadata; and the failure paths (odd sizes, unwritable folders, abandoned writers,
// broken input files).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "codecs/video_reader.h"
#include "codecs/video_writer.h"
#include "core/error.h"
#include "tests/support/test_support.h"

namespace fs = std::filesystem;
using vdm::codecs::VideoFormat;
using vdm::codecs::VideoReader;
using vdm::codecs::VideoWriter;
using vdm::codecs::VideoWriterOptions;

namespace {

constexpr int kFrames = 16, kHeight = 48, kWidth = 64, kFps = 8;

// A moving test clip: a diagonal gradient drifting right, a blue ramp over time, and a bright
// square moving across. frames: [F, H, W, 3] uint8.
at::Tensor test_clip(int frames = kFrames, int height = kHeight, int width = kWidth) {
  at::Tensor clip = at::empty({frames, height, width, 3}, at::kByte);
  auto a = clip.accessor<uint8_t, 4>();
  for (int f = 0; f < frames; ++f)
    for (int y = 0; y < height; ++y)
      for (int x = 0; x < width; ++x) {
        bool in_square = x >= 4 + 3 * f && x < 16 + 3 * f && y >= 12 && y < 28;
        a[f][y][x][0] = in_square ? 240 : static_cast<uint8_t>((x + 2 * f) * 255 / (width + 2 * frames));
        a[f][y][x][1] = in_square ? 220 : static_cast<uint8_t>(y * 255 / height);
        a[f][y][x][2] = in_square ? 40 : static_cast<uint8_t>(60 + 8 * f);
      }
  return clip;
}

double mean_abs(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kFloat) - b.to(at::kFloat)).abs().mean().item<double>();
}

struct ProbeResult {
  int width = 0, height = 0;
  int64_t frames = -1;
  std::string rate;
  nlohmann::json tags;
};

// What ffprobe sees in `target` (a file, or an image2 pattern).
ProbeResult ffprobe(const std::string& target) {
  std::string out;
  int rc = vdm::test::run_command(
      "ffprobe -v error -count_frames -select_streams v:0 -show_entries "
      "stream=nb_read_frames,width,height,r_frame_rate:format_tags -of json '" + target + "'",
      &out);
  ProbeResult r;
  EXPECT_EQ(rc, 0) << out;
  if (rc != 0) return r;
  nlohmann::json j = nlohmann::json::parse(out);
  const auto& s = j.at("streams").at(0);
  r.width = s.at("width").get<int>();
  r.height = s.at("height").get<int>();
  r.frames = std::stoll(s.at("nb_read_frames").get<std::string>());
  r.rate = s.at("r_frame_rate").get<std::string>();
  if (j.contains("format") && j["format"].contains("tags")) r.tags = j["format"]["tags"];
  return r;
}

// A format tag by case-insensitive key (Matroska tags come back upper-case).
std::string tag(const nlohmann::json& tags, const std::string& key) {
  for (auto it = tags.begin(); it != tags.end(); ++it) {
    std::string k = it.key();
    if (k.size() == key.size() &&
        std::equal(k.begin(), k.end(), key.begin(), [](char a, char b) { return std::tolower(a) == std::tolower(b); }))
      return it.value().get<std::string>();
  }
  return "<absent>";
}

size_t entries(const std::string& dir) {
  return static_cast<size_t>(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

const std::map<std::string, std::string> kMetadata = {
    {"prompt", "a red ball bouncing — café scene"}, {"seed", "1234"}, {"steps", "25"},
    {"sampler", "ddim"}, {"model", "vdm-tiny"}};

class VideoWriterTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = vdm::test::make_temp_dir("video"); }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, ec);
    fs::remove_all(dir_, ec);
  }
  std::string file(const std::string& name) const { return dir_ + "/" + name; }

  // Writes the test clip to `name`, reads it back both ways, returns vdm's decode.
  at::Tensor round_trip(const std::string& name, double max_mean_abs, VideoWriterOptions opts = {},
                        int frames = kFrames, int height = kHeight, int width = kWidth) {
    at::Tensor clip = test_clip(frames, height, width);
    std::string path = file(name);
    opts.fps = kFps;
    opts.metadata = kMetadata;
    {
      VideoWriter w(path, width, height, opts);
      // Half through write_frames, half one frame at a time.
      w.write_frames(clip.slice(0, 0, frames / 2));
      for (int f = frames / 2; f < frames; ++f) w.write_frame(clip[f]);
      EXPECT_EQ(w.frames_written(), frames);
      w.finish();
    }
    bool sequence = fs::is_directory(path);
    EXPECT_TRUE(fs::exists(path)) << path;
    // Nothing but the output is left in the folder (no temporaries).
    EXPECT_EQ(entries(dir_), 1u);

    VideoReader reader(path);
    EXPECT_EQ(reader.width(), width);
    EXPECT_EQ(reader.height(), height);
    if (!sequence) {
      EXPECT_DOUBLE_EQ(reader.fps(), kFps);
    }
    at::Tensor decoded = reader.read_all();
    EXPECT_EQ(decoded.sizes(), clip.sizes()) << name;
    if (decoded.sizes() != clip.sizes()) return decoded;
    double err = mean_abs(decoded, clip);
    double worst_frame = 0;
    for (int f = 0; f < frames; ++f) worst_frame = std::max(worst_frame, mean_abs(decoded[f], clip[f]));
    EXPECT_LT(err, max_mean_abs) << name;
    EXPECT_LT(worst_frame, 2 * max_mean_abs) << name;
    std::cout << name << ": mean abs error " << err << " (worst frame " << worst_frame
              << ") on 0..255, bound " << max_mean_abs << "\n";
    RecordProperty(name + "_mean_abs", std::to_string(err));

    ProbeResult probe = ffprobe(sequence ? path + "/frame_%05d.png" : path);
    EXPECT_EQ(probe.frames, frames) << name;
    EXPECT_EQ(probe.width, width);
    EXPECT_EQ(probe.height, height);
    if (!sequence) {
      EXPECT_EQ(probe.rate, std::to_string(kFps) + "/1") << name;
    }
    last_tags_ = probe.tags;
    return decoded;
  }

  std::string dir_;
  nlohmann::json last_tags_;
};

TEST_F(VideoWriterTest, Mp4RoundTripKeepsEveryFrameAndTheMetadata) {
  round_trip("clip.mp4", 3.0);  // crf 18: measured 2.04, of which 1.42 is yuv420p itself (crf 0)
  EXPECT_EQ(tag(last_tags_, "prompt"), kMetadata.at("prompt"));
  EXPECT_EQ(tag(last_tags_, "seed"), "1234");
  EXPECT_EQ(tag(last_tags_, "sampler"), "ddim");
}

TEST_F(VideoWriterTest, WebmRoundTripKeepsEveryFrameAndTheMetadata) {
  round_trip("clip.webm", 3.0);  // crf 18: measured 2.14
  EXPECT_EQ(tag(last_tags_, "prompt"), kMetadata.at("prompt"));
  EXPECT_EQ(tag(last_tags_, "seed"), "1234");
  EXPECT_EQ(tag(last_tags_, "model"), "vdm-tiny");
}

TEST_F(VideoWriterTest, GifRoundTripWithOnePalette) {
  round_trip("clip.gif", 8.0);  // measured 6.75 (Bayer dither over 256 colours)
}

TEST_F(VideoWriterTest, PngSequenceRoundTripIsLossless) {
  at::Tensor decoded = round_trip("frames", 1e-9);
  EXPECT_TRUE(fs::exists(file("frames/frame_00000.png")));
  EXPECT_TRUE(fs::exists(file("frames/frame_00015.png")));
  EXPECT_FALSE(fs::exists(file("frames/frame_00016.png")));
  // Every frame carries the generation settings as PNG text.
  std::string out;
  ASSERT_EQ(vdm::test::run_command("ffprobe -v error -show_entries frame_tags=seed -of csv=p=0 '" +
                                       file("frames/frame_00007.png") + "'",
                                   &out),
            0);
  EXPECT_NE(out.find("1234"), std::string::npos) << out;
}

TEST_F(VideoWriterTest, PngPatternIntoAnExistingFolderReplacesOnlyItsFrames) {
  fs::create_directory(file("shots"));
  { std::ofstream(file("shots/notes.txt")) << "keep me"; }
  { std::ofstream(file("shots/shot_099.png")) << "stale frame"; }
  { std::ofstream(file("shots/other_000.png")) << "another pattern"; }
  at::Tensor clip = test_clip(3);
  VideoWriter w(file("shots/shot_%03d.png"), kWidth, kHeight);
  EXPECT_EQ(w.format(), VideoFormat::kPngSequence);
  w.write_frames(clip);
  w.finish();
  EXPECT_TRUE(fs::exists(file("shots/notes.txt")));
  EXPECT_TRUE(fs::exists(file("shots/other_000.png")));
  EXPECT_FALSE(fs::exists(file("shots/shot_099.png")));
  EXPECT_EQ(entries(file("shots")), 5u);  // notes, other, shot_000..002
  EXPECT_EQ(entries(dir_), 1u);           // no temporary folder left
  VideoReader r(file("shots/shot_%03d.png"));
  EXPECT_EQ(vdm::test::max_abs_diff(r.read_all(), clip), 0.0);
}

TEST_F(VideoWriterTest, OddSizes) {
  // H.264 with yuv420p refuses odd sizes up front, saying what to do; nothing is written.
  try {
    VideoWriter w(file("odd.mp4"), 33, 32);
    ADD_FAILURE() << "odd width accepted";
  } catch (const vdm::InputError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("width 33 is odd"), std::string::npos) << msg;
    EXPECT_NE(msg.find("use 32 or 34"), std::string::npos) << msg;
    EXPECT_NE(msg.find("odd.mp4"), std::string::npos) << msg;
  }
  EXPECT_THROW(VideoWriter(file("odd.mp4"), 32, 17), vdm::InputError);
  EXPECT_TRUE(fs::is_empty(dir_));
  // WebM and GIF take odd sizes.
  round_trip("odd.webm", 4.0, {}, 4, 17, 33);
  fs::remove(file("odd.webm"));
  round_trip("odd.gif", 10.0, {}, 4, 17, 33);
}

TEST_F(VideoWriterTest, UnwritableOutputFoldersAreInputErrorsAndLeaveNothing) {
  for (const char* name : {"missing/clip.mp4", "missing/clip.gif", "missing/frames"})
    EXPECT_THROW(VideoWriter(file(name), 32, 32), vdm::InputError) << name;
  { std::ofstream(file("a-file")) << "x"; }
  EXPECT_THROW(VideoWriter(file("a-file/clip.webm"), 32, 32), vdm::InputError);
  EXPECT_EQ(entries(dir_), 1u);
  if (::geteuid() != 0) {  // root ignores permission bits
    std::string locked = file("locked");
    fs::create_directory(locked);
    fs::permissions(locked, fs::perms::owner_read | fs::perms::owner_exec);
    for (const char* name : {"clip.mp4", "clip.webm", "frames"})
      EXPECT_THROW(VideoWriter(locked + "/" + name, 32, 32), vdm::InputError) << name;
    EXPECT_TRUE(fs::is_empty(locked));
  }
}

TEST_F(VideoWriterTest, AbandonedWritersLeaveNothing) {
  at::Tensor clip = test_clip(3, 32, 32);
  for (const char* name : {"a.mp4", "a.webm", "a.gif", "frames"}) {
    {
      VideoWriter w(file(name), 32, 32);
      w.write_frames(clip);
      EXPECT_EQ(entries(dir_), 1u);  // the temporary exists while writing
    }
    EXPECT_TRUE(fs::is_empty(dir_)) << name << " left " << fs::directory_iterator(dir_)->path();
  }
  // A pattern into an existing folder: its temporary folder sits next to that folder.
  fs::create_directory(file("shots"));
  {
    VideoWriter w(file("shots/pat_%04d.png"), 32, 32);
    w.write_frames(clip);
    EXPECT_EQ(entries(dir_), 2u);
  }
  EXPECT_EQ(entries(dir_), 1u);
  EXPECT_TRUE(fs::is_empty(file("shots")));
  fs::remove(file("shots"));
  // An existing file under the final name survives an abandoned rewrite untouched.
  { std::ofstream(file("keep.mp4")) << "previous"; }
  {
    VideoWriter w(file("keep.mp4"), 32, 32);
    w.write_frames(clip);
  }
  EXPECT_EQ(entries(dir_), 1u);
  EXPECT_EQ(fs::file_size(file("keep.mp4")), 8u);
}

TEST_F(VideoWriterTest, MisuseIsReported) {
  EXPECT_THROW(VideoWriter(file("a.avi"), 32, 32), vdm::InputError);
  EXPECT_THROW(VideoWriter(file("single.png"), 32, 32), vdm::InputError);
  VideoWriterOptions bad_preset;
  bad_preset.preset = "warp";
  EXPECT_THROW(VideoWriter(file("a.mp4"), 32, 32, bad_preset), vdm::InputError);
  VideoWriterOptions bad_crf;
  bad_crf.crf = 60;
  EXPECT_THROW(VideoWriter(file("a.mp4"), 32, 32, bad_crf), vdm::InputError);
  VideoWriterOptions bad_fps;
  bad_fps.fps = 0;
  EXPECT_THROW(VideoWriter(file("a.gif"), 32, 32, bad_fps), vdm::InputError);
  EXPECT_TRUE(fs::is_empty(dir_));

  VideoWriter w(file("a.mp4"), 32, 32);
  EXPECT_THROW(w.write_frame(at::zeros({32, 32, 3}, at::kFloat)), vdm::InputError);
  EXPECT_THROW(w.write_frame(at::zeros({32, 30, 3}, at::kByte)), vdm::InputError);
  EXPECT_THROW(w.write_frames(at::zeros({32, 32, 3}, at::kByte)), vdm::InputError);
  EXPECT_THROW(w.finish(), vdm::Error);  // no frames yet
  w.write_frame(at::zeros({32, 32, 3}, at::kByte));  // still usable after rejected input
  w.finish();
  EXPECT_THROW(w.write_frame(at::zeros({32, 32, 3}, at::kByte)), vdm::Error);
  EXPECT_EQ(ffprobe(file("a.mp4")).frames, 1);
  // Format given explicitly, whatever the extension.
  VideoWriterOptions as_webm;
  as_webm.format = "webm";
  VideoWriter w2(file("clip.video"), 32, 32, as_webm);
  w2.write_frame(at::full({32, 32, 3}, 128, at::kByte));
  w2.finish();
  EXPECT_NEAR(VideoReader(file("clip.video")).read_all().to(at::kFloat).mean().item<double>(), 128, 2);
}

TEST_F(VideoWriterTest, ReaderStreamsAndReportsBrokenFiles) {
  at::Tensor clip = test_clip();
  {
    VideoWriter w(file("clip.mp4"), kWidth, kHeight);
    w.write_frames(clip);
    w.finish();
  }
  VideoReader r(file("clip.mp4"));
  EXPECT_EQ(r.frame_count(), kFrames);
  at::Tensor first;
  ASSERT_TRUE(r.read(first));
  EXPECT_EQ(first.sizes(), (at::IntArrayRef{kHeight, kWidth, 3}));
  EXPECT_EQ(r.read_all(5).size(0), 5);
  vdm::codecs::RgbImage img;
  int rest = 0;
  while (r.read(img)) ++rest;
  EXPECT_EQ(rest, kFrames - 6);
  EXPECT_FALSE(r.read(first));

  auto expect_fault = [](const std::string& path) {
    try {
      VideoReader bad(path);
      bad.read_all();
      ADD_FAILURE() << "no exception for " << path;
    } catch (const vdm::CodecError& e) {
      EXPECT_TRUE(e.input_fault()) << e.what();
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  };
  expect_fault(file("missing.mp4"));
  { std::ofstream(file("empty.mp4")); }
  expect_fault(file("empty.mp4"));
  {
    std::ofstream out(file("noise.webm"), std::ios::binary);
    for (int i = 0; i < 5000; ++i) out.put(static_cast<char>((i * 31 + 7) % 253));
  }
  expect_fault(file("noise.webm"));
}

}  // namespace
