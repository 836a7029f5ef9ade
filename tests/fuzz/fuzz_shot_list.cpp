// libFuzzer target: shot lists (batch::parse_shot_list), YAML or JSON. Every input must give a
// list of shots whose values are inside the documented limits, or one ConfigError (InputError).
// The list's folder holds a still and a clip, so `image:` and `video:` entries can resolve.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "batch/shot_list.h"
#include "core/error.h"

namespace fs = std::filesystem;

namespace {
std::string g_dir;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  char tmpl[] = "/tmp/vdm-fuzz-shots-XXXXXX";
  if (!::mkdtemp(tmpl)) std::abort();
  g_dir = tmpl;
  std::ofstream(fs::path(g_dir) / "still.png") << "png";
  std::ofstream(fs::path(g_dir) / "clip.mp4") << "mp4";
  std::atexit([] {
    std::error_code ec;
    fs::remove_all(g_dir, ec);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using vdm::batch::ShotLimits;
  try {
    vdm::batch::ShotList list = vdm::batch::parse_shot_list(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz.yaml", g_dir);
    std::set<std::string> ids;
    for (const auto& shot : list.shots) {
      // What the parser promises about a list it accepts.
      if (shot.id.empty() || shot.id.size() > ShotLimits::kMaxIdLength) std::abort();
      if (!ids.insert(shot.id).second) std::abort();
      if (shot.frames < 1 || shot.frames > ShotLimits::kMaxFrames) std::abort();
      if (shot.fps < 1 || shot.fps > ShotLimits::kMaxFps) std::abort();
      if (shot.steps < 1 || shot.steps > ShotLimits::kMaxSteps) std::abort();
      if (shot.width != 0 && (shot.width < ShotLimits::kMinSize || shot.width > ShotLimits::kMaxSize))
        std::abort();
      if (shot.height != 0 &&
          (shot.height < ShotLimits::kMinSize || shot.height > ShotLimits::kMaxSize))
        std::abort();
      if (!(shot.guidance >= 0 && shot.guidance <= ShotLimits::kMaxGuidance)) std::abort();
      if (!shot.image.empty() && !shot.video.empty()) std::abort();
      if (shot.output.empty() || shot.output.find('/') != std::string::npos) std::abort();
    }
  } catch (const vdm::InputError&) {
  }
  return 0;
}
