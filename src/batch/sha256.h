// SHA-256 (FIPS 180-4) of byte strings and files, as lowercase hex. Used to fingerprint rendered
// outputs in the batch manifest and to derive stable per-shot seeds and shard assignments.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace vdm::batch {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  void update(std::string_view s) { update(s.data(), s.size()); }
  // Finishes the hash; the object must not be updated afterwards.
  std::array<uint8_t, 32> digest();
  std::string hex_digest();

 private:
  void block(const uint8_t* p);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_{};
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(std::string_view data);
// Hashes a file's contents; throws InputError naming the file when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace vdm::batch
