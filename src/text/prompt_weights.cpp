#include "text/prompt_weights.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstdlib>
#include <regex>

#include "core/error.h"

namespace vdm::text {

namespace {

constexpr double kBracketFactor = 1.1;

// One lexical unit: an escaped character, an opening bracket, ":number)" (group 1: the number), a
// closing bracket, a run of plain text, or a lone colon.
const std::regex& unit_pattern() {
  static const std::regex re(R"(\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:)");
  return re;
}

}  // namespace

std::vector<WeightedText> parse_prompt_weights(const std::string& prompt) {
  std::vector<WeightedText> out;
  std::vector<size_t> round, square;  // where each open bracket's text starts in `out`
  auto multiply_from = [&](size_t start, double factor) {
    for (size_t i = start; i < out.size(); ++i) out[i].weight *= factor;
  };
  for (auto it = std::sregex_iterator(prompt.begin(), prompt.end(), unit_pattern()); it != std::sregex_iterator();
       ++it) {
    const std::string unit = it->str();
    if (unit[0] == '\\') {
      out.push_back({unit.substr(1), 1.0});
    } else if (unit == "(") {
      round.push_back(out.size());
    } else if (unit == "[") {
      square.push_back(out.size());
    } else if ((*it)[1].matched && !round.empty()) {
      const std::string number = (*it)[1].str();
      char* end = nullptr;
      errno = 0;
      const double factor = std::strtod(number.c_str(), &end);
      if (end != number.c_str() + number.size() || errno == ERANGE)
        throw InputError(fmt::format("prompt weight '{}' in '{}' is not a number; write (text:1.2)", number, prompt));
      multiply_from(round.back(), factor);
      round.pop_back();
    } else if (unit == ")" && !round.empty()) {
      multiply_from(round.back(), kBracketFactor);
      round.pop_back();
    } else if (unit == "]" && !square.empty()) {
      multiply_from(square.back(), 1.0 / kBracketFactor);
      square.pop_back();
    } else {
      out.push_back({unit, 1.0});
    }
  }
  // Brackets left open weight everything after them.
  for (size_t start : round) multiply_from(start, kBracketFactor);
  for (size_t start : square) multiply_from(start, 1.0 / kBracketFactor);
  if (out.empty()) return {{"", 1.0}};
  std::vector<WeightedText> merged{out.front()};
  for (size_t i = 1; i < out.size(); ++i) {
    if (out[i].weight == merged.back().weight)
      merged.back().text += out[i].text;
    else
      merged.push_back(out[i]);
  }
  return merged;
}

}  // namespace vdm::text
