#include "batch/shard.h"

#include <fmt/format.h>

#include <charconv>
#include <cstdlib>
#include <optional>

#include "batch/sha256.h"
#include "core/error.h"

namespace vdm::batch {

namespace {

std::optional<long long> to_int(const std::string& s) {
  long long v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || r.ec != std::errc() || r.ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

long long env_int(const EnvLookup& getenv, const char* name, bool* present) {
  const char* v = getenv(name);
  *present = v && *v;
  if (!*present) return 0;
  auto n = to_int(v);
  if (!n)
    throw InputError(fmt::format("environment variable {}='{}' is not an integer", name, v));
  return *n;
}

}  // namespace

std::string Shard::label() const { return fmt::format("{}/{}", index + 1, count); }

std::string Shard::manifest_name() const {
  return count <= 1 ? std::string("manifest.jsonl")
                    : fmt::format("manifest.shard-{}-of-{}.jsonl", index + 1, count);
}

bool Shard::contains(const std::string& shot_id) const {
  return count <= 1 || shard_of(shot_id, count) == index;
}

int shard_of(const std::string& shot_id, int count) {
  if (count <= 1) return 0;
  Sha256 h;
  h.update(shot_id);
  auto d = h.digest();
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | d[i];
  return static_cast<int>(v % static_cast<uint64_t>(count));
}

Shard parse_shard(const std::string& spec, const std::string& flag) {
  auto bad = [&](const std::string& why) {
    return InputError(fmt::format("{} {}: {}; expected I/N with 1 <= I <= N <= {} (for example "
                                  "{} 2/4)",
                                  flag, spec, why, Shard::kMaxCount, flag));
  };
  auto slash = spec.find('/');
  if (slash == std::string::npos) throw bad("missing '/'");
  auto i = to_int(spec.substr(0, slash));
  auto n = to_int(spec.substr(slash + 1));
  if (!i || !n) throw bad("not two integers");
  if (*n < 1 || *n > Shard::kMaxCount) throw bad("shard count out of range");
  if (*i < 1 || *i > *n) throw bad("shard index out of range (shards are numbered from 1)");
  Shard s;
  s.index = static_cast<int>(*i - 1);
  s.count = static_cast<int>(*n);
  s.origin = flag;
  return s;
}

Shard shard_from_environment(const EnvLookup& getenv) {
  bool has_id = false, has_count = false, has_min = false, has_step = false;
  long long id = env_int(getenv, "SLURM_ARRAY_TASK_ID", &has_id);
  if (has_id) {
    long long count = env_int(getenv, "SLURM_ARRAY_TASK_COUNT", &has_count);
    long long min = env_int(getenv, "SLURM_ARRAY_TASK_MIN", &has_min);
    long long step = env_int(getenv, "SLURM_ARRAY_TASK_STEP", &has_step);
    if (!has_count)
      throw InputError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass "
                       "--shard I/N explicitly");
    if (has_step && step != 1)
      throw InputError(fmt::format("Slurm array step is {} (SLURM_ARRAY_TASK_STEP); vdm batch "
                                   "needs a contiguous array such as --array=0-{}, or pass "
                                   "--shard I/N explicitly",
                                   step, count - 1));
    long long index = id - (has_min ? min : 0);
    if (count < 1 || count > Shard::kMaxCount || index < 0 || index >= count)
      throw InputError(fmt::format("Slurm array task {} (min {}, count {}) does not map to a shard "
                                   "0..count-1; use a contiguous array such as --array=0-{}",
                                   id, has_min ? min : 0, count, count > 0 ? count - 1 : 0));
    Shard s;
    s.index = static_cast<int>(index);
    s.count = static_cast<int>(count);
    s.origin = "Slurm array";
    return s;
  }
  long long index = env_int(getenv, "JOB_COMPLETION_INDEX", &has_id);
  if (has_id) {
    long long count = env_int(getenv, "VDM_SHARD_COUNT", &has_count);
    if (!has_count)
      throw InputError("JOB_COMPLETION_INDEX is set (Kubernetes Indexed Job) but VDM_SHARD_COUNT "
                       "is not; set VDM_SHARD_COUNT to the Job's completions, or pass --shard I/N");
    if (count < 1 || count > Shard::kMaxCount || index < 0 || index >= count)
      throw InputError(fmt::format("JOB_COMPLETION_INDEX={} is not below VDM_SHARD_COUNT={}; set "
                                   "VDM_SHARD_COUNT to the Job's completions",
                                   index, count));
    Shard s;
    s.index = static_cast<int>(index);
    s.count = static_cast<int>(count);
    s.origin = "Kubernetes Indexed Job";
    return s;
  }
  return Shard{};
}

Shard shard_from_environment() {
  return shard_from_environment([](const char* name) { return std::getenv(name); });
}

}  // namespace vdm::batch
