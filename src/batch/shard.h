// Sharding a shot list across processes or machines. A shot belongs to shard
// (first 8 bytes of SHA-256(id)) mod N, so the assignment depends only on the id: it is the same on
// every machine, stable when the list is reordered or grows, and the N shards are disjoint and
// together complete.
//
// The shard comes from --shard I/N (1-based I) or, when absent, from the environment:
//   Slurm job arrays:          SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT (and SLURM_ARRAY_TASK_MIN,
//                              so --array=0-3 and --array=1-4 both work; the step must be 1)
//   Kubernetes Indexed Jobs:   JOB_COMPLETION_INDEX (0-based) with VDM_SHARD_COUNT, which the Job
//                              sets to its `completions` (Kubernetes does not export that count)
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace vdm::batch {

struct Shard {
  int index = 0;  // 0-based
  int count = 1;
  std::string origin = "unsharded";  // "--shard", "Slurm array", "Kubernetes Indexed Job"

  static constexpr int kMaxCount = 100000;

  bool sharded() const { return count > 1; }
  std::string label() const;          // "2/3" (1-based, as written on the command line)
  std::string manifest_name() const;  // "manifest.jsonl" or "manifest.shard-2-of-3.jsonl"
  bool contains(const std::string& shot_id) const;
};

// The 0-based shard of `shot_id` among `count` shards.
int shard_of(const std::string& shot_id, int count);

// Parses "I/N" with 1 <= I <= N; throws InputError naming `flag` otherwise.
Shard parse_shard(const std::string& spec, const std::string& flag = "--shard");

// The shard from the environment variables above, or an unsharded Shard when none is set. Throws
// InputError when the variables are inconsistent. `getenv` is injectable for tests.
using EnvLookup = std::function<const char*(const char*)>;
Shard shard_from_environment(const EnvLookup& getenv);
Shard shard_from_environment();

}  // namespace vdm::batch
