// Joining clips: packet copy when the streams match, re-encoding otherwise; frame counts checked
// through VideoReader and, when installed, independently through ffprobe.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "batch/video_concat.h"
#include "codecs/video_reader.h"
#include "codecs/video_writer.h"
#include "core/error.h"
#include "tests/support/test_support.h"

namespace fs = std::filesystem;
using vdm::batch::concat_videos;
using vdm::batch::ConcatResult;

namespace {

// A clip whose frame i is a flat colour encoding (clip, i), so order can be checked after decoding.
at::Tensor make_frames(int clip, int64_t n, int64_t h, int64_t w) {
  at::Tensor f = at::empty({n, h, w, 3}, at::kByte);
  for (int64_t i = 0; i < n; ++i) {
    f[i].select(2, 0).fill_(40 + 60 * clip);
    f[i].select(2, 1).fill_(20 + 25 * i);
    f[i].select(2, 2).fill_(128);
  }
  return f;
}

std::string write_clip(const std::string& path, int clip, int64_t n, int h, int w, int fps) {
  vdm::codecs::VideoWriterOptions o;
  o.fps = fps;
  o.preset = "ultrafast";
  vdm::codecs::VideoWriter writer(path, w, h, o);
  writer.write_frames(make_frames(clip, n, h, w));
  writer.finish();
  return path;
}

int64_t ffprobe_frames(const std::string& path) {
  std::string out;
  int rc = vdm::test::run_command("ffprobe -v error -select_streams v:0 -count_frames "
                                  "-show_entries stream=nb_read_frames -of csv=p=0 '" +
                                      path + "'",
                                  &out);
  if (rc != 0) return -1;
  return std::atoll(out.c_str());
}

bool have_ffprobe() { return vdm::test::run_command("ffprobe -version") == 0; }

class ConcatTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = vdm::test::make_temp_dir("concat"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string p(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

}  // namespace

TEST_F(ConcatTest, MatchingClipsAreRemuxedLosslesslyInOrder) {
  std::vector<std::string> clips = {write_clip(p("a.mp4"), 0, 5, 48, 64, 8),
                                    write_clip(p("b.mp4"), 1, 3, 48, 64, 8),
                                    write_clip(p("c.mp4"), 2, 4, 48, 64, 8)};
  ConcatResult r = concat_videos(clips, p("all.mp4"));
  EXPECT_TRUE(r.remuxed) << r.reencode_reason;
  EXPECT_EQ(r.frames, 12);
  vdm::codecs::VideoReader joined(p("all.mp4"));
  at::Tensor all = joined.read_all();
  ASSERT_EQ(all.size(0), 12);
  EXPECT_NEAR(joined.fps(), 8.0, 1e-6);
  // Packets were copied: decoding the join gives exactly the decoded inputs, in order.
  int64_t at_frame = 0;
  for (const auto& c : clips) {
    at::Tensor src = vdm::codecs::VideoReader(c).read_all();
    EXPECT_TRUE(at::equal(all.narrow(0, at_frame, src.size(0)), src)) << c;
    at_frame += src.size(0);
  }
  if (have_ffprobe()) {
    EXPECT_EQ(ffprobe_frames(p("all.mp4")), 12);
  }
  for (const auto& e : fs::directory_iterator(dir_)) EXPECT_NE(e.path().extension(), ".tmp");
}

TEST_F(ConcatTest, DifferentSizesAreReencodedToTheFirstSize) {
  std::vector<std::string> clips = {write_clip(p("a.mp4"), 0, 4, 48, 64, 8),
                                    write_clip(p("b.mp4"), 1, 3, 32, 32, 8)};
  ConcatResult r = concat_videos(clips, p("all.mp4"));
  EXPECT_FALSE(r.remuxed);
  EXPECT_NE(r.reencode_reason.find("32x32"), std::string::npos) << r.reencode_reason;
  EXPECT_EQ(r.frames, 7);
  vdm::codecs::VideoReader joined(p("all.mp4"));
  EXPECT_EQ(joined.width(), 64);
  EXPECT_EQ(joined.height(), 48);
  at::Tensor all = joined.read_all();
  EXPECT_EQ(all.size(0), 7);
  // The second clip's red level (100) shows after the first clip's (40); the square clip is
  // scaled to 48x48 and centred between black bars.
  auto red = [](const at::Tensor& f) { return f.select(2, 0).to(at::kFloat).mean().item<float>(); };
  EXPECT_NEAR(red(all[0]), 40, 6);
  EXPECT_NEAR(red(all[5].narrow(1, 12, 40)), 100, 8);
  EXPECT_LT(red(all[5].narrow(1, 0, 4)), 24);
  if (have_ffprobe()) {
    EXPECT_EQ(ffprobe_frames(p("all.mp4")), 7);
  }
}

TEST_F(ConcatTest, DifferentRatesAreResampledKeepingDurations) {
  // 6 frames at 8 fps (0.75 s) then 8 frames at 16 fps (0.5 s): at 8 fps, 6 + 4 frames.
  std::vector<std::string> clips = {write_clip(p("a.mp4"), 0, 6, 32, 32, 8),
                                    write_clip(p("b.mp4"), 1, 8, 32, 32, 16)};
  ConcatResult r = concat_videos(clips, p("all.mp4"));
  EXPECT_FALSE(r.remuxed);
  EXPECT_NE(r.reencode_reason.find("frame rate"), std::string::npos) << r.reencode_reason;
  EXPECT_EQ(r.frames, 10);
  EXPECT_EQ(vdm::codecs::VideoReader(p("all.mp4")).read_all().size(0), 10);
}

TEST_F(ConcatTest, OtherContainersAndGifAreReencoded) {
  std::vector<std::string> clips = {write_clip(p("a.mp4"), 0, 3, 32, 32, 8),
                                    write_clip(p("b.mp4"), 1, 2, 32, 32, 8)};
  ConcatResult webm = concat_videos(clips, p("all.webm"));
  EXPECT_FALSE(webm.remuxed);
  EXPECT_EQ(webm.frames, 5);
  EXPECT_EQ(vdm::codecs::VideoReader(p("all.webm")).read_all().size(0), 5);
  ConcatResult gif = concat_videos(clips, p("all.gif"));
  EXPECT_FALSE(gif.remuxed);
  EXPECT_EQ(vdm::codecs::VideoReader(p("all.gif")).read_all().size(0), 5);
  // The same mp4 clips into .mkv: Matroska holds H.264, so packets are copied.
  ConcatResult mkv = concat_videos(clips, p("all.mkv"));
  EXPECT_TRUE(mkv.remuxed) << mkv.reencode_reason;
  EXPECT_EQ(vdm::codecs::VideoReader(p("all.mkv")).read_all().size(0), 5);
  // Forced re-encoding.
  vdm::batch::ConcatOptions o;
  o.allow_remux = false;
  EXPECT_FALSE(concat_videos(clips, p("forced.mp4"), o).remuxed);
}

TEST_F(ConcatTest, BadInputsLeaveNoOutput) {
  std::string good = write_clip(p("a.mp4"), 0, 3, 32, 32, 8);
  std::ofstream(p("corrupt.mp4")) << "this is not a video";
  try {
    concat_videos({good, p("corrupt.mp4")}, p("all.mp4"));
    FAIL() << "expected CodecError";
  } catch (const vdm::CodecError& e) {
    EXPECT_TRUE(e.input_fault());
    EXPECT_NE(std::string(e.what()).find("corrupt.mp4"), std::string::npos) << e.what();
  }
  EXPECT_THROW(concat_videos({good, p("missing.mp4")}, p("all.mp4")), vdm::CodecError);
  EXPECT_THROW(concat_videos({}, p("all.mp4")), vdm::InputError);
  EXPECT_FALSE(fs::exists(p("all.mp4")));
  for (const auto& e : fs::directory_iterator(dir_)) EXPECT_NE(e.path().extension(), ".tmp");
}
