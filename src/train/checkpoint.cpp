#include "train/checkpoint.h"

#include <unistd.h>

#include <filesystem>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/json_config.h"

namespace vdm::train {

namespace fs = std::filesystem;

namespace {

std::string previous_of(const std::string& dir) { return dir + ".old"; }

bool complete(const fs::path& dir) {
  return fs::exists(dir / "state.json") && fs::exists(dir / "model.safetensors") &&
         fs::exists(dir / "ema.safetensors") && fs::exists(dir / "optimizer.safetensors") &&
         fs::exists(dir / "rng.safetensors");
}

}  // namespace

void remove_tree(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(fs::symlink_status(dir, ec))) {
    fs::remove(dir, ec);
    return;
  }
  std::vector<fs::path> entries;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) entries.push_back(it->path());
  for (const fs::path& e : entries) {
    if (fs::is_directory(fs::symlink_status(e, ec))) remove_tree(e.string());
    else fs::remove(e, ec);
  }
  fs::remove(dir, ec);
}

void save_checkpoint(const std::string& dir, const Checkpoint& checkpoint) {
  const fs::path final_dir(dir);
  const fs::path parent = final_dir.parent_path();
  std::error_code ec;
  if (!parent.empty()) fs::create_directories(parent, ec);
  const fs::path temp = parent / fmt::format(".{}.{}.tmp", final_dir.filename().string(), ::getpid());
  remove_tree(temp.string());
  if (!fs::create_directories(temp, ec) && ec) {
    throw Error(fmt::format("{}: cannot create the checkpoint folder: {}; check that the output folder is writable",
                            temp.string(), ec.message()));
  }
  const std::map<std::string, std::string> meta{{"format", "pt"}};
  io::save_safetensors((temp / "model.safetensors").string(), checkpoint.model, meta);
  io::save_safetensors((temp / "ema.safetensors").string(), checkpoint.ema, meta);
  io::save_safetensors((temp / "optimizer.safetensors").string(), checkpoint.optimizer, meta);
  io::save_safetensors((temp / "rng.safetensors").string(), checkpoint.rng, meta);
  io::write_file_atomic((temp / "state.json").string(), checkpoint.state.dump(2) + "\n");

  // Swap: current -> .old, temp -> current, drop .old.
  const fs::path old(previous_of(dir));
  remove_tree(old.string());
  if (fs::exists(final_dir)) io::commit_rename(final_dir.string(), old.string());
  io::commit_rename(temp.string(), final_dir.string());
  remove_tree(old.string());
}

bool has_checkpoint(const std::string& dir) { return complete(dir) || complete(previous_of(dir)); }

int64_t grow_input_channels(Checkpoint& checkpoint, const std::string& key, int64_t in_channels) {
  auto weight = checkpoint.model.find(key);
  if (weight == checkpoint.model.end() || weight->second.dim() != 4)
    throw WeightsError(fmt::format("checkpoint: cannot add input channels to '{}': {}", key,
                                   weight == checkpoint.model.end() ? "no such weight"
                                                                    : "it is " + c10::str(weight->second.sizes()) +
                                                                          ", expected [out, in, kh, kw]"));
  const int64_t have = weight->second.size(1);
  if (have > in_channels)
    throw WeightsError(fmt::format("checkpoint: '{}' has {} input channels, more than the {} asked for; input "
                                   "channels can be added, not removed",
                                   key, have, in_channels));
  const int64_t added = in_channels - have;
  if (added == 0) return 0;
  auto widen = [&](io::TensorMap& map, const std::string& name, bool mean_fill) {
    auto it = map.find(name);
    if (it == map.end())
      throw WeightsError(fmt::format("checkpoint: '{}' is missing, so '{}' cannot be widened", name, key));
    const at::Tensor& t = it->second;
    at::Tensor extra = mean_fill ? t.mean(1, true).expand({t.size(0), added, t.size(2), t.size(3)})
                                 : at::zeros({t.size(0), added, t.size(2), t.size(3)}, t.options());
    it->second = at::cat({t, extra.to(t.options())}, 1).contiguous();
  };
  widen(checkpoint.model, key, false);
  widen(checkpoint.ema, key, false);
  widen(checkpoint.optimizer, "exp_avg." + key, false);
  widen(checkpoint.optimizer, "exp_avg_sq." + key, true);
  return added;
}

std::optional<Checkpoint> load_checkpoint(const std::string& dir) {
  fs::path src(dir);
  if (!complete(src)) {
    src = previous_of(dir);
    if (!complete(src)) return std::nullopt;
  }
  Checkpoint c;
  c.model = io::load_safetensors((src / "model.safetensors").string());
  c.ema = io::load_safetensors((src / "ema.safetensors").string());
  c.optimizer = io::load_safetensors((src / "optimizer.safetensors").string());
  c.rng = io::load_safetensors((src / "rng.safetensors").string());
  io::JsonConfig state = io::JsonConfig::load((src / "state.json").string());
  state.get_int("step");  // required
  c.state = state.json();
  return c;
}

}  // namespace vdm::train
