// Whole text-to-video runs against the reference pipeline: every case of
// golden/pipeline.safetensors (settings from golden/manifest.json), the latents after every step,
// the final latents and the decoded frames; plus encode_prompt.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "io/tensor_io.h"
#include "pipelines/video_pipeline.h"
#include "tests/support/test_support.h"

namespace {

constexpr double kTol = 1e-4;

struct Fixture {
  nlohmann::json cases;
  nlohmann::json manifest_pipeline;
  vdm::io::TensorMap golden;
  std::unique_ptr<vdm::pipelines::VideoPipeline> pipe;
};

Fixture load(const std::string& root) {
  Fixture f;
  std::ifstream in(root + "/golden/manifest.json");
  nlohmann::json m = nlohmann::json::parse(in);
  f.manifest_pipeline = m.at("cases").at("pipeline");
  f.cases = f.manifest_pipeline.at("cases");
  f.golden = vdm::io::load_safetensors(root + "/golden/pipeline.safetensors");
  vdm::pipelines::PipelineConfig cfg;
  cfg.model_dir = root + "/" + f.manifest_pipeline.at("folder").get<std::string>();
  f.pipe = vdm::pipelines::VideoPipeline::load(cfg);
  return f;
}

// "EulerDiscreteScheduler.from_config(t2v_pipeline/scheduler)" -> "EulerDiscreteScheduler"
std::string scheduler_class(const std::string& desc) { return desc.substr(0, desc.find('.')); }

}  // namespace

TEST(PipelineParity, EveryCaseEveryStep) {
  VDM_REQUIRE_FIXTURES(root);
  Fixture f = load(root);
  ASSERT_GT(f.cases.size(), 0u);
  for (auto it = f.cases.begin(); it != f.cases.end(); ++it) {
    const std::string name = it.key();
    const auto& c = it.value();
    SCOPED_TRACE(name);
    vdm::pipelines::GenerateOptions o;
    o.prompt = c.at("prompt").get<std::string>();
    if (c.contains("negative_prompt") && !c.at("negative_prompt").is_null())
      o.negative_prompt = c.at("negative_prompt").get<std::string>();
    o.frames = c.at("num_frames").get<int64_t>();
    o.height = c.at("height").get<int64_t>();
    o.width = c.at("width").get<int64_t>();
    o.steps = c.at("num_inference_steps").get<int64_t>();
    o.guidance = c.at("guidance_scale").get<double>();
    o.sampler = scheduler_class(c.at("scheduler").get<std::string>());
    o.latents = f.golden.at(name + ".latents_in");
    std::vector<at::Tensor> steps;
    o.on_step = [&](int64_t, const at::Tensor& lat) { steps.push_back(lat.clone()); };

    at::Tensor frames = f.pipe->generate_float(o);  // [F, 3, H, W]
    ASSERT_EQ(static_cast<int64_t>(steps.size()), o.steps);
    for (int64_t i = 0; i < o.steps; ++i) {
      const std::string key = fmt::format("{}.step{}.latents", name, i);
      ASSERT_TRUE(f.golden.count(key)) << key;
      EXPECT_LT(vdm::test::max_abs_diff(steps[i], f.golden.at(key)), kTol) << key;
    }
    EXPECT_LT(vdm::test::max_abs_diff(steps.back(), f.golden.at(name + ".latents_out")), kTol);
    // golden frames: [B, F, C, H, W]
    EXPECT_LT(vdm::test::max_abs_diff(frames.unsqueeze(0), f.golden.at(name + ".frames")), kTol);
  }
}

TEST(PipelineParity, EncodePrompt) {
  VDM_REQUIRE_FIXTURES(root);
  Fixture f = load(root);
  const auto& e = f.manifest_pipeline.at("encode_prompt");
  std::string negative = e.at("negative_prompt").is_null() ? "" : e.at("negative_prompt").get<std::string>();
  at::Tensor embeds = f.pipe->encode_prompt(e.at("prompt").get<std::string>(), negative,
                                            e.at("do_classifier_free_guidance").get<bool>());
  ASSERT_EQ(embeds.size(0), 2);
  EXPECT_LT(vdm::test::max_abs_diff(embeds.slice(0, 0, 1), f.golden.at("encode_prompt.negative_prompt_embeds")), kTol);
  EXPECT_LT(vdm::test::max_abs_diff(embeds.slice(0, 1, 2), f.golden.at("encode_prompt.prompt_embeds")), kTol);
}
