#include "batch/batch_runner.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <regex>
#include <set>

#include "batch/sha256.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "core/log.h"

namespace vdm::batch {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string format_duration(double s) {
  if (s < 60) return fmt::format("{:.1f}s", s);
  if (s < 3600) return fmt::format("{}m{:02d}s", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return fmt::format("{}h{:02d}m", static_cast<int>(s) / 3600, (static_cast<int>(s) % 3600) / 60);
}

std::string host_name() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

// The first line of an error message, for one-line progress output.
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// An exclusive flock() on a hidden lock file in the output folder. Released by the kernel when
// the process dies, so a killed run never blocks the next one.
class FolderLock {
 public:
  // Throws `busy_message` as InputError when `wait` is false and another process holds the lock.
  FolderLock(std::string path, bool wait, const std::string& busy_message) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0)
      throw InputError(fmt::format("{}: cannot create the lock file: {}; check that the output "
                                   "folder is writable",
                                   path_, std::strerror(errno)));
    int rc;
    do {
      rc = ::flock(fd_, LOCK_EX | (wait ? 0 : LOCK_NB));
    } while (rc != 0 && errno == EINTR && interrupt_signal() == 0);
    if (rc != 0) {
      int err = errno;
      if (err == EWOULDBLOCK) {
        ::close(fd_);
        throw InputError(busy_message);
      }
      throw_if_interrupted();
      // File systems without flock support: go on, unprotected against a second process.
      log::warn("{}: cannot lock ({}); make sure only one process uses it at a time", path_,
                std::strerror(err));
    }
  }
  ~FolderLock() {
    if (fd_ >= 0) ::close(fd_);
  }
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
};

// The lock of one shard: ".manifest.lock" or ".manifest.shard-I-of-N.lock".
std::string shard_lock_path(const std::string& dir, const Shard& shard) {
  std::string name = shard.manifest_name();
  return (fs::path(dir) / ("." + name.substr(0, name.size() - 6) + ".lock")).string();
}

json without_paths(json j) {
  j.erase("image");
  j.erase("video");
  j.erase("lora_files");
  j.erase("batch_lora_files");
  return j;
}

// SHA-256 of a file, read once per path, size and modification time in this process (a batch-wide
// LoRA is in every shot's settings).
std::string cached_sha256(const std::string& path) {
  static std::map<std::string, std::pair<std::string, std::string>> cache;  // path -> (stamp, hash)
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  const auto time = fs::last_write_time(path, ec);
  const std::string stamp = ec ? "" : fmt::format("{}:{}", size, time.time_since_epoch().count());
  auto it = cache.find(path);
  if (!stamp.empty() && it != cache.end() && it->second.first == stamp) return it->second.second;
  std::string hash = sha256_file(path);
  if (!stamp.empty()) cache[path] = {stamp, hash};
  return hash;
}

// LoRAs by content (a moved folder does not re-render; a retrained LoRA does), with their
// strengths, under `key`; their paths under `key`_files (not compared).
void record_loras(json& j, const std::string& key, const std::vector<models::LoraSpec>& loras) {
  if (loras.empty()) return;
  json specs = json::array(), files = json::array();
  for (const auto& l : loras) {
    specs.push_back({{"sha256", cached_sha256(l.path)}, {"strength", l.strength}});
    files.push_back(l.path);
  }
  j[key] = specs;
  j[key + "_files"] = files;
}

}  // namespace

json shot_settings(const Shot& shot) {
  json j = {{"prompt", shot.prompt},   {"negative_prompt", shot.negative_prompt},
            {"seed", shot.seed},       {"frames", shot.frames},
            {"fps", shot.fps},         {"width", shot.width},
            {"height", shot.height},   {"steps", shot.steps},
            {"guidance", shot.guidance}, {"sampler", shot.sampler},
            {"output", shot.output}};
  // Only when set, so that manifests written before the key existed still match their shots.
  if (!shot.t2v_mode.empty()) j["t2v_mode"] = shot.t2v_mode;
  if (shot.guidance_rescale > 0) j["guidance_rescale"] = shot.guidance_rescale;
  if (shot.context_frames > 0) {
    j["context_frames"] = shot.context_frames;
    j["context_stride"] = shot.context_stride;
  }
  for (const auto& [key, keys] : {std::pair{"prompt_at", &shot.prompt_at},
                                  std::pair{"negative_prompt_at", &shot.negative_prompt_at}})
    if (!keys->empty()) {
      json k = json::object();
      for (const auto& [frame, text] : *keys) k[std::to_string(frame)] = text;
      j[key] = k;
    }
  if (shot.extend > 0) j["extend"] = shot.extend;
  if (shot.prompt_weights) j["prompt_weights"] = true;
  if (shot.deep_cache > 1) {
    j["deep_cache"] = shot.deep_cache;
    j["deep_cache_branch"] = shot.deep_cache_branch;
  }
  if (shot.freeu) j["freeu"] = models::describe_freeu(*shot.freeu);
  if (shot.free_init > 1) j["free_init"] = shot.free_init;
  if (!shot.image.empty()) {
    j["image"] = shot.image;
    j["image_sha256"] = sha256_file(shot.image);
  }
  if (!shot.video.empty()) {
    j["video"] = shot.video;
    j["video_sha256"] = sha256_file(shot.video);
  }
  if (shot.mode() != Shot::Mode::kGenerate) j["strength"] = shot.strength;
  record_loras(j, "lora", shot.loras);
  record_loras(j, "batch_lora", shot.batch_loras);
  return j;
}

bool same_settings(const json& a, const json& b) { return without_paths(a) == without_paths(b); }

std::string render_reason(const Shot& shot, const json& settings, const MergedManifest& manifest,
                          const std::string& out_dir) {
  const ManifestRecord* r = manifest.find(shot.id);
  if (!r) return "not rendered yet";
  if (!r->done()) return fmt::format("failed before ({})", first_line(r->error));
  if (r->output != shot.output)
    return fmt::format("output name changed from {} to {}", r->output, shot.output);
  if (!same_settings(r->settings, settings)) return "settings changed since it was rendered";
  const fs::path out = fs::path(out_dir) / shot.output;
  std::error_code ec;
  if (!fs::is_regular_file(out, ec)) return fmt::format("{} is missing", shot.output);
  if (sha256_file(out.string()) != r->sha256)
    return fmt::format("{} differs from the rendered file recorded in the manifest", shot.output);
  return {};
}

std::vector<std::string> stray_temporaries(const std::string& dir,
                                           const std::vector<std::string>& final_names) {
  static const std::regex kTemp(R"(\.(.+)\.[0-9]+\.[0-9]+\.tmp)");
  const std::set<std::string> names(final_names.begin(), final_names.end());
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    std::smatch m;
    if (std::regex_match(name, m, kTemp) && names.count(m[1].str()) &&
        entry.is_regular_file(ec))
      found.push_back(entry.path().string());
  }
  std::sort(found.begin(), found.end());
  return found;
}

std::string BatchSummary::describe() const {
  std::string s = fmt::format(
      "{} shot{} rendered, {} up to date, {} failed ({} in this shard of {} in the list) in {}",
      rendered, rendered == 1 ? "" : "s", skipped, failures.size(), shots_in_shard, shots_in_list,
      format_duration(elapsed_s));
  if (!failures.empty()) {
    s += "; failed:";
    for (const auto& f : failures) s += fmt::format("\n  {}: {}", f.id, first_line(f.error));
  }
  return s;
}

BatchRunner::BatchRunner(const ShotList& list, BatchOptions options, ShotRenderer& renderer)
    : list_(list), options_(std::move(options)), renderer_(renderer) {}

BatchSummary BatchRunner::run() {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string& dir = options_.out_dir;
  const Shard& shard = options_.shard;
  if (dir.empty()) throw InputError("--out is empty; give the folder to render the shots into");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir))
    throw InputError(fmt::format("--out {}: cannot create the folder{}{}", dir, ec ? ": " : "",
                                 ec ? ec.message() : ""));
  if (::access(dir.c_str(), W_OK) != 0)
    throw InputError(fmt::format("--out {}: folder is not writable; choose another", dir));

  const std::string lock_path = shard_lock_path(dir, shard);
  FolderLock lock(lock_path, /*wait=*/false,
                  fmt::format("another vdm batch process is already rendering shard {} into {} "
                              "(lock {} is held); wait for it to finish, or give this one another "
                              "--out folder or --shard",
                              shard.label(), dir, lock_path));

  BatchSummary summary;
  summary.shots_in_list = list_.shots.size();
  std::vector<const Shot*> mine;
  std::vector<std::string> finals = {shard.manifest_name()};
  for (const Shot& s : list_.shots) {
    if (!shard.contains(s.id)) continue;
    mine.push_back(&s);
    finals.push_back(s.output);
  }
  summary.shots_in_shard = mine.size();

  // Leftovers of a killed run of this shard (the lock guarantees none of them is being written).
  for (const auto& tmp : stray_temporaries(dir, finals)) {
    if (fs::remove(tmp, ec)) {
      log::info("removed {} left by an interrupted run", tmp);
      summary.removed_temporaries.push_back(tmp);
    }
  }

  MergedManifest merged = read_manifests(dir);
  for (const auto& w : merged.warnings) log::warn("{}", w);
  ShardManifest manifest(dir, shard);

  struct Plan {
    const Shot* shot;
    json settings;
    std::string reason;  // "" = up to date
  };
  std::vector<Plan> plans;
  std::vector<const Shot*> to_render;
  for (const Shot* s : mine) {
    Plan p{s, shot_settings(*s), {}};
    p.reason = options_.force ? std::string("--force")
                              : render_reason(*s, p.settings, merged, dir);
    if (!p.reason.empty()) to_render.push_back(s);
    plans.push_back(std::move(p));
  }
  log::info("{}shot list {}: {} of {} shots in this share, {} up to date, {} to render",
            shard.sharded() ? fmt::format("shard {} ({}): ", shard.label(), shard.origin) : "",
            list_.source, mine.size(), list_.shots.size(), mine.size() - to_render.size(),
            to_render.size());

  if (!to_render.empty()) {
    std::vector<std::string> problems = renderer_.prepare(list_, to_render);
    if (!problems.empty()) {
      std::string msg = fmt::format("{} shot{} cannot be rendered with this model; nothing was "
                                    "rendered. Fix these and run again:",
                                    problems.size(), problems.size() == 1 ? "" : "s");
      for (const auto& p : problems) msg += "\n  " + p;
      throw InputError(msg);
    }
  }

  pipelines::ProgressMeter meter("batch", static_cast<int64_t>(plans.size()), options_.progress);
  const std::string host = host_name();
  int64_t step = 0;
  for (const Plan& plan : plans) {
    const Shot& shot = *plan.shot;
    ++step;
    if (plan.reason.empty()) {
      ++summary.skipped;
      meter.update(step, fmt::format("{}: up to date", shot.id));
      continue;
    }
    throw_if_interrupted();
    log::info("shot {} ({}/{}): rendering ({})", shot.id, step, plans.size(), plan.reason);
    const std::string final_path = (fs::path(dir) / shot.output).string();
    ManifestRecord rec;
    rec.id = shot.id;
    rec.output = shot.output;
    rec.settings = plan.settings;
    rec.model = options_.model;
    rec.shard = shard.label();
    rec.host = host;
    rec.pid = static_cast<int64_t>(::getpid());
    rec.started_at = utc_timestamp(unix_ms_now());
    const auto shot_t0 = std::chrono::steady_clock::now();
    try {
      ShotResult result = renderer_.render(shot, final_path);
      rec.sha256 = sha256_file(final_path);
      rec.bytes = static_cast<int64_t>(fs::file_size(final_path));
      rec.status = "done";
      rec.resolved = {{"frames", result.frames}, {"width", result.width},
                      {"height", result.height}, {"fps", result.fps},
                      {"sampler", result.sampler}};
      rec.timings = {{"load_s", result.load_s},
                     {"render_s", result.render_s},
                     {"write_s", result.write_s},
                     {"total_s", seconds_since(shot_t0)}};
      ++summary.rendered;
    } catch (const Interrupted&) {
      log::warn("interrupted while rendering shot {}; the manifest holds the {} shot{} finished "
                "before; run the same command again to resume",
                shot.id, summary.rendered, summary.rendered == 1 ? "" : "s");
      throw;
    } catch (const std::exception& e) {
      rec.status = "failed";
      rec.error = e.what();
      rec.timings = {{"total_s", seconds_since(shot_t0)}};
      summary.failures.push_back({shot.id, e.what()});
      log::warn("shot {} failed: {}", shot.id, e.what());
    }
    const int64_t end_ms = unix_ms_now();
    rec.finished_at = utc_timestamp(end_ms);
    rec.finished_unix_ms = end_ms;
    manifest.put(rec);
    meter.update(step, rec.done() ? fmt::format("{}: done in {}", shot.id,
                                                format_duration(seconds_since(shot_t0)))
                                  : fmt::format("{}: FAILED: {}", shot.id, first_line(rec.error)));
  }
  summary.elapsed_s = seconds_since(t0);
  return summary;
}

std::vector<std::string> unfinished_shots(const ShotList& list, const std::string& out_dir) {
  MergedManifest merged = read_manifests(out_dir);
  std::vector<std::string> ids;
  for (const Shot& s : list.shots)
    if (!render_reason(s, shot_settings(s), merged, out_dir).empty()) ids.push_back(s.id);
  return ids;
}

void check_concat_path(const ShotList& list, const std::string& out_dir, const std::string& path) {
  static const std::vector<std::string> kExtensions = {".mp4", ".webm", ".gif",
                                                       ".mkv", ".mov", ".m4v"};
  if (path.empty()) throw InputError("--concat is empty; give a video file such as all.mp4");
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (std::find(kExtensions.begin(), kExtensions.end(), ext) == kExtensions.end())
    throw InputError(fmt::format("--concat {}: unknown video extension '{}'; use .mp4, .webm, "
                                 ".gif, .mkv, .mov or .m4v",
                                 path, ext));
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw InputError(fmt::format("--concat {}: folder '{}' does not exist; create it first", path,
                                 dir.string()));
  if (::access(dir.c_str(), W_OK) != 0)
    throw InputError(fmt::format("--concat {}: folder '{}' is not writable", path, dir.string()));
  const fs::path target = fs::absolute(path).lexically_normal();
  for (const Shot& s : list.shots) {
    if (fs::absolute(fs::path(out_dir) / s.output).lexically_normal() == target)
      throw InputError(fmt::format("--concat {}: is the output of shot '{}'; choose another name",
                                   path, s.id));
  }
}

ConcatOutcome concat_shots(const ShotList& list, const std::string& out_dir,
                           const std::string& path, const ClipJoiner& join) {
  ConcatOutcome outcome;
  outcome.waiting_for = unfinished_shots(list, out_dir);
  if (!outcome.waiting_for.empty()) return outcome;

  // Serialise shards that finish together; the last one to get here writes the same result.
  FolderLock lock((fs::path(out_dir) / ".concat.lock").string(), /*wait=*/true, "");
  // Leftovers of a concatenation killed earlier (a temporary of a live process is left alone).
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  static const std::regex kTemp(R"(\.(.+)\.([0-9]+)\.[0-9]+\.tmp)");
  const std::string name = fs::path(path).filename().string();
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::smatch m;
    const std::string file = entry.path().filename().string();
    if (!std::regex_match(file, m, kTemp) || m[1].str() != name) continue;
    const long pid = std::strtol(m[2].str().c_str(), nullptr, 10);
    if (pid > 0 && pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH &&
        fs::remove(entry.path(), ec))
      log::info("removed {} left by an interrupted run", entry.path().string());
  }
  std::vector<std::string> inputs;
  for (const Shot& s : list.shots) inputs.push_back((fs::path(out_dir) / s.output).string());
  outcome.result = join(inputs, path);
  outcome.written = true;
  return outcome;
}

}  // namespace vdm::batch
