// The batch manifest: one JSON object per line, one file per shard in the output folder
// (manifest.jsonl unsharded, manifest.shard-I-of-N.jsonl with N shards), merged on read. Each
// shard rewrites only its own file, atomically after every shot, so several shards share a folder
// without colliding and a crash never leaves a half-written manifest.
//
// A line:
//   {"id": "intro", "status": "done", "output": "intro.mp4", "sha256": "...", "bytes": 12345,
//    "settings": {"prompt": ..., "seed": 1234, "frames": 16, ...},      // requested, seed included
//    "resolved": {"width": 256, "height": 256, "frames": 16, "fps": 8, "sampler": "ddim"},
//    "timings": {"load_s": 3.1, "render_s": 20.5, "write_s": 0.4, "total_s": 24.0},
//    "model": "/models/zeroscope", "shard": "2/3", "host": "node7", "pid": 4242,
//    "started_at": "2025-01-01T10:00:00.000Z", "finished_at": "...", "finished_unix_ms": ...}
// Failed shots have "status": "failed" and "error": the message, no hash.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "batch/shard.h"

namespace vdm::batch {

struct ManifestRecord {
  std::string id;
  std::string status;  // "done" | "failed"
  std::string output;  // file name inside the output folder
  std::string sha256;  // of the output file ("" when failed)
  int64_t bytes = 0;
  nlohmann::json settings = nlohmann::json::object();  // as requested, seed included
  nlohmann::json resolved = nlohmann::json::object();  // as the renderer used them
  nlohmann::json timings = nlohmann::json::object();   // seconds
  std::string error;                                   // failed: what went wrong
  std::string model;
  std::string shard;
  std::string host;
  int64_t pid = 0;
  std::string started_at;
  std::string finished_at;
  int64_t finished_unix_ms = 0;  // orders records of the same shot across manifest files

  bool done() const { return status == "done"; }
  nlohmann::ordered_json to_json() const;  // keys in the order documented above
  // Throws std::exception (nlohmann) when required fields are missing or mistyped.
  static ManifestRecord from_json(const nlohmann::json& j);
};

// True for manifest file names: manifest.jsonl, manifest.shard-I-of-N.jsonl.
bool is_manifest_file_name(const std::string& name);

struct MergedManifest {
  std::map<std::string, ManifestRecord> records;  // per shot id, the latest record
  std::vector<std::string> files;                 // manifest files read
  std::vector<std::string> warnings;              // lines that could not be read ("file:line: ...")

  const ManifestRecord* find(const std::string& id) const {
    auto it = records.find(id);
    return it == records.end() ? nullptr : &it->second;
  }
};

// Reads every manifest file in `dir` and keeps the latest record per shot (by finished_unix_ms).
// Unreadable lines become warnings: their shots are simply rendered again.
MergedManifest read_manifests(const std::string& dir);

// One shard's manifest file: loaded at start, rewritten atomically after every record.
class ShardManifest {
 public:
  ShardManifest(const std::string& dir, const Shard& shard);
  const std::string& path() const { return path_; }
  // Adds or replaces the record for record.id and rewrites the file.
  void put(const ManifestRecord& record);
  const std::vector<ManifestRecord>& records() const { return records_; }

 private:
  void save() const;
  std::string path_;
  std::vector<ManifestRecord> records_;
};

// ISO 8601 UTC time with milliseconds, and milliseconds since the epoch.
std::string utc_timestamp(int64_t unix_ms);
int64_t unix_ms_now();

}  // namespace vdm::batch
