// libFuzzer target: the safetensors header and layout validation (io::SafetensorsFile).
// Any input must either parse into views that lie inside the buffer and match dtype x shape, or
// fail with a WeightsError; anything else (a crash, another exception, a sanitizer report) is a bug.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    vdm::io::SafetensorsFile file(std::vector<uint8_t>(data, data + size), "fuzz.safetensors");
    const uint8_t* begin = nullptr;
    uint64_t checksum = 0;
    for (const auto& [key, view] : file.tensors()) {
      if (static_cast<uint64_t>(view.numel()) * vdm::io::dtype_size(view.dtype) != view.nbytes)
        std::abort();  // a view whose size disagrees with its dtype and shape
      if (view.nbytes == 0) continue;
      // Reading the first and last byte of every view: AddressSanitizer reports a view that
      // reaches outside the buffer.
      checksum += view.data[0] + view.data[view.nbytes - 1];
      if (!begin || view.data < begin) begin = view.data;
    }
    (void)file.at(file.tensors().empty() ? "absent" : file.tensors().begin()->first);
    volatile uint64_t sink = checksum;
    (void)sink;
  } catch (const vdm::WeightsError&) {
  }
  return 0;
}
