// Checks shared by the diffusers model configs (UNet3DConditionModel, AutoencoderKL).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace vdm::models {

// The block lists have one common, non-zero length; norm_num_groups is positive and divides every
// entry of block_out_channels. Throws ConfigError naming `source` and the offending key.
void check_block_layout(const std::string& source, const std::vector<int64_t>& block_out_channels,
                        const std::vector<std::string>& down_block_types,
                        const std::vector<std::string>& up_block_types, int64_t norm_num_groups);

}  // namespace vdm::models
