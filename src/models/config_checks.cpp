#include "models/config_checks.h"

#include <fmt/format.h>

#include "core/error.h"

namespace vdm::models {

void check_block_layout(const std::string& source, const std::vector<int64_t>& block_out_channels,
                        const std::vector<std::string>& down_block_types,
                        const std::vector<std::string>& up_block_types, int64_t norm_num_groups) {
  auto fail = [&](const std::string& what) { throw ConfigError(fmt::format("{}: {}", source, what)); };
  const size_t n = block_out_channels.size();
  if (n == 0) fail("'block_out_channels' is empty");
  if (down_block_types.size() != n || up_block_types.size() != n)
    fail(fmt::format("'down_block_types' ({}), 'up_block_types' ({}) and 'block_out_channels' ({}) must have the same "
                     "length",
                     down_block_types.size(), up_block_types.size(), n));
  if (norm_num_groups <= 0) fail("'norm_num_groups' must be positive");
  for (size_t i = 0; i < n; ++i)
    if (block_out_channels[i] <= 0 || block_out_channels[i] % norm_num_groups != 0)
      fail(fmt::format("block_out_channels[{}] = {} is not a positive multiple of norm_num_groups {}", i,
                       block_out_channels[i], norm_num_groups));
}

}  // namespace vdm::models
