// Formatting tensor shapes for error messages: "[2, 4, 16, 16]".
#pragma once
#include <c10/util/ArrayRef.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <string>

namespace vdm::models {

inline std::string shape_str(c10::IntArrayRef sizes) { return fmt::format("[{}]", fmt::join(sizes, ", ")); }

}  // namespace vdm::models
