// LoRA training (train/lora_adapters.h, a recipe's "lora" section): adapters start as the base model,
// train only themselves, and export a file that the loader merges into exactly the model they trained.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "core/runtime.h"
#include "io/tensor_io.h"
#include "models/lora.h"
#include "models/unet_3d_condition.h"
#include "pipelines/video_pipeline.h"
#include "tests/support/test_support.h"
#include "text/clip_text_model.h"
#include "train/lora_adapters.h"
#include "train/recipe.h"
#include "train/shapes_benchmark.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace vdm::train {
namespace {

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct UNetInputs {
  at::Tensor x, t, text;
};

UNetInputs unet_inputs(const models::UNet3DConditionConfig& c) {
  at::manual_seed(11);
  return {at::randn({1, c.in_channels, 3, 8, 8}), at::tensor({500}, at::kLong), at::randn({1, 5, c.cross_attention_dim})};
}

// The adapters' forward (the weight member set to W + s * B @ A) is the base model while B is zero,
// passes gradients to A and B only, and leaves the model as it was when the guard ends; the file it
// saves, merged by the loader into a copy of the base, gives the same output as the adapted model.
TEST(LoraTraining, AdaptedForwardEqualsTheMergedFile) {
  models::UNet3DConditionConfig cfg = test::tiny_unet3d_config(8, 4, 12, 4);
  models::UNet3DConditionModel unet(cfg);
  unet->eval();  // the temporal convolutions' dropout off: every forward the same
  for (auto& p : unet->parameters()) p.set_requires_grad(false);
  const UNetInputs in = unet_inputs(cfg);
  at::Tensor base_out;
  {
    at::NoGradGuard g;
    base_out = unet->forward(in.x, in.t, in.text);
  }
  at::Generator gen = vdm::make_generator(3);
  LoraAdapters adapters(*unet, "unet", LoraAdapterOptions{2, 4.0, {"to_q", "to_v", "to_out.0", "conv1"}}, gen);
  // Every attention's to_q, to_v and to_out.0 and the spatial ResNets' conv1 (a temporal convolution
  // layer's conv1 is a Sequential, which is not adapted).
  std::set<std::string> expected;
  for (const auto& p : unet->named_parameters()) {
    const std::string& k = p.key();
    for (const char* suffix : {".to_q.weight", ".to_v.weight", ".to_out.0.weight", ".conv1.weight"}) {
      const std::string s = suffix;
      if (k.size() > s.size() && k.compare(k.size() - s.size(), s.size(), s) == 0) {
        expected.insert("unet." + k.substr(0, k.size() - 7) + ".lora_A.weight");
        expected.insert("unet." + k.substr(0, k.size() - 7) + ".lora_B.weight");
      }
    }
  }
  std::set<std::string> got;
  for (const auto& [key, value] : adapters.parameters()) {
    got.insert(key);
    if (key.find("lora_B") != std::string::npos) {
      EXPECT_EQ(value.abs().max().item<float>(), 0.0f) << key;
    }
  }
  EXPECT_EQ(got, expected);
  EXPECT_EQ(static_cast<int64_t>(got.size()), 2 * adapters.size());
  {
    LoraAdapters::Applied applied(adapters);
    at::NoGradGuard g;
    EXPECT_TRUE(unet->forward(in.x, in.t, in.text).equal(base_out)) << "B = 0 must leave the model as it was";
  }
  // Gradients reach A and B (B first: A's gradient is zero while B is).
  {
    LoraAdapters::Applied applied(adapters);
    unet->forward(in.x, in.t, in.text).square().mean().backward();
  }
  for (const auto& [key, value] : adapters.parameters()) {
    if (key.find("lora_B") == std::string::npos) continue;
    ASSERT_TRUE(value.grad().defined()) << key;
    EXPECT_GT(value.grad().abs().max().item<float>(), 0.0f) << key;
  }
  for (const auto& p : unet->parameters()) EXPECT_FALSE(p.grad().defined());

  {
    at::NoGradGuard g;
    at::manual_seed(12);
    for (const auto& [key, value] : adapters.parameters()) value.add_(at::randn(value.sizes()) * 0.2);
  }
  at::Tensor adapted_out;
  {
    LoraAdapters::Applied applied(adapters);
    at::NoGradGuard g;
    adapted_out = unet->forward(in.x, in.t, in.text);
  }
  EXPECT_GT(test::max_abs_diff(adapted_out, base_out), 1e-3);
  {
    at::NoGradGuard g;
    EXPECT_TRUE(unet->forward(in.x, in.t, in.text).equal(base_out)) << "the guard did not restore the weights";
  }

  const std::string dir = test::make_temp_dir("lora_train_file");
  save_lora_weights({&adapters}, dir);
  const models::LoraComponents components = {{"unet", unet.get()}};
  const models::LoraFile file = models::read_lora(dir, components);
  EXPECT_EQ(file.format, "peft");
  EXPECT_EQ(static_cast<int64_t>(file.layers.size()), adapters.size());
  for (const auto& l : file.layers) EXPECT_DOUBLE_EQ(l.scale, 2.0) << l.module;  // alpha 4 / rank 2 from the metadata
  models::merge_lora(file, 1.0, components);
  at::NoGradGuard g;
  EXPECT_LT(test::max_abs_diff(unet->forward(in.x, in.t, in.text), adapted_out), 1e-5);
}

// The text encoder's adapters (diffusers' --train_text_encoder targets) are saved beside the UNet's in
// one file, with each component's LoraConfig under its prefix, and merging that file gives the adapted
// text encoder.
TEST(LoraTraining, TextEncoderAdaptersShareTheFileAndMergeAsTrained) {
  at::manual_seed(4);
  text::CLIPTextModel clip(test::tiny_clip_text_config());
  clip->eval();
  models::UNet3DConditionModel unet{test::tiny_unet3d_config(8, 4, 16, 4)};
  unet->eval();
  for (auto& p : clip->parameters()) p.set_requires_grad(false);
  for (auto& p : unet->parameters()) p.set_requires_grad(false);
  at::Generator gen = make_generator(3);
  LoraAdapters unet_adapters(*unet, "unet", {2, 4.0, {"to_q"}}, gen);
  LoraAdapters text_adapters(*clip, "text_encoder", {2, 4.0, {"q_proj", "k_proj", "v_proj", "out_proj"}}, gen);
  EXPECT_EQ(text_adapters.size(), 2 * 4);  // two layers of the tiny CLIP
  {
    at::NoGradGuard g;
    for (const auto& [key, value] : text_adapters.parameters()) value.add_(at::randn(value.sizes()) * 0.3);
  }
  const at::Tensor ids = at::tensor({38, 5, 9, 17, 39, 0, 0, 0, 0, 0, 0, 0}, at::kLong).view({1, 12});
  at::NoGradGuard g;
  const at::Tensor base_out = clip->forward(ids).last_hidden_state;
  at::Tensor adapted_out;
  {
    LoraAdapters::Applied applied(text_adapters);
    adapted_out = clip->forward(ids).last_hidden_state;
  }
  EXPECT_GT(test::max_abs_diff(adapted_out, base_out), 1e-3);

  const std::string dir = test::make_temp_dir("lora_text_file");
  save_lora_weights({&unet_adapters, &text_adapters}, dir);
  const models::LoraComponents components = {{"unet", unet.get()}, {"text_encoder", clip.get()}};
  const models::LoraFile file = models::read_lora(dir, components);
  std::map<std::string, int> per_component;
  for (const auto& l : file.layers) {
    ++per_component[l.component];
    EXPECT_DOUBLE_EQ(l.scale, 2.0) << l.module;  // alpha 4 / rank 2, from each component's metadata
  }
  EXPECT_EQ(per_component["text_encoder"], 8);
  EXPECT_EQ(per_component["unet"], unet_adapters.size());
  models::merge_lora(file, 1.0, components);
  EXPECT_LT(test::max_abs_diff(clip->forward(ids).last_hidden_state, adapted_out), 1e-5);
}

// The tiny recipe with two steps per stage: a base model to train LoRAs for.
nlohmann::json tiny_base_recipe() {
  nlohmann::json j = test::tiny_recipe_json();
  j["vae"]["train"]["steps"] = 2;
  j["unet"]["train"]["steps"] = 2;
  return j;
}

// A LoRA recipe on a trained folder: only the adapters train, the base folder is left byte for
// byte, and the file it writes changes what the pipeline renders with --lora.
TEST(LoraTraining, RecipeTrainsAdaptersForItsBaseModel) {
  const std::string dir = test::make_temp_dir("lora_recipe");
  TrainOptions base_options;
  base_options.out_dir = dir + "/base";
  run_training(TrainRecipe::from_json(tiny_base_recipe(), "tiny-base"), "all", base_options);
  const fs::path base = model_dir(base_options.out_dir);
  const std::string unet_file = (base / "unet" / "diffusion_pytorch_model.safetensors").string();
  const std::string unet_before = read_bytes(unet_file);

  nlohmann::json lora = nlohmann::json::parse(R"({
    "name": "tiny-lora", "seed": 9,
    "data": {"dataset": "shapes", "size": 16, "frames": 4, "fps": 8, "world": {"min_radius": 0.2, "max_radius": 0.25}},
    "unet": {"train": {"steps": 4, "batch": 2, "lr": 0.01, "warmup": 0, "ema_decay": 0.5, "checkpoint_every": 100,
                       "log_every": 1, "precision": "float32"}},
    "lora": {"rank": 2, "alpha": 2}
  })");
  lora["lora"]["base"] = base.string();
  const TrainRecipe recipe = TrainRecipe::from_json(lora, "tiny-lora");
  EXPECT_TRUE(recipe.is_lora());
  EXPECT_EQ(recipe.unet.config.at("in_channels"), 9);  // from the base folder
  TrainOptions o;
  o.out_dir = dir + "/lora";
  EXPECT_THROW(run_training(recipe, "unet", o), InputError);
  auto reports = run_training(recipe, "all", o);
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].stage, "lora");
  EXPECT_EQ(reports[0].end_step, 4);
  EXPECT_EQ(read_bytes(unet_file), unet_before) << "LoRA training changed the base model";
  EXPECT_FALSE(fs::exists(model_dir(o.out_dir))) << "a LoRA run exports no model folder";
  const std::string lora_file = lora_dir(o.out_dir) + "/pytorch_lora_weights.safetensors";
  ASSERT_TRUE(fs::exists(lora_file));
  EXPECT_TRUE(fs::exists(lora_dir(o.out_dir) + "/training.json"));

  auto load = [&](const std::vector<models::LoraSpec>& loras) {
    pipelines::PipelineConfig pc;
    pc.model_dir = base.string();
    pc.loras = loras;
    return pipelines::VideoPipeline::load(pc);
  };
  const pipelines::GenerateOptions g = test::tiny_clip_options();
  auto render = [&](const std::vector<models::LoraSpec>& loras) { return load(loras)->generate_float(g); };
  const at::Tensor plain = render({});
  const at::Tensor merged = render({{lora_dir(o.out_dir), 1.0}});
  EXPECT_GT(test::max_abs_diff(merged, plain), 1e-4);
  EXPECT_TRUE(render({{lora_file, 0.0}}).equal(plain)) << "strength 0 must leave the model as it was";

  // A batch's per-shot LoRAs on one loaded pipeline: merged in place they give what merging at load
  // gives, and switching back restores the model bit for bit.
  {
    auto pipe = load({});
    pipe->set_extra_loras({{lora_file, 0.5}});
    EXPECT_GT(test::max_abs_diff(pipe->generate_float(g), plain), 1e-5);
    pipe->set_extra_loras({{lora_file, 1.0}});
    EXPECT_TRUE(pipe->generate_float(g).equal(merged));
    EXPECT_EQ(pipe->lora_description(), lora_file + ":1");
    pipe->set_extra_loras({});
    EXPECT_TRUE(pipe->generate_float(g).equal(plain));
    EXPECT_EQ(pipe->lora_description(), "");
    const std::string bad = dir + "/bad.safetensors";
    io::save_safetensors(bad, {{"unet.conv_in.lora_A.weight", at::zeros({2, 3, 3, 3})}});
    EXPECT_THROW(pipe->set_extra_loras({{lora_file, 1.0}, {bad, 1.0}}), WeightsError);
    EXPECT_TRUE(pipe->generate_float(g).equal(plain)) << "a failed switch changed the model";
  }

  // With text_encoder_target_modules the text encoder trains too: the file adapts both components
  // and changes what the text encoder makes of a prompt; the base folder is still untouched.
  {
    nlohmann::json both = lora;
    both["lora"]["text_encoder_target_modules"] = {"q_proj", "v_proj"};
    const TrainRecipe with_text = TrainRecipe::from_json(both, "tiny-lora-text");
    EXPECT_EQ(with_text.to_json()["lora"]["text_encoder_target_modules"], both["lora"]["text_encoder_target_modules"]);
    TrainOptions to;
    to.out_dir = dir + "/lora-text";
    run_training(with_text, "lora", to);
    EXPECT_EQ(read_bytes(unet_file), unet_before);
    auto pipe = load({});
    text::CLIPTextModel clip = text::load_clip_text_model((base / "text_encoder").string());
    models::UNet3DConditionModel base_unet = models::load_unet3d((base / "unet").string());
    const models::LoraFile file =
        models::read_lora(lora_dir(to.out_dir), {{"unet", base_unet.get()}, {"text_encoder", clip.get()}});
    std::set<std::string> components;
    for (const auto& l : file.layers) components.insert(l.component);
    EXPECT_EQ(components, (std::set<std::string>{"unet", "text_encoder"}));
    const at::Tensor text_plain = pipe->encode_prompt(g.prompt, "", false);
    pipe->set_extra_loras({{lora_dir(to.out_dir), 1.0}});
    EXPECT_GT(test::max_abs_diff(pipe->encode_prompt(g.prompt, "", false), text_plain), 1e-5)
        << "the trained text-encoder adapters did not change the prompt's embedding";
    both["lora"]["text_encoder_target_modules"] = nlohmann::json::array();
    EXPECT_THROW(TrainRecipe::from_json(both, "tiny-lora-text"), ConfigError);
  }

  // The configs come from the base: a LoRA recipe that also gives one is refused.
  lora["unet"]["config"] = tiny_base_recipe()["unet"]["config"];
  EXPECT_THROW(TrainRecipe::from_json(lora, "tiny-lora"), ConfigError);
  lora["unet"].erase("config");
  lora["lora"]["target_modules"] = {"no_such_layer"};
  o.out_dir = dir + "/lora2";
  EXPECT_THROW(run_training(TrainRecipe::from_json(lora, "tiny-lora"), "lora", o), ConfigError);
}

// The LoRA shipped beside the embedded model (configs/shapes/lora-large-shapes.json) makes the
// objects of text-to-video clips larger while the captions still hold: measured on the decoded
// frames, same captions and seeds with and without it.
TEST(LoraTraining, ShippedLargeShapesLoraEnlargesTheObjects) {
  const std::string root = VDM_SOURCE_DIR;
  ShapesBenchmarkOptions o;
  o.model_dir = root + "/samples/models/shapes";
  o.n = 6;
  o.steps = 10;
  o.seed = 3;
  o.image_to_video = false;
  const ShapeRates base = run_shapes_benchmark(o).t2v;
  o.loras = {{root + "/samples/loras/large-shapes", 1.0}};
  const ShapeRates large = run_shapes_benchmark(o).t2v;
  EXPECT_GT(large.size, base.size * 1.15) << "median object size " << base.size << " without, " << large.size << " with";
  EXPECT_GE(large.colour, 5.0 / 6) << "the LoRA lost the captions' colours";
}

}  // namespace
}  // namespace vdm::train
