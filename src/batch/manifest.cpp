#include "batch/manifest.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "core/log.h"
#include "io/atomic_file.h"

namespace vdm::batch {

namespace fs = std::filesystem;
using nlohmann::json;

nlohmann::ordered_json ManifestRecord::to_json() const {
  nlohmann::ordered_json j;
  j["id"] = id;
  j["status"] = status;
  j["output"] = output;
  if (done()) {
    j["sha256"] = sha256;
    j["bytes"] = bytes;
  }
  j["settings"] = settings;
  if (!resolved.empty()) j["resolved"] = resolved;
  j["timings"] = timings;
  if (!error.empty()) j["error"] = error;
  j["model"] = model;
  j["shard"] = shard;
  j["host"] = host;
  j["pid"] = pid;
  j["started_at"] = started_at;
  j["finished_at"] = finished_at;
  j["finished_unix_ms"] = finished_unix_ms;
  return j;
}

ManifestRecord ManifestRecord::from_json(const json& j) {
  ManifestRecord r;
  r.id = j.at("id").get<std::string>();
  r.status = j.at("status").get<std::string>();
  if (r.status != "done" && r.status != "failed")
    throw std::runtime_error("status '" + r.status + "' is neither done nor failed");
  r.output = j.at("output").get<std::string>();
  if (r.done()) {
    r.sha256 = j.at("sha256").get<std::string>();
    r.bytes = j.value("bytes", int64_t{0});
  }
  r.settings = j.value("settings", json::object());
  r.resolved = j.value("resolved", json::object());
  r.timings = j.value("timings", json::object());
  r.error = j.value("error", std::string());
  r.model = j.value("model", std::string());
  r.shard = j.value("shard", std::string());
  r.host = j.value("host", std::string());
  r.pid = j.value("pid", int64_t{0});
  r.started_at = j.value("started_at", std::string());
  r.finished_at = j.value("finished_at", std::string());
  r.finished_unix_ms = j.value("finished_unix_ms", int64_t{0});
  return r;
}

bool is_manifest_file_name(const std::string& name) {
  static const std::regex kPattern(R"(manifest(\.shard-[0-9]+-of-[0-9]+)?\.jsonl)");
  return std::regex_match(name, kPattern);
}

namespace {

std::vector<ManifestRecord> read_manifest_file(const std::string& path,
                                               std::vector<std::string>* warnings) {
  std::vector<ManifestRecord> out;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    warnings->push_back(fmt::format("{}: cannot be read; its shots will be rendered again", path));
    return out;
  }
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      out.push_back(ManifestRecord::from_json(json::parse(line)));
    } catch (const std::exception& e) {
      warnings->push_back(fmt::format("{}:{}: unreadable manifest line ({}); ignored", path, number,
                                      e.what()));
    }
  }
  return out;
}

}  // namespace

MergedManifest read_manifests(const std::string& dir) {
  MergedManifest merged;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return merged;
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.is_regular_file(ec) && is_manifest_file_name(entry.path().filename().string()))
      files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    for (auto& r : read_manifest_file(f, &merged.warnings)) {
      auto it = merged.records.find(r.id);
      if (it == merged.records.end() || r.finished_unix_ms >= it->second.finished_unix_ms)
        merged.records[r.id] = std::move(r);
    }
  }
  merged.files = std::move(files);
  return merged;
}

ShardManifest::ShardManifest(const std::string& dir, const Shard& shard)
    : path_((fs::path(dir) / shard.manifest_name()).string()) {
  std::error_code ec;
  if (fs::exists(path_, ec)) {
    std::vector<std::string> warnings;
    for (auto& r : read_manifest_file(path_, &warnings)) {
      auto it = std::find_if(records_.begin(), records_.end(),
                             [&](const ManifestRecord& x) { return x.id == r.id; });
      if (it == records_.end())
        records_.push_back(std::move(r));
      else if (r.finished_unix_ms >= it->finished_unix_ms)
        *it = std::move(r);
    }
    for (const auto& w : warnings) log::warn("{}", w);
  }
}

void ShardManifest::put(const ManifestRecord& record) {
  auto it = std::find_if(records_.begin(), records_.end(),
                         [&](const ManifestRecord& r) { return r.id == record.id; });
  if (it != records_.end())
    *it = record;
  else
    records_.push_back(record);
  save();
}

void ShardManifest::save() const {
  std::string text;
  for (const auto& r : records_) text += r.to_json().dump() + "\n";
  io::write_file_atomic(path_, text);
}

int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string utc_timestamp(int64_t unix_ms) {
  std::time_t secs = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:03d}Z", buf, static_cast<int>(unix_ms % 1000));
}

}  // namespace vdm::batch
