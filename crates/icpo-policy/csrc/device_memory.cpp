// Peak memory of a CUDA device from PyTorch's caching allocator (what torch.cuda.max_memory_
// allocated reads), through the device-generic allocator interface, so it compiles without the
// CUDA toolkit's headers. Errors (no CUDA build, no such device) come back as messages.

#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>

#include "ffi.h"

namespace {

c10::DeviceAllocator* cuda_allocator() {
  return c10::getDeviceAllocator(c10::DeviceType::CUDA);
}

}  // namespace

extern "C" {

// Peak bytes allocated on CUDA device `index` since the process start or the last reset.
char* icpo_cuda_peak_allocated(int64_t index, int64_t* bytes) {
  return icpo_ffi::guarded([&] {
    auto stats = cuda_allocator()->getDeviceStats(static_cast<c10::DeviceIndex>(index));
    auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *bytes = stats.allocated_bytes[aggregate].peak;
  });
}

// Resets the peak of CUDA device `index` to what is allocated now.
char* icpo_cuda_reset_peak(int64_t index) {
  return icpo_ffi::guarded(
      [&] { cuda_allocator()->resetPeakStats(static_cast<c10::DeviceIndex>(index)); });
}

}  // extern "C"
