// The C interface of icpo-dist to c10d's TCPStore, the rendezvous store torchrun and
// torch.distributed use: open (rank 0 serves), set, wait-and-get with a timeout, check, delete.
// Errors cross as malloc'd messages (freed with icpo_dist_free), never as exceptions; a wait
// that times out is reported with the code 1 so the caller can name the rank it waited for.

#include "store.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using icpo_dist::guarded;
using icpo_dist::Store;

}  // namespace

extern "C" {

void icpo_dist_free(void* p) { std::free(p); }

// Connects to (rank 0: serves) the store at host:port for world_size processes; waits up to
// timeout_ms for every worker (server) or for the server (client).
char* icpo_store_open(const char* host, int32_t port, int32_t is_server, int32_t world_size,
                      int64_t timeout_ms, void** out) {
  return guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world_size);
    opts.waitWorkers = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto s = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = new Store{std::move(s)};
  });
}

void icpo_store_close(void* store) { delete static_cast<Store*>(store); }

char* icpo_store_set(void* store, const char* key, const uint8_t* data, size_t len) {
  return guarded([&] {
    std::vector<uint8_t> v(data, data + len);
    static_cast<Store*>(store)->store->set(std::string(key), v);
  });
}

// Waits up to timeout_ms for key, then reads it into a malloc'd buffer. *timed_out is 1 when
// the key did not appear in time (the message then says so).
char* icpo_store_get(void* store, const char* key, int64_t timeout_ms, uint8_t** data,
                     size_t* len, int32_t* timed_out) {
  *timed_out = 0;
  return guarded([&] {
    auto& s = static_cast<Store*>(store)->store;
    std::string k(key);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    // Poll with check() rather than wait(): a wait's timeout error is not distinguishable from
    // a broken connection, and the caller names the missing rank on a timeout.
    auto pause = std::chrono::microseconds(50);
    while (!s->check({k})) {
      if (std::chrono::steady_clock::now() >= deadline) {
        *timed_out = 1;
        throw std::runtime_error("timed out waiting for key " + k);
      }
      std::this_thread::sleep_for(pause);
      if (pause < std::chrono::milliseconds(20)) pause *= 2;
    }
    std::vector<uint8_t> v = s->get(k);
    *len = v.size();
    *data = static_cast<uint8_t*>(std::malloc(v.size() ? v.size() : 1));
    if (!*data) throw std::runtime_error("out of memory");
    if (!v.empty()) std::memcpy(*data, v.data(), v.size());
  });
}

char* icpo_store_check(void* store, const char* key, int32_t* present) {
  return guarded([&] { *present = static_cast<Store*>(store)->store->check({std::string(key)}) ? 1 : 0; });
}

char* icpo_store_delete(void* store, const char* key) {
  return guarded([&] { static_cast<Store*>(store)->store->deleteKey(std::string(key)); });
}

}  // extern "C"
