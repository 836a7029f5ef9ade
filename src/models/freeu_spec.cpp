#include "models/freeu_spec.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>

#include "core/error.h"

namespace vdm::models {

FreeU parse_freeu(const std::string& text, const std::string& flag) {
  const std::string example = "e.g. b1=1.2,b2=1.4,s1=0.9,s2=0.2";
  std::map<std::string, double> values;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t comma = std::min(text.find(',', begin), text.size());
    const std::string item = text.substr(begin, comma - begin);
    const size_t eq = item.find('=');
    const std::string key = item.substr(0, eq);
    if (eq == std::string::npos || (key != "b1" && key != "b2" && key != "s1" && key != "s2"))
      throw InputError(fmt::format("{} '{}': '{}' is not KEY=VALUE with KEY one of b1, b2, s1, s2; {}", flag, text,
                                   item, example));
    const std::string number = item.substr(eq + 1);
    double v = 0;
    const auto parsed = std::from_chars(number.data(), number.data() + number.size(), v);
    if (parsed.ec != std::errc() || parsed.ptr != number.data() + number.size() || !std::isfinite(v) || v <= 0)
      throw InputError(fmt::format("{} '{}': {} must be a positive number (1 leaves that factor as it is), got '{}'",
                                   flag, text, key, number));
    if (!values.emplace(key, v).second)
      throw InputError(fmt::format("{} '{}': {} is given twice; give each of b1, b2, s1, s2 once", flag, text, key));
    begin = comma + 1;
  }
  for (const char* key : {"b1", "b2", "s1", "s2"})
    if (!values.count(key))
      throw InputError(fmt::format("{} '{}': {} is missing; give all four of b1, b2, s1, s2 ({})", flag, text, key,
                                   example));
  return FreeU{values.at("b1"), values.at("b2"), values.at("s1"), values.at("s2")};
}

std::string describe_freeu(const FreeU& f) {
  return fmt::format("b1={},b2={},s1={},s2={}", f.b1, f.b2, f.s1, f.s2);
}

}  // namespace vdm::models
