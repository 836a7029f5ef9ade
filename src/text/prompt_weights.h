// Prompt weighting in the bracket syntax people write for Stable Diffusion front ends:
// "(word)" multiplies the attention to word by 1.1, "[word]" divides it by 1.1, "(word:1.5)" sets
// the factor, brackets nest and multiply, "\(" "\)" "\[" "\]" "\\" are the characters themselves,
// and a bracket left open applies to the rest of the prompt. Unlike those front ends, "BREAK" is
// plain text here (vdm encodes one text-encoder window per prompt).
//
// VideoPipeline (with --prompt-weights) encodes the segments' tokens in one sequence, multiplies
// each token's output embedding by its weight and rescales the whole so that its mean is what it
// was without weights.
#pragma once
#include <string>
#include <vector>

namespace vdm::text {

struct WeightedText {
  std::string text;
  double weight = 1.0;
  bool operator==(const WeightedText& o) const { return text == o.text && weight == o.weight; }
};

// Segments of `prompt` with their weights, neighbours of equal weight merged; [{"", 1}] for an
// empty prompt. InputError for an explicit weight that is not a number ("(x:1.2.3)").
std::vector<WeightedText> parse_prompt_weights(const std::string& prompt);

}  // namespace vdm::text
