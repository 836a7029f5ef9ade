#include "core/log.h"

#include <atomic>
#include <cstdio>

namespace vdm::log {
namespace {
std::atomic<Level> g_level{Level::kInfo};
}

void set_level(Level l) { g_level = l; }
Level level() { return g_level; }

void write(Level l, std::string_view message) {
  const char* tag = l == Level::kWarn ? "warning: " : (l == Level::kError ? "error: " : "");
  std::fprintf(stderr, "%s%.*s\n", tag, static_cast<int>(message.size()), message.data());
  std::fflush(stderr);
}

}  // namespace vdm::log
