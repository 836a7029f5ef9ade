// First-frame conditioning shared by the image-to-video pipeline and the trainer.
//
// A UNet whose in_channels is 2 * latent_channels + 1 takes cat([noisy latents, condition], dim=1)
// where condition: [B, C + 1, F, h, w] holds
//   channels 0..C-1  the (scaled) latent of the still image at frame 0, zeros at other frames
//   channel  C       a mask: 1 at frame 0 when an image is given, 0 elsewhere
// and is all zeros for text-to-video (no image).
//
// A UNet whose in_channels is 2 * latent_channels + 2 takes one more channel after those: the frame
// position, a ramp from -1 at the first frame to +1 at the last, the same at every pixel and given
// for text- and image-to-video alike. UNet3DConditionModel's temporal layers carry no frame index
// (temporal attention is blind to frame order), so this channel is what lets a caption's motion
// ("moving left") place the object differently in early and late frames.
//
// A UNet whose in_channels is 2 * latent_channels + 4 takes two more channels after the frame
// position: the pixel coordinates, x from -1 at the left edge to +1 at the right and y from -1 at
// the top to +1 at the bottom, the same in every frame. Convolutions are blind to where they are
// (only the zero padding at the borders tells them), and a motion caption asks for a place that
// changes with the frame: "moving right" puts the object at larger x in later frames.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace vdm::pipelines {

// image_latent: [B, C, h, w] (already multiplied by the VAE scaling factor) or undefined.
// Returns condition: [B, C + 1, F, h, w] in `options` dtype/device.
at::Tensor first_frame_condition(const at::Tensor& image_latent, int64_t batch, int64_t channels,
                                 int64_t frames, int64_t height, int64_t width,
                                 const at::TensorOptions& options);

// True when a UNet with `unet_in_channels` takes first-frame conditioning for `latent_channels`
// (with or without the frame-position and pixel-coordinate channels).
inline bool takes_first_frame_condition(int64_t unet_in_channels, int64_t latent_channels) {
  const int64_t extra = unet_in_channels - 2 * latent_channels;
  return extra == 1 || extra == 2 || extra == 4;
}

// True when the UNet also takes the frame-position channel.
inline bool takes_frame_position(int64_t unet_in_channels, int64_t latent_channels) {
  const int64_t extra = unet_in_channels - 2 * latent_channels;
  return extra == 2 || extra == 4;
}

// The in_channels that take first-frame conditioning for `latent_channels`, for error messages:
// "17 (first frame), 18 (with frame position) or 20 (with frame position and pixel coordinates)".
std::string first_frame_condition_layouts(int64_t latent_channels);

// True when the UNet also takes the two pixel-coordinate channels.
inline bool takes_pixel_coordinates(int64_t unet_in_channels, int64_t latent_channels) {
  return unet_in_channels == 2 * latent_channels + 4;
}

// The full conditioning a UNet with `unet_in_channels` takes next to the noisy latents:
// [B, unet_in_channels - C, F, h, w], or undefined for a plain text-to-video UNet (in_channels C).
// keep: optional [B] of 0/1 (training's first-frame dropout) multiplying the image and mask
// channels of each sample; the frame position and pixel coordinates are never dropped.
at::Tensor unet_condition(const at::Tensor& image_latent, int64_t unet_in_channels, int64_t batch,
                          int64_t channels, int64_t frames, int64_t height, int64_t width,
                          const at::TensorOptions& options, const at::Tensor& keep = {});

}  // namespace vdm::pipelines
