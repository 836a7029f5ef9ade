// The batch engine with a fake renderer (no model): outputs, manifest, resume, failures,
// interruption, leftovers of killed runs, sharding into one folder.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "batch/batch_runner.h"
#include "batch/manifest.h"
#include "batch/sha256.h"
#include "batch/shot_list.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "tests/support/test_support.h"

namespace fs = std::filesystem;
using namespace vdm::batch;

namespace {

// Writes a small file per shot (atomically, like the real renderer), counts calls per shot id,
// and can be told to fail, to be interrupted mid-shot, or to report problems in prepare().
class FakeRenderer : public ShotRenderer {
 public:
  std::vector<std::string> prepare(const ShotList&, const std::vector<const Shot*>& shots) override {
    std::lock_guard<std::mutex> g(mu_);
    ++prepare_calls;
    prepared += shots.size();
    return problems;
  }
  ShotResult render(const Shot& shot, const std::string& output_path) override {
    {
      std::lock_guard<std::mutex> g(mu_);
      ++calls[shot.id];
      order.push_back(shot.id);
    }
    if (on_render) on_render(shot);
    vdm::io::AtomicFile f(output_path);
    f.write(fmt::format("frames={} seed={} prompt={}\n", shot.frames, shot.seed, shot.prompt));
    if (fail.count(shot.id)) throw vdm::Error("fake renderer failure for " + shot.id);
    if (interrupt.count(shot.id)) {
      // The temporary exists at this point; unwinding must remove it.
      EXPECT_TRUE(fs::exists(f.temp_path()));
      throw vdm::Interrupted(15);
    }
    f.commit();
    ShotResult r;
    r.frames = shot.frames;
    r.width = 64;
    r.height = 64;
    r.fps = shot.fps;
    r.sampler = "fake";
    r.render_s = 0.01;
    return r;
  }
  int total_calls() const {
    int n = 0;
    for (const auto& [id, c] : calls) n += c;
    return n;
  }

  std::map<std::string, int> calls;
  std::vector<std::string> order;
  std::set<std::string> fail, interrupt;
  std::vector<std::string> problems;
  std::function<void(const Shot&)> on_render;
  int prepare_calls = 0;
  size_t prepared = 0;

 private:
  std::mutex mu_;
};

std::string shot_list_text(int n, const std::string& extra = "") {
  std::string s = "defaults:\n  frames: 4\nshots:\n";
  for (int i = 0; i < n; ++i) s += fmt::format("  - id: s{:02d}\n    prompt: shot number {}\n", i, i);
  return s + extra;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<std::string> temp_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".tmp") out.push_back(e.path().filename().string());
  return out;
}

class BatchRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = vdm::test::make_temp_dir("batch");
    out_ = root_ + "/out";
  }
  void TearDown() override { fs::remove_all(root_); }

  BatchSummary run(const ShotList& list, FakeRenderer& r, Shard shard = {}, bool force = false) {
    BatchOptions o;
    o.out_dir = out_;
    o.shard = shard;
    o.force = force;
    o.model = "fake-model";
    BatchRunner runner(list, o, r);
    return runner.run();
  }

  std::string root_, out_;
};

}  // namespace

TEST_F(BatchRunnerTest, RendersEveryShotAndWritesACompleteManifest) {
  ShotList list = parse_shot_list(shot_list_text(5, "  - {id: seeded, prompt: p, seed: 77}\n"),
                                  "shots.yaml", root_);
  FakeRenderer r;
  BatchSummary s = run(list, r);
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.rendered, 6u);
  EXPECT_EQ(s.skipped, 0u);
  EXPECT_EQ(r.total_calls(), 6);
  EXPECT_EQ(r.prepare_calls, 1);
  EXPECT_EQ(r.prepared, 6u);
  // List order is render order.
  EXPECT_EQ(r.order.front(), "s00");
  EXPECT_EQ(r.order.back(), "seeded");

  MergedManifest m = read_manifests(out_);
  EXPECT_TRUE(m.warnings.empty());
  ASSERT_EQ(m.files.size(), 1u);
  EXPECT_EQ(fs::path(m.files[0]).filename(), "manifest.jsonl");
  ASSERT_EQ(m.records.size(), 6u);
  for (const Shot& shot : list.shots) {
    const ManifestRecord* rec = m.find(shot.id);
    ASSERT_NE(rec, nullptr) << shot.id;
    const std::string path = out_ + "/" + shot.id + ".mp4";
    ASSERT_TRUE(fs::exists(path));
    EXPECT_EQ(read_file(path),
              fmt::format("frames=4 seed={} prompt={}\n", shot.seed, shot.prompt));
    EXPECT_EQ(rec->status, "done");
    EXPECT_EQ(rec->output, shot.id + ".mp4");
    EXPECT_EQ(rec->sha256, sha256_file(path));
    EXPECT_EQ(rec->bytes, static_cast<int64_t>(fs::file_size(path)));
    EXPECT_EQ(rec->settings.at("seed").get<uint64_t>(), shot.seed);
    EXPECT_EQ(rec->settings.at("prompt"), shot.prompt);
    EXPECT_EQ(rec->settings.at("frames"), 4);
    EXPECT_EQ(rec->resolved.at("sampler"), "fake");
    EXPECT_EQ(rec->model, "fake-model");
    EXPECT_TRUE(rec->timings.contains("total_s"));
    EXPECT_FALSE(rec->finished_at.empty());
  }
  EXPECT_EQ(m.find("seeded")->settings.at("seed"), 77);
  EXPECT_EQ(m.find("s01")->settings.at("seed").get<uint64_t>(), derive_seed("s01"));
  EXPECT_TRUE(temp_files(out_).empty());
  EXPECT_TRUE(unfinished_shots(list, out_).empty());
}

TEST_F(BatchRunnerTest, RerunRendersNothingAndDeletedOutputIsRenderedAgain) {
  ShotList list = parse_shot_list(shot_list_text(4), "shots.yaml", root_);
  FakeRenderer first;
  run(list, first);
  const std::string hash_s00 = sha256_file(out_ + "/s00.mp4");

  FakeRenderer second;
  BatchSummary s = run(list, second);
  EXPECT_EQ(second.total_calls(), 0);
  EXPECT_EQ(second.prepare_calls, 0);  // nothing to render: no model load either
  EXPECT_EQ(s.skipped, 4u);
  EXPECT_EQ(s.rendered, 0u);

  fs::remove(out_ + "/s02.mp4");
  FakeRenderer third;
  s = run(list, third);
  EXPECT_EQ(third.total_calls(), 1);
  EXPECT_EQ(third.calls["s02"], 1);
  EXPECT_EQ(s.rendered, 1u);
  EXPECT_EQ(s.skipped, 3u);
  EXPECT_TRUE(fs::exists(out_ + "/s02.mp4"));
  EXPECT_EQ(sha256_file(out_ + "/s00.mp4"), hash_s00);
  EXPECT_EQ(read_manifests(out_).records.size(), 4u);
}

TEST_F(BatchRunnerTest, ModifiedOutputChangedSettingsAndForceRenderAgain) {
  ShotList list = parse_shot_list(shot_list_text(4), "shots.yaml", root_);
  FakeRenderer first;
  run(list, first);

  // A file that is not the one recorded (edited, truncated) is rendered again.
  std::ofstream(out_ + "/s01.mp4", std::ios::trunc) << "truncated";
  // A shot whose settings changed is rendered again; the others are not.
  ShotList edited = parse_shot_list(shot_list_text(4), "shots.yaml", root_);
  edited.shots[3].prompt = "a different prompt";
  FakeRenderer second;
  run(edited, second);
  EXPECT_EQ(second.total_calls(), 2);
  EXPECT_EQ(second.calls["s01"], 1);
  EXPECT_EQ(second.calls["s03"], 1);
  EXPECT_EQ(read_manifests(out_).find("s03")->settings.at("prompt"), "a different prompt");

  // Guidance rescale and frame windows are settings too: each change renders its shot again.
  edited.shots[0].guidance_rescale = 0.7;
  edited.shots[2].context_frames = 8;
  FakeRenderer third;
  run(edited, third);
  EXPECT_EQ(third.total_calls(), 2);
  EXPECT_EQ(third.calls["s00"], 1);
  EXPECT_EQ(third.calls["s02"], 1);
  EXPECT_EQ(read_manifests(out_).find("s00")->settings.at("guidance_rescale"), 0.7);
  EXPECT_EQ(read_manifests(out_).find("s02")->settings.at("context_frames"), 8);

  FakeRenderer forced;
  BatchSummary s = run(edited, forced, {}, /*force=*/true);
  EXPECT_EQ(forced.total_calls(), 4);
  EXPECT_EQ(s.rendered, 4u);
}

TEST_F(BatchRunnerTest, FailingShotDoesNotStopTheBatch) {
  ShotList list = parse_shot_list(shot_list_text(5), "shots.yaml", root_);
  FakeRenderer r;
  r.fail = {"s01", "s03"};
  BatchSummary s = run(list, r);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(r.total_calls(), 5);  // the shots after the failures were rendered
  EXPECT_EQ(s.rendered, 3u);
  ASSERT_EQ(s.failures.size(), 2u);
  EXPECT_EQ(s.failures[0].id, "s01");
  EXPECT_EQ(s.failures[1].id, "s03");
  EXPECT_NE(s.describe().find("s03: fake renderer failure for s03"), std::string::npos)
      << s.describe();
  EXPECT_FALSE(fs::exists(out_ + "/s01.mp4"));
  EXPECT_TRUE(fs::exists(out_ + "/s04.mp4"));
  EXPECT_TRUE(temp_files(out_).empty());
  MergedManifest m = read_manifests(out_);
  ASSERT_EQ(m.records.size(), 5u);
  EXPECT_EQ(m.find("s01")->status, "failed");
  EXPECT_EQ(m.find("s01")->error, "fake renderer failure for s01");
  EXPECT_TRUE(m.find("s01")->sha256.empty());
  EXPECT_EQ(m.find("s02")->status, "done");
  EXPECT_EQ(unfinished_shots(list, out_), (std::vector<std::string>{"s01", "s03"}));

  // The rerun retries exactly the failed shots.
  FakeRenderer retry;
  s = run(list, retry);
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(retry.total_calls(), 2);
  EXPECT_EQ(retry.calls["s01"], 1);
  EXPECT_EQ(retry.calls["s03"], 1);
  EXPECT_EQ(read_manifests(out_).find("s01")->status, "done");
}

TEST_F(BatchRunnerTest, InterruptedShotLeavesNoTemporaryAndAConsistentManifest) {
  ShotList list = parse_shot_list(shot_list_text(5), "shots.yaml", root_);
  FakeRenderer r;
  r.interrupt = {"s02"};
  try {
    run(list, r);
    FAIL() << "expected vdm::Interrupted";
  } catch (const vdm::Interrupted& e) {
    EXPECT_EQ(e.exit_code(), 143);
  }
  EXPECT_EQ(r.total_calls(), 3);  // stopped at s02
  EXPECT_TRUE(temp_files(out_).empty());
  EXPECT_FALSE(fs::exists(out_ + "/s02.mp4"));
  MergedManifest m = read_manifests(out_);
  EXPECT_TRUE(m.warnings.empty());
  EXPECT_EQ(m.records.size(), 2u);  // s00, s01: finished before the signal
  EXPECT_EQ(m.find("s02"), nullptr);
  const std::string hash_s00 = sha256_file(out_ + "/s00.mp4");

  FakeRenderer resume;
  run(list, resume);
  EXPECT_EQ(resume.total_calls(), 3);
  EXPECT_EQ(resume.calls.count("s00"), 0u);
  EXPECT_EQ(resume.calls["s02"], 1);
  EXPECT_EQ(sha256_file(out_ + "/s00.mp4"), hash_s00);
  EXPECT_TRUE(unfinished_shots(list, out_).empty());
}

TEST_F(BatchRunnerTest, LeftoversOfAKilledRunAreCleanedAndOnlyThose) {
  ShotList list = parse_shot_list(shot_list_text(3), "shots.yaml", root_);
  FakeRenderer first;
  run(list, first);
  // What `kill -9` during s01's encoding and during a manifest rewrite leaves behind, plus files
  // that are not ours to remove.
  fs::remove(out_ + "/s01.mp4");
  std::ofstream(out_ + "/.s01.mp4.999999.0.tmp") << "partial";
  std::ofstream(out_ + "/.manifest.jsonl.999999.3.tmp") << "{\"id\": \"s0";
  std::ofstream(out_ + "/.other-shard-shot.mp4.999999.0.tmp") << "not ours";
  std::ofstream(out_ + "/notes.tmp") << "user file";
  std::ofstream(out_ + "/s01.mp4.tmp") << "user file";

  FakeRenderer second;
  BatchSummary s = run(list, second);
  EXPECT_EQ(second.total_calls(), 1);
  EXPECT_EQ(s.removed_temporaries.size(), 2u);
  EXPECT_FALSE(fs::exists(out_ + "/.s01.mp4.999999.0.tmp"));
  EXPECT_FALSE(fs::exists(out_ + "/.manifest.jsonl.999999.3.tmp"));
  EXPECT_TRUE(fs::exists(out_ + "/.other-shard-shot.mp4.999999.0.tmp"));
  EXPECT_TRUE(fs::exists(out_ + "/notes.tmp"));
  EXPECT_TRUE(fs::exists(out_ + "/s01.mp4.tmp"));
}

TEST_F(BatchRunnerTest, CorruptManifestLinesOnlyCauseRerenders) {
  ShotList list = parse_shot_list(shot_list_text(3), "shots.yaml", root_);
  FakeRenderer first;
  run(list, first);
  // Drop s02's line and append a garbage line: s02 is rendered again, the rest are kept.
  std::string text = read_file(out_ + "/manifest.jsonl");
  text = text.substr(0, text.find("{\"id\":\"s02\""));
  std::ofstream(out_ + "/manifest.jsonl", std::ios::trunc) << text << "{\"id\": \"s0\n";
  MergedManifest m = read_manifests(out_);
  EXPECT_EQ(m.warnings.size(), 1u);
  EXPECT_EQ(m.records.size(), 2u);
  FakeRenderer second;
  run(list, second);
  EXPECT_EQ(second.total_calls(), 1);
  EXPECT_EQ(second.calls["s02"], 1);
  m = read_manifests(out_);
  EXPECT_TRUE(m.warnings.empty());  // the rewrite dropped the bad line
  EXPECT_EQ(m.records.size(), 3u);
}

TEST_F(BatchRunnerTest, ThreeShardsIntoOneFolder) {
  ShotList list = parse_shot_list(shot_list_text(24), "shots.yaml", root_);
  FakeRenderer shared;
  std::vector<BatchSummary> summaries(3);
  std::vector<std::thread> threads;
  for (int k = 0; k < 3; ++k) {
    threads.emplace_back([&, k] {
      summaries[k] = run(list, shared, parse_shard(std::to_string(k + 1) + "/3"));
    });
  }
  for (auto& t : threads) t.join();
  size_t rendered = 0;
  for (const auto& s : summaries) {
    EXPECT_TRUE(s.ok());
    EXPECT_GT(s.shots_in_shard, 0u);
    rendered += s.rendered;
  }
  EXPECT_EQ(rendered, 24u);
  EXPECT_EQ(shared.calls.size(), 24u);
  for (const auto& [id, n] : shared.calls) EXPECT_EQ(n, 1) << id << " rendered " << n << " times";
  MergedManifest m = read_manifests(out_);
  EXPECT_EQ(m.files.size(), 3u);
  EXPECT_EQ(m.records.size(), 24u);
  for (const auto& [id, rec] : m.records)
    EXPECT_EQ(rec.shard, fmt::format("{}/3", shard_of(id, 3) + 1)) << id;
  EXPECT_TRUE(unfinished_shots(list, out_).empty());
  EXPECT_TRUE(temp_files(out_).empty());

  // An unsharded rerun over the same folder finds everything done.
  FakeRenderer again;
  BatchSummary s = run(list, again);
  EXPECT_EQ(again.total_calls(), 0);
  EXPECT_EQ(s.skipped, 24u);
}

TEST_F(BatchRunnerTest, TheSameShardTwiceAtOnceIsRefused) {
  ShotList list = parse_shot_list(shot_list_text(2), "shots.yaml", root_);
  FakeRenderer outer;
  bool refused = false;
  outer.on_render = [&](const Shot&) {
    if (refused) return;
    FakeRenderer inner;
    try {
      run(list, inner);
    } catch (const vdm::InputError& e) {
      refused = std::string(e.what()).find("already rendering shard 1/1") != std::string::npos;
    }
    EXPECT_EQ(inner.total_calls(), 0);
  };
  run(list, outer);
  EXPECT_TRUE(refused);
  // Another shard in the same folder is not blocked.
  const int outer_shard = shard_of("s00", 2);
  FakeRenderer other_shard_outer;
  bool other_ran = false;
  other_shard_outer.on_render = [&](const Shot&) {
    if (other_ran) return;
    FakeRenderer inner;
    run(list, inner, parse_shard(fmt::format("{}/2", 2 - outer_shard)), /*force=*/true);
    other_ran = true;
  };
  run(list, other_shard_outer, parse_shard(fmt::format("{}/2", outer_shard + 1)), /*force=*/true);
  EXPECT_TRUE(other_ran);
}

TEST_F(BatchRunnerTest, PrepareProblemsStopBeforeAnythingRenders) {
  ShotList list = parse_shot_list(shot_list_text(3), "shots.yaml", root_);
  FakeRenderer r;
  r.problems = {"shots.yaml:4: shot 's00': width 72 is not a multiple of 16"};
  try {
    run(list, r);
    FAIL() << "expected InputError";
  } catch (const vdm::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("nothing was rendered"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("shots.yaml:4: shot 's00'"), std::string::npos);
  }
  EXPECT_EQ(r.total_calls(), 0);
  EXPECT_TRUE(read_manifests(out_).records.empty());
}

TEST_F(BatchRunnerTest, UnwritableOutputFolderIsAnInputError) {
  ShotList list = parse_shot_list(shot_list_text(1), "shots.yaml", root_);
  std::ofstream(root_ + "/a-file") << "x";
  FakeRenderer r;
  BatchOptions o;
  o.out_dir = root_ + "/a-file/out";
  BatchRunner runner(list, o, r);
  EXPECT_THROW(runner.run(), vdm::InputError);
  EXPECT_EQ(r.total_calls(), 0);
}

TEST_F(BatchRunnerTest, ConcatWaitsForEveryShardThenJoinsInListOrder) {
  ShotList list = parse_shot_list(shot_list_text(9), "shots.yaml", root_);
  std::vector<std::string> joined;
  std::string joined_to;
  ClipJoiner join = [&](const std::vector<std::string>& inputs, const std::string& output) {
    joined = inputs;
    joined_to = output;
    ConcatResult r;
    r.remuxed = true;
    r.frames = static_cast<int64_t>(inputs.size());
    return r;
  };
  const std::string concat = root_ + "/all.mp4";
  check_concat_path(list, out_, concat);
  // Two of three shards done: nothing is joined, the missing shots are named in list order.
  FakeRenderer r;
  run(list, r, parse_shard("1/3"));
  run(list, r, parse_shard("3/3"));
  ConcatOutcome early = concat_shots(list, out_, concat, join);
  EXPECT_FALSE(early.written);
  EXPECT_TRUE(joined.empty());
  std::vector<std::string> expected_missing;
  for (const Shot& s : list.shots)
    if (shard_of(s.id, 3) == 1) expected_missing.push_back(s.id);
  ASSERT_FALSE(expected_missing.empty());
  EXPECT_EQ(early.waiting_for, expected_missing);
  // A stray temporary of a dead process for the joined file is cleaned up when joining.
  std::ofstream(root_ + "/.all.mp4.999999999.0.tmp") << "partial";
  run(list, r, parse_shard("2/3"));
  ConcatOutcome done = concat_shots(list, out_, concat, join);
  EXPECT_TRUE(done.written);
  EXPECT_EQ(done.result.frames, 9);
  EXPECT_EQ(joined_to, concat);
  ASSERT_EQ(joined.size(), 9u);
  for (size_t i = 0; i < joined.size(); ++i)
    EXPECT_EQ(fs::path(joined[i]).filename(), list.shots[i].output);
  EXPECT_FALSE(fs::exists(root_ + "/.all.mp4.999999999.0.tmp"));

  EXPECT_THROW(check_concat_path(list, out_, root_ + "/all.txt"), vdm::InputError);
  EXPECT_THROW(check_concat_path(list, out_, root_ + "/no-such-folder/all.mp4"), vdm::InputError);
  EXPECT_THROW(check_concat_path(list, out_, out_ + "/s03.mp4"), vdm::InputError);
}
