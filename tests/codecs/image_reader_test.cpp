// Image decoding and PNG writing through FFmpeg: images made by the ffmpeg CLI are read back
// exactly (PNG) or within JPEG's loss; broken input gives CodecError with input_fault and the path.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "codecs/image_codec.h"
#include "codecs/image_reader.h"
#include "core/error.h"
#include "tests/support/test_support.h"

namespace fs = std::filesystem;
using vdm::codecs::read_image;

namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A string literal with embedded NULs.
template <size_t N>
std::string bytes_of(const char (&s)[N]) {
  return std::string(s, N - 1);
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// Runs an ffmpeg CLI command line (arguments after `ffmpeg -v error -y`), failing the test on error.
void ffmpeg(const std::string& args) {
  std::string out;
  int rc = vdm::test::run_command("ffmpeg -nostdin -v error -y " + args, &out);
  ASSERT_EQ(rc, 0) << "ffmpeg " << args << "\n" << out;
}

// The ffmpeg CLI's own decode of `path` as raw rgb24 (or gray) bytes.
at::Tensor cli_decode(const std::string& path, int h, int w, const std::string& pix_fmt = "rgb24") {
  std::string raw = path + "." + pix_fmt + ".raw";
  ffmpeg("-i '" + path + "' -f rawvideo -pix_fmt " + pix_fmt + " '" + raw + "'");
  std::string bytes = read_bytes(raw);
  int64_t c = pix_fmt == "gray" ? 1 : 3;
  EXPECT_EQ(static_cast<int64_t>(bytes.size()), h * w * c) << raw;
  return at::from_blob(bytes.data(), {h, w, c}, at::kByte).clone();
}

// Calls `fn`, expects CodecError with input_fault whose message contains `path` and `fragment`.
template <typename Fn>
void expect_input_fault(Fn fn, const std::string& path, const std::string& fragment) {
  try {
    fn();
    ADD_FAILURE() << "no exception for " << path;
  } catch (const vdm::CodecError& e) {
    EXPECT_TRUE(e.input_fault()) << e.what();
    EXPECT_EQ(e.exit_code(), 2);
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(fragment), std::string::npos) << "missing '" << fragment << "' in: " << msg;
  }
}

class ImageReaderTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = vdm::test::make_temp_dir("image"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string file(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

TEST_F(ImageReaderTest, ReadsPngWrittenByFfmpegExactly) {
  std::string png = file("testsrc.png");
  ffmpeg("-f lavfi -i testsrc=size=40x30 -frames:v 1 '" + png + "'");
  at::Tensor img = read_image(png);
  ASSERT_EQ(img.sizes(), (at::IntArrayRef{30, 40, 3}));
  EXPECT_EQ(img.scalar_type(), at::kByte);
  EXPECT_EQ(vdm::test::max_abs_diff(img, cli_decode(png, 30, 40)), 0.0);
  EXPECT_GT(img.to(at::kFloat).std().item<double>(), 20.0);  // a real picture, not a flat fill
}

TEST_F(ImageReaderTest, ReadsJpegWrittenByFfmpeg) {
  std::string png = file("src.png"), jpg = file("src.jpg");
  ffmpeg("-f lavfi -i testsrc2=size=64x48 -frames:v 1 '" + png + "'");
  ffmpeg("-i '" + png + "' -q:v 2 '" + jpg + "'");
  at::Tensor img = read_image(jpg);
  ASSERT_EQ(img.sizes(), (at::IntArrayRef{48, 64, 3}));
  // Against the lossless source: JPEG's loss (measured mean 1.3/255 at q 2 here).
  double vs_source = (img.to(at::kFloat) - read_image(png).to(at::kFloat)).abs().mean().item<double>();
  EXPECT_LT(vs_source, 6.0);
  // Against the CLI's own decode: at most YUV->RGB rounding differs (measured 0).
  double vs_cli = (img.to(at::kFloat) - cli_decode(jpg, 48, 64).to(at::kFloat)).abs().mean().item<double>();
  EXPECT_LT(vs_cli, 2.0);
  RecordProperty("jpeg_mean_abs_vs_source", std::to_string(vs_source));
  RecordProperty("jpeg_mean_abs_vs_cli", std::to_string(vs_cli));
  std::cout << "jpeg mean abs error vs source " << vs_source << ", vs ffmpeg CLI decode " << vs_cli
            << " (0..255)\n";
}

TEST_F(ImageReaderTest, ReadsGrayAndAlphaPngs) {
  std::string src = file("src.png"), gray = file("gray.png"), rgba = file("rgba.png");
  ffmpeg("-f lavfi -i testsrc2=size=32x24 -frames:v 1 '" + src + "'");
  ffmpeg("-i '" + src + "' -pix_fmt gray '" + gray + "'");
  ffmpeg("-i '" + src + "' -pix_fmt rgba '" + rgba + "'");
  at::Tensor g = read_image(gray);
  ASSERT_EQ(g.sizes(), (at::IntArrayRef{24, 32, 3}));
  at::Tensor expected_gray = cli_decode(gray, 24, 32, "gray").expand({24, 32, 3});
  EXPECT_EQ(vdm::test::max_abs_diff(g, expected_gray), 0.0);
  // Alpha is dropped; colour is the source's.
  EXPECT_EQ(vdm::test::max_abs_diff(read_image(rgba), read_image(src)), 0.0);
}

TEST_F(ImageReaderTest, WritePngRoundTripsExactlyWithTextChunks) {
  at::Tensor img = at::randint(0, 256, {21, 35, 3}, at::kByte);  // odd sizes on purpose
  std::string png = file("out.png");
  vdm::codecs::write_png(png, img, {{"prompt", "a red ball, café"}, {"seed", "42"}});
  EXPECT_EQ(vdm::test::max_abs_diff(read_image(png), img), 0.0);
  // No temporary left next to it.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
  std::string bytes = read_bytes(png);
  EXPECT_NE(bytes.find(bytes_of("tEXtseed\0" "42")), std::string::npos);
  EXPECT_NE(bytes.find(bytes_of("iTXtprompt\0\0\0\0\0" "a red ball, caf\xc3\xa9")), std::string::npos);
  // Other decoders accept the chunks (their CRCs): the CLI decodes it to the same pixels.
  EXPECT_EQ(vdm::test::max_abs_diff(cli_decode(png, 21, 35), img), 0.0);
  std::string out;
  ASSERT_EQ(vdm::test::run_command("ffprobe -v error -show_entries frame_tags=seed -of csv=p=0 '" + png + "'", &out), 0) << out;
  EXPECT_NE(out.find("42"), std::string::npos) << out;
  // Decoding from memory gives the same image as from the file.
  vdm::codecs::RgbImage mem = vdm::codecs::decode_image(
      reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "memory");
  EXPECT_EQ(vdm::test::max_abs_diff(vdm::codecs::to_tensor(mem), img), 0.0);
}

TEST_F(ImageReaderTest, WritePngRejectsBadTensorsAndFolders) {
  EXPECT_THROW(vdm::codecs::write_png(file("f.png"), at::zeros({8, 8, 3}, at::kFloat)), vdm::InputError);
  EXPECT_THROW(vdm::codecs::write_png(file("f.png"), at::zeros({8, 8, 4}, at::kByte)), vdm::InputError);
  EXPECT_THROW(vdm::codecs::write_png(file("missing/f.png"), at::zeros({8, 8, 3}, at::kByte)), vdm::InputError);
  EXPECT_TRUE(fs::is_empty(dir_));
  // Non-contiguous input (a transposed view) is written as its values.
  at::Tensor img = at::randint(0, 256, {10, 12, 3}, at::kByte);
  at::Tensor view = img.transpose(0, 1);
  vdm::codecs::write_png(file("t.png"), view);
  EXPECT_EQ(vdm::test::max_abs_diff(read_image(file("t.png")), view), 0.0);
}

TEST_F(ImageReaderTest, BrokenFilesGiveInputFaultNamingThePath) {
  std::string missing = file("does-not-exist.png");
  expect_input_fault([&] { read_image(missing); }, missing, "No such file or directory");

  std::string empty = file("empty.png");
  write_bytes(empty, "");
  expect_input_fault([&] { read_image(empty); }, empty, "empty");

  std::string garbage = file("garbage.png");
  std::string noise;
  for (int i = 0; i < 4096; ++i) noise.push_back(static_cast<char>((i * 7919 + 13) % 251));
  write_bytes(garbage, noise);
  expect_input_fault([&] { read_image(garbage); }, garbage, "failed");

  // A real PNG cut short: the header is fine, the pixel data is not.
  std::string whole = file("noise.png"), cut = file("cut.png");
  vdm::codecs::write_png(whole, at::randint(0, 256, {64, 64, 3}, at::kByte));
  std::string bytes = read_bytes(whole);
  write_bytes(cut, bytes.substr(0, bytes.size() / 2));
  expect_input_fault([&] { read_image(cut); }, cut, "failed");

  // A PNG signature followed by junk.
  std::string bad_chunk = file("badchunk.png");
  write_bytes(bad_chunk, bytes.substr(0, 8) + noise);
  expect_input_fault([&] { read_image(bad_chunk); }, bad_chunk, "failed");

  expect_input_fault([&] { read_image(dir_); }, dir_, "directory");
}

}  // namespace
