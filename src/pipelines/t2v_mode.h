// The text-to-video modes (GenerateOptions::t2v_mode), in a header of their own so that the shot
// list parser can check a name without the pipeline's LibTorch headers.
#pragma once
#include <string>

namespace vdm::pipelines {

// True for "joint" (every frame in one pass) or "factorized" (a first pass's frame 0, animated).
inline bool is_t2v_mode(const std::string& name) { return name == "joint" || name == "factorized"; }

}  // namespace vdm::pipelines
