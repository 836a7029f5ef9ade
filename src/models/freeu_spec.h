// FreeU's four factors (models/freeu.h) and their text form, for the command line and shot lists.
// No LibTorch here: the fuzzed shot-list reader uses it.
#pragma once
#include <string>

namespace vdm::models {

struct FreeU {
  double b1 = 1.0, b2 = 1.0;  // backbone factors of stages 1 and 2
  double s1 = 1.0, s2 = 1.0;  // skip-connection factors of stages 1 and 2
  bool operator==(const FreeU& o) const { return b1 == o.b1 && b2 == o.b2 && s1 == o.s1 && s2 == o.s2; }
  bool operator!=(const FreeU& o) const { return !(*this == o); }
};

// "b1=1.2,b2=1.4,s1=0.9,s2=0.2" (any order, all four) -> FreeU; InputError naming `flag` when a
// key is missing, repeated or unknown, or a value is not a positive number.
FreeU parse_freeu(const std::string& text, const std::string& flag = "--freeu");
// The inverse: "b1=1.2,b2=1.4,s1=0.9,s2=0.2".
std::string describe_freeu(const FreeU& f);

}  // namespace vdm::models
