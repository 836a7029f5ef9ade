// The skip connections of a UNet3DConditionModel, named from its config alone (no LibTorch, so that
// `vdm info` and the fuzzed model-folder code can use it): DeepCache's branches (--deep-cache-branch).
#pragma once
#include <fmt/format.h>

#include <cstdint>
#include <string>
#include <vector>

namespace vdm::models {

// In the order the down path makes them: transformer_in's output, then per level one per layer (the
// output of its temp_attentions, or temp_convs in a block without attention) and one for the
// downsampler of every level but the last. E.g. "transformer_in (320 ch, 1/1)",
// "down_blocks.0.temp_attentions.0 (320 ch, 1/1)", "down_blocks.0.downsamplers.0 (320 ch, 1/2)".
inline std::vector<std::string> skip_connection_names(const std::vector<int64_t>& block_out_channels,
                                                      const std::vector<std::string>& down_block_types,
                                                      int64_t layers_per_block) {
  std::vector<std::string> names;
  if (block_out_channels.empty() || down_block_types.size() != block_out_channels.size()) return names;
  names.push_back(fmt::format("transformer_in ({} ch, 1/1)", block_out_channels[0]));
  for (size_t i = 0; i < block_out_channels.size(); ++i) {
    const bool cross = down_block_types[i] == "CrossAttnDownBlock3D";
    const int64_t scale = int64_t(1) << i;
    for (int64_t l = 0; l < layers_per_block; ++l)
      names.push_back(fmt::format("down_blocks.{}.{}.{} ({} ch, 1/{})", i, cross ? "temp_attentions" : "temp_convs", l,
                                  block_out_channels[i], scale));
    if (i + 1 < block_out_channels.size())
      names.push_back(
          fmt::format("down_blocks.{}.downsamplers.0 ({} ch, 1/{})", i, block_out_channels[i], scale * 2));
  }
  return names;
}

}  // namespace vdm::models
