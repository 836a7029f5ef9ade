// safetensors reader/writer: every dtype round-trips, fixture files load, and each kind of
// corruption gives its own specific WeightsError (never a crash).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/safetensors.h"
#include "io/tensor_io.h"
#include "tests/support/test_support.h"

namespace fs = std::filesystem;
using vdm::WeightsError;
using vdm::io::SafetensorsFile;

namespace {

std::vector<uint8_t> make_file(const std::string& header, size_t data_bytes,
                               int64_t header_len_override = -1) {
  uint64_t n = header_len_override >= 0 ? static_cast<uint64_t>(header_len_override) : header.size();
  std::vector<uint8_t> out(8);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.resize(out.size() + data_bytes, 0);
  return out;
}

std::string error_of(std::vector<uint8_t> bytes) {
  try {
    SafetensorsFile f(std::move(bytes), "test.safetensors");
  } catch (const WeightsError& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST(Safetensors, RoundTripEveryDtype) {
  std::string dir = vdm::test::make_temp_dir("st");
  vdm::io::TensorMap in;
  in["f64"] = at::randn({2, 3}, at::kDouble);
  in["f32"] = at::randn({4, 5});
  in["f16"] = at::randn({3}).to(at::kHalf);
  in["bf16"] = at::randn({2, 2, 2}).to(at::kBFloat16);
  in["i64"] = at::arange(-5, 5, at::kLong);
  in["i32"] = at::arange(0, 7, at::kInt);
  in["i16"] = at::arange(-3, 3, at::kShort);
  in["i8"] = at::arange(-100, 100, 7, at::kChar);
  in["u8"] = at::arange(0, 255, 3, at::kByte);
  in["bool"] = at::rand({9}) > 0.5;
  in["scalar"] = at::scalar_tensor(3.5);
  in["empty"] = at::zeros({0, 4});
  std::string path = dir + "/all.safetensors";
  vdm::io::save_safetensors(path, in, {{"format", "pt"}, {"note", "round trip"}});

  SafetensorsFile raw(path);
  EXPECT_EQ(raw.metadata().at("note"), "round trip");
  auto out = vdm::io::load_safetensors(path);
  ASSERT_EQ(out.size(), in.size());
  for (const auto& kv : in) {
    SCOPED_TRACE(kv.first);
    const at::Tensor& got = out.at(kv.first);
    EXPECT_EQ(got.scalar_type(), kv.second.scalar_type());
    EXPECT_EQ(got.sizes(), kv.second.sizes());
    EXPECT_TRUE(at::equal(got, kv.second));
  }
  // No temporary files left next to the output.
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string(), "all.safetensors");
}

TEST(Safetensors, HeaderIsEightByteAligned) {
  std::string dir = vdm::test::make_temp_dir("st");
  vdm::io::save_safetensors(dir + "/a.safetensors", {{"x", at::ones({3})}});
  std::ifstream f(dir + "/a.safetensors", std::ios::binary);
  uint8_t len[8];
  f.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  EXPECT_EQ((8 + n) % 8, 0u);
}

TEST(Safetensors, FixtureFilesLoad) {
  VDM_REQUIRE_FIXTURES(root);
  for (const char* rel : {"t2v_pipeline/unet/diffusion_pytorch_model.safetensors",
                          "t2v_pipeline/vae/diffusion_pytorch_model.safetensors",
                          "t2v_pipeline/text_encoder/model.safetensors",
                          "golden/unet.safetensors", "golden/schedulers.safetensors"}) {
    SCOPED_TRACE(rel);
    SafetensorsFile f(root + "/" + rel);
    EXPECT_GT(f.tensors().size(), 0u);
    auto tensors = vdm::io::load_safetensors(root + "/" + rel);
    EXPECT_EQ(tensors.size(), f.tensors().size());
  }
}

TEST(Safetensors, TruncatedBelowHeaderLength) {
  std::string e = error_of({1, 2, 3});
  EXPECT_NE(e.find("truncated safetensors file: 3 bytes"), std::string::npos) << e;
}

TEST(Safetensors, HeaderLengthPastEnd) {
  std::string e = error_of(make_file("{}", 0, 1000));
  EXPECT_NE(e.find("header length 1000 runs past the end"), std::string::npos) << e;
}

TEST(Safetensors, BadJson) {
  std::string e = error_of(make_file("{\"a\": [1,2", 0));
  EXPECT_NE(e.find("header is not valid JSON"), std::string::npos) << e;
}

TEST(Safetensors, HeaderNotAnObject) {
  std::string e = error_of(make_file("[1,2,3]", 0));
  EXPECT_NE(e.find("must be an object"), std::string::npos) << e;
}

TEST(Safetensors, UnknownDtype) {
  std::string e = error_of(
      make_file(R"({"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}})", 16));
  EXPECT_NE(e.find("tensor 'w' has unknown dtype 'F128'"), std::string::npos) << e;
}

TEST(Safetensors, OffsetsOutOfRange) {
  std::string e = error_of(
      make_file(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8));
  EXPECT_NE(e.find("tensor 'w' data_offsets [0, 16] out of range: the data buffer has 8 bytes"),
            std::string::npos)
      << e;
}

TEST(Safetensors, OffsetsReversed) {
  std::string e = error_of(
      make_file(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 8));
  EXPECT_NE(e.find("out of range"), std::string::npos) << e;
}

TEST(Safetensors, SizeDoesNotMatchShape) {
  std::string e = error_of(
      make_file(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8));
  EXPECT_NE(e.find("occupies 8 bytes but dtype F32 and shape [3] need 12 bytes"), std::string::npos)
      << e;
}

TEST(Safetensors, OverlappingRanges) {
  std::string e = error_of(make_file(
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
      R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
      12));
  EXPECT_NE(e.find("tensors 'a' [0, 8] and 'b' [4, 12] overlap"), std::string::npos) << e;
}

TEST(Safetensors, NegativeShape) {
  std::string e = error_of(
      make_file(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})", 0));
  EXPECT_NE(e.find("must hold non-negative integers"), std::string::npos) << e;
}

TEST(Safetensors, MissingFile) {
  try {
    SafetensorsFile f("/nonexistent/x.safetensors");
    FAIL() << "expected an error";
  } catch (const WeightsError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/x.safetensors: cannot open"), std::string::npos);
  }
}

TEST(Safetensors, TruncatedRealFile) {
  std::string dir = vdm::test::make_temp_dir("st");
  std::string path = dir + "/t.safetensors";
  vdm::io::save_safetensors(path, {{"x", at::ones({64})}});
  fs::resize_file(path, fs::file_size(path) - 10);
  try {
    SafetensorsFile f(path);
    FAIL() << "expected an error";
  } catch (const WeightsError& e) {
    EXPECT_NE(std::string(e.what()).find("out of range"), std::string::npos) << e.what();
  }
}
