#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"

namespace vdm::io {

namespace {
struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4},
    {DType::I16, "I16", 2}, {DType::I8, "I8", 1},   {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
};
// A header larger than this is not a real model file (the format's own limit is 100 MB).
constexpr uint64_t kMaxHeader = 100ull << 20;
}  // namespace

DType dtype_from_string(const std::string& name, const std::string& file, const std::string& key) {
  for (const auto& d : kDTypes)
    if (name == d.name) return d.dtype;
  throw WeightsError(fmt::format(
      "{}: tensor '{}' has unknown dtype '{}'; expected one of F64, F32, F16, BF16, I64, I32, "
      "I16, I8, U8, BOOL",
      file, key, name));
}

const char* dtype_to_string(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.name;
  return "?";
}

size_t dtype_size(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.size;
  return 0;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw WeightsError(fmt::format("{}: cannot open weights file: {}; check the path and permissions",
                                   path, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw WeightsError(fmt::format("{}: not a regular file; expected a .safetensors file", path));
  }
  map_size_ = static_cast<size_t>(st.st_size);
  if (map_size_ > 0) {
    map_ = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map_ == MAP_FAILED) {
      map_ = nullptr;
      ::close(fd);
      throw WeightsError(fmt::format("{}: cannot map file into memory: {}", path, std::strerror(errno)));
    }
  }
  ::close(fd);
  try {
    parse(static_cast<const uint8_t*>(map_), map_size_);
  } catch (...) {
    if (map_) ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::SafetensorsFile(std::vector<uint8_t> bytes, const std::string& name)
    : path_(name), owned_(std::move(bytes)) {
  parse(owned_.data(), owned_.size());
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

void SafetensorsFile::parse(const uint8_t* bytes, size_t size) {
  if (size < 8)
    throw WeightsError(fmt::format(
        "{}: truncated safetensors file: {} bytes, expected at least 8 (header length); the file "
        "is incomplete, download or copy it again",
        path_, size));
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > size - 8)
    throw WeightsError(fmt::format(
        "{}: header length {} runs past the end of the file ({} bytes after the length field); "
        "the file is truncated or not a safetensors file",
        path_, header_len, size - 8));
  if (header_len > kMaxHeader)
    throw WeightsError(fmt::format("{}: header length {} exceeds the {} byte limit", path_,
                                   header_len, kMaxHeader));
  const char* hbegin = reinterpret_cast<const char*>(bytes + 8);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(hbegin, hbegin + header_len);
  } catch (const nlohmann::json::exception& e) {
    throw WeightsError(fmt::format("{}: header is not valid JSON ({}); the file is corrupt", path_,
                                   e.what()));
  }
  if (!header.is_object())
    throw WeightsError(fmt::format("{}: header is JSON {} but must be an object", path_,
                                   header.type_name()));
  const uint8_t* buffer = bytes + 8 + header_len;
  const uint64_t buffer_size = size - 8 - header_len;

  struct Range {
    uint64_t begin, end;
    std::string key;
  };
  std::vector<Range> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    const auto& entry = it.value();
    if (key == "__metadata__") {
      if (!entry.is_object())
        throw WeightsError(fmt::format("{}: __metadata__ must be an object of strings", path_));
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string())
          throw WeightsError(fmt::format("{}: __metadata__ value '{}' must be a string, got {}",
                                         path_, m.key(), m.value().type_name()));
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets"))
      throw WeightsError(fmt::format(
          "{}: tensor '{}' entry must be an object with dtype, shape and data_offsets", path_, key));
    const auto& jd = entry["dtype"];
    const auto& js = entry["shape"];
    const auto& jo = entry["data_offsets"];
    if (!jd.is_string())
      throw WeightsError(fmt::format("{}: tensor '{}' dtype must be a string", path_, key));
    TensorView view;
    view.dtype = dtype_from_string(jd.get<std::string>(), path_, key);
    if (!js.is_array())
      throw WeightsError(fmt::format("{}: tensor '{}' shape must be an array", path_, key));
    uint64_t numel = 1;
    for (const auto& d : js) {
      if (!d.is_number_unsigned())
        throw WeightsError(fmt::format(
            "{}: tensor '{}' shape {} must hold non-negative integers", path_, key, js.dump()));
      uint64_t v = d.get<uint64_t>();
      if (v > (1ull << 40) || (v != 0 && numel > (1ull << 50) / v))
        throw WeightsError(fmt::format("{}: tensor '{}' shape {} is too large", path_, key, js.dump()));
      numel *= v;
      view.shape.push_back(static_cast<int64_t>(v));
    }
    if (!jo.is_array() || jo.size() != 2 || !jo[0].is_number_unsigned() ||
        !jo[1].is_number_unsigned())
      throw WeightsError(fmt::format(
          "{}: tensor '{}' data_offsets {} must be two non-negative integers [begin, end]", path_,
          key, jo.dump()));
    uint64_t b = jo[0].get<uint64_t>(), e = jo[1].get<uint64_t>();
    if (b > e || e > buffer_size)
      throw WeightsError(fmt::format(
          "{}: tensor '{}' data_offsets [{}, {}] out of range: the data buffer has {} bytes; the "
          "file is truncated or corrupt",
          path_, key, b, e, buffer_size));
    const uint64_t expected = numel * dtype_size(view.dtype);
    if (e - b != expected)
      throw WeightsError(fmt::format(
          "{}: tensor '{}' occupies {} bytes but dtype {} and shape {} need {} bytes", path_, key,
          e - b, dtype_to_string(view.dtype), js.dump(), expected));
    view.data = buffer + b;
    view.nbytes = static_cast<size_t>(e - b);
    ranges.push_back({b, e, key});
    tensors_.emplace(key, std::move(view));
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end && ranges[i].begin != ranges[i].end &&
        ranges[i - 1].begin != ranges[i - 1].end)
      throw WeightsError(fmt::format(
          "{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap; the file is corrupt", path_,
          ranges[i - 1].key, ranges[i - 1].begin, ranges[i - 1].end, ranges[i].key,
          ranges[i].begin, ranges[i].end));
  }
}

const TensorView& SafetensorsFile::at(const std::string& key) const {
  auto it = tensors_.find(key);
  if (it == tensors_.end())
    throw WeightsError(fmt::format("{}: tensor '{}' not found ({} tensors in the file)", path_, key,
                                   tensors_.size()));
  return it->second;
}

std::vector<std::string> SafetensorsFile::keys() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

void write_safetensors(const std::string& path, const std::map<std::string, TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& kv : metadata) m[kv.first] = kv.second;
    header["__metadata__"] = m;
  }
  uint64_t offset = 0;
  for (const auto& kv : tensors) {
    const auto& t = kv.second;
    uint64_t numel = 1;
    for (int64_t s : t.shape) numel *= static_cast<uint64_t>(s);
    if (numel * dtype_size(t.dtype) != t.nbytes)
      throw Error(fmt::format("write_safetensors {}: tensor '{}' has {} bytes, shape needs {}", path,
                              kv.first, t.nbytes, numel * dtype_size(t.dtype)));
    header[kv.first] = {{"dtype", dtype_to_string(t.dtype)},
                        {"shape", t.shape},
                        {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string hjson = header.dump();
  while ((8 + hjson.size()) % 8 != 0) hjson.push_back(' ');
  AtomicFile out(path);
  uint8_t len[8];
  uint64_t n = hjson.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  out.write(len, 8);
  out.write(hjson.data(), hjson.size());
  for (const auto& kv : tensors) out.write(kv.second.data, kv.second.nbytes);
  out.commit();
}

}  // namespace vdm::io
