// This build's kernels (models/cuda_kernels.h) as one table, for models/cuda_ops.
#include "models/cuda_kernels.h"

namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE {

const KernelTable& kernel_table() {
  static const KernelTable table{group_norm_nhwc_workspace, group_norm_nhwc, layer_norm_rows_supported,
                                 layer_norm_rows,           geglu,           bias_residual,
                                 short_attention_supported, short_attention};
  return table;
}

}  // namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE
