#include "io/atomic_file.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>

#include "core/error.h"

namespace vdm::io {

namespace fs = std::filesystem;

std::string temp_path_for(const std::string& final_path) {
  static std::atomic<int> counter{0};
  fs::path p(final_path);
  fs::path dir = p.parent_path();
  std::string name = fmt::format(".{}.{}.{}.tmp", p.filename().string(), ::getpid(), counter++);
  return (dir.empty() ? fs::path(name) : dir / name).string();
}

AtomicFile::AtomicFile(std::string final_path) : final_(std::move(final_path)) {
  temp_ = temp_path_for(final_);
  f_ = std::fopen(temp_.c_str(), "wb");
  if (!f_)
    throw InputError(fmt::format("{}: cannot create output file: {}; check that the folder exists "
                                 "and is writable",
                                 final_, std::strerror(errno)));
}

AtomicFile::~AtomicFile() {
  if (f_) {
    std::fclose(f_);
    std::remove(temp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) {
  if (n == 0) return;
  if (std::fwrite(data, 1, n, f_) != n)
    throw Error(fmt::format("{}: write failed: {}; free disk space or choose another output folder",
                            final_, std::strerror(errno)));
}

void AtomicFile::commit() {
  bool ok = std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0;
  int err = errno;
  ok = (std::fclose(f_) == 0) && ok;
  f_ = nullptr;
  if (!ok) {
    std::remove(temp_.c_str());
    throw Error(fmt::format("{}: write failed: {}; free disk space or choose another output folder",
                            final_, std::strerror(err ? err : errno)));
  }
  commit_rename(temp_, final_);
}

void commit_rename(const std::string& temp, const std::string& final_path) {
  if (std::rename(temp.c_str(), final_path.c_str()) != 0) {
    int err = errno;
    std::remove(temp.c_str());
    throw Error(fmt::format("{}: cannot move finished output into place from {}: {}", final_path,
                            temp, std::strerror(err)));
  }
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  AtomicFile f(path);
  f.write(contents);
  f.commit();
}

}  // namespace vdm::io
