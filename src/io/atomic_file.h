// Write-then-rename output files: data goes to a temporary name in the target folder and is
// renamed over the final name only by commit(). Destroyed without commit(), the temporary is
// removed, so a crash or an error never leaves a half-written file under the final name.
#pragma once
#include <cstddef>
#include <cstdio>
#include <string>

namespace vdm::io {

// A temporary path next to `final_path`: "<dir>/.<name>.<pid>.<n>.tmp" (hidden, unique).
std::string temp_path_for(const std::string& final_path);

class AtomicFile {
 public:
  explicit AtomicFile(std::string final_path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void write(const std::string& s) { write(s.data(), s.size()); }
  // fsync, close and rename onto the final path. Throws Error with the OS message on failure
  // (for example a full disk), leaving no file under the final name.
  void commit();
  const std::string& temp_path() const { return temp_; }

 private:
  std::string final_;
  std::string temp_;
  std::FILE* f_ = nullptr;
};

// Writes a whole string to `path` atomically.
void write_file_atomic(const std::string& path, const std::string& contents);

// Renames `temp` onto `final_path`, throwing Error naming both on failure.
void commit_rename(const std::string& temp, const std::string& final_path);

}  // namespace vdm::io
