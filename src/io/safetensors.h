// safetensors reader (mmap, fully validated) and writer. This file does not depend on LibTorch,
// so parsers can be fuzzed alone; src/io/tensor_io.h converts to and from at::Tensor.
//
// Format: 8-byte little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}
// then the data buffer; offsets are relative to the buffer start.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace vdm::io {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

// "F32" -> DType; throws WeightsError for unknown names.
DType dtype_from_string(const std::string& name, const std::string& file, const std::string& key);
const char* dtype_to_string(DType dtype);
size_t dtype_size(DType dtype);

struct TensorView {
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapped file (valid while the file is alive)
  size_t nbytes = 0;
  int64_t numel() const;
};

// A memory-mapped, validated safetensors file. Construction checks everything: header length
// inside the file, JSON well-formed, known dtypes, shapes non-negative, offsets inside the data
// buffer and matching dtype*shape, no two tensors overlapping. Each failure is a WeightsError
// naming the file, the key and what was expected.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  // Parse an in-memory buffer (used by fuzzers and tests); `name` appears in errors.
  SafetensorsFile(std::vector<uint8_t> bytes, const std::string& name);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& key) const { return tensors_.count(key) > 0; }
  // Throws WeightsError naming the file when absent.
  const TensorView& at(const std::string& key) const;
  std::vector<std::string> keys() const;

 private:
  void parse(const uint8_t* bytes, size_t size);

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<uint8_t> owned_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

struct TensorToWrite {
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // contiguous, little-endian
  size_t nbytes;
};

// Writes tensors (sorted by name, 8-byte aligned header) and metadata to `path` atomically:
// a temporary file in the same folder, renamed over `path` when complete.
void write_safetensors(const std::string& path, const std::map<std::string, TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace vdm::io
