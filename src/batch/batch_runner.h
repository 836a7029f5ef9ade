// Renders the shots of a shot list that belong to one shard into an output folder, resumably.
//
//   - Every output is written atomically by the renderer (temporary name in the folder, renamed
//     when complete); leftover temporaries of this shard from a killed run are removed first.
//   - After every shot, the shard's manifest (see manifest.h) is rewritten atomically.
//   - A shot is skipped when the merged manifest says it is done with the same settings and its
//     output file still has the recorded SHA-256; otherwise (never rendered, failed, interrupted
//     by a crash, output deleted or changed, settings changed, --force) it is rendered.
//   - A failing shot is recorded as failed and the batch goes on; SIGINT/SIGTERM stop at the next
//     safe point (vdm::Interrupted propagates; the manifest holds only finished shots).
//   - One process per shard at a time: a lock file in the folder refuses a second one.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "batch/manifest.h"
#include "batch/shard.h"
#include "batch/shot_list.h"
#include "batch/video_concat.h"
#include "pipelines/progress.h"

namespace vdm::batch {

// What a renderer reports about one rendered shot.
struct ShotResult {
  int64_t frames = 0;  // frames written
  int64_t width = 0;
  int64_t height = 0;
  int64_t fps = 0;
  std::string sampler;  // the scheduler actually used
  double load_s = 0;    // model loading, charged to the first shot rendered
  double render_s = 0;  // denoising and decoding
  double write_s = 0;   // encoding and writing the file
};

class ShotRenderer {
 public:
  virtual ~ShotRenderer() = default;
  // Called once, before anything renders, with every shot about to be rendered. Loads what is
  // needed and returns the problems that would make shots fail (one message per problem, naming
  // the shot); with any, the batch stops before rendering.
  virtual std::vector<std::string> prepare(const ShotList& list,
                                           const std::vector<const Shot*>& shots) {
    return {};
  }
  // Renders `shot` into `output_path` atomically: when it returns, the complete file is there;
  // when it throws, nothing new is under `output_path`.
  virtual ShotResult render(const Shot& shot, const std::string& output_path) = 0;
};

struct BatchOptions {
  std::string out_dir;           // created when missing
  Shard shard;                   // default: every shot
  bool force = false;            // render even the shots that are up to date
  std::string model;             // recorded in the manifest
  pipelines::ProgressCallback progress;  // one event per shot (stage "batch"); may be empty
};

struct ShotFailure {
  std::string id;
  std::string error;
};

struct BatchSummary {
  size_t shots_in_list = 0;
  size_t shots_in_shard = 0;
  size_t rendered = 0;
  size_t skipped = 0;  // already up to date
  std::vector<ShotFailure> failures;
  std::vector<std::string> removed_temporaries;
  double elapsed_s = 0;

  bool ok() const { return failures.empty(); }
  std::string describe() const;  // one paragraph for the end of the run
};

// The settings of `shot` as recorded in the manifest: every key, the seed, and the SHA-256 of
// an input image or video, so that an edited input renders again.
nlohmann::json shot_settings(const Shot& shot);

// Whether two recorded settings describe the same render (input files compared by content).
bool same_settings(const nlohmann::json& a, const nlohmann::json& b);

// Why `shot` has to be rendered given the merged manifest, or "" when it is up to date.
std::string render_reason(const Shot& shot, const nlohmann::json& settings,
                          const MergedManifest& manifest, const std::string& out_dir);

// Temporary files left in `dir` by an interrupted run for the given final file names (the
// io::temp_path_for pattern ".<name>.<pid>.<n>.tmp").
std::vector<std::string> stray_temporaries(const std::string& dir,
                                           const std::vector<std::string>& final_names);

class BatchRunner {
 public:
  BatchRunner(const ShotList& list, BatchOptions options, ShotRenderer& renderer);
  // Renders this shard's share. Throws InputError/ConfigError before rendering anything when
  // the folder is unusable, the shard is already being rendered, or the renderer's prepare()
  // reports problems; vdm::Interrupted on SIGINT/SIGTERM. Per-shot failures are in the summary.
  BatchSummary run();

 private:
  const ShotList& list_;
  BatchOptions options_;
  ShotRenderer& renderer_;
};

// Shots of `list` that have no done record with a present, matching output in `out_dir` (the
// merged manifest of all shards), in list order. Empty when the whole list is rendered.
std::vector<std::string> unfinished_shots(const ShotList& list, const std::string& out_dir);

// ---- joining the rendered shots (--concat) ---------------------------------------------------

// Checks a --concat path before anything renders: a video extension (.mp4, .webm, .gif, .mkv,
// .mov, .m4v), an existing writable folder, and not one of the shots' own outputs.
void check_concat_path(const ShotList& list, const std::string& out_dir, const std::string& path);

using ClipJoiner =
    std::function<ConcatResult(const std::vector<std::string>& inputs, const std::string& output)>;

struct ConcatOutcome {
  bool written = false;
  std::vector<std::string> waiting_for;  // shots not finished yet, in list order
  ConcatResult result;
};

// When every shot of the list is done (merged manifest of all shards, outputs present and
// matching), joins the outputs in list order into `path` with `join` (concat_videos in the CLI),
// holding a lock in `out_dir` so two shards finishing together do not both write it. Otherwise
// writes nothing and returns the shots still missing.
ConcatOutcome concat_shots(const ShotList& list, const std::string& out_dir,
                           const std::string& path, const ClipJoiner& join);

}  // namespace vdm::batch
