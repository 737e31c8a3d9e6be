#!/usr/bin/env bash
# Reproduce the shipped x4 generators from scratch (`make weights`): real photos from Debian's wallpaper
# packages and scikit-image, patches at native resolution, then flow.py's phase 1 (pixel loss, two stages)
# and phase 2 (adversarial fine-tuning). Needs a Debian/Ubuntu machine with `apt-get download` for the photos.
#
# The shipped PSNR model was trained on one NVIDIA H100 under Keras 3 + JAX (KERAS_BACKEND=jax; phase 1 runs
# without TensorFlow); the GAN model on the project's 2-core CPU under TensorFlow. The same commands run on
# either; only the time differs (see weights/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-data/weights-work}

# 1. Photos: MATE's nature backgrounds and the photographs among Plasma's wallpapers (drawn ones left out).
. weights/photos.sh  # PLASMA_PHOTOS, OPENCV_PHOTOS (the script runs from the repository root)
mkdir -p "$WORK/debs" "$WORK/photos/mate-nature" "$WORK/photos/plasma"
(cd "$WORK/debs" && apt-get download mate-backgrounds plasma-workspace-wallpapers)
for deb in "$WORK"/debs/*.deb; do dpkg -x "$deb" "$WORK/debs/x"; done
cp "$WORK"/debs/x/usr/share/backgrounds/mate/nature/*.jpg "$WORK/photos/mate-nature/"
for name in $PLASMA_PHOTOS; do  # each wallpaper's largest JPEG
  largest=$(ls "$WORK/debs/x/usr/share/wallpapers/$name/contents/images/"*.jpg | awk -F/ '{split($NF, s, "x"); print s[1], $0}' | sort -n | tail -1 | cut -d' ' -f2)
  cp "$largest" "$WORK/photos/plasma/$name.jpg"
done

# 2. RAW folder with manifest, then 128 px HR / 32 px LR patches (up to 300 a photo, flat ones skipped).
"$PY" fetcher.py local "$WORK/photos" --out data/raw-photos
"$PY" create_dataset.py data/raw-photos --samples --mode patches --patches 300 --out data/photos-x4

# 3. PSNR model: 16x64 SRResNet without batch norm, bicubic skip, L1; 12k steps at 2e-4 then 20k at 1e-4 (cosine).
ARCH="--filters 64 --blocks 16 --no-batch-norm --interpolation-skip bicubic"
"$PY" flow.py train --data data/photos-x4 --out runs/psnr-x4-stage1 $ARCH --pretrain-epochs 12 --gan-epochs 0 \
  --steps-per-epoch 1000 --batch-size 32 --pretrain-loss l1 --lr-g 2e-4 --lr-schedule cosine --seed 1
"$PY" flow.py train --data data/photos-x4 --out runs/psnr-x4 $ARCH --pretrain-epochs 20 --gan-epochs 0 \
  --steps-per-epoch 1000 --batch-size 32 --pretrain-loss l1 --lr-g 1e-4 --lr-schedule cosine --seed 2 \
  --init-generator runs/psnr-x4-stage1/generator.keras

# 4. GAN model: adversarial fine-tuning of the PSNR model (L1 content + 1e-2 adversarial; no VGG weights offline).
"$PY" flow.py train --data data/photos-x4 --out runs/gan-x4 $ARCH --init-generator runs/psnr-x4/generator.keras \
  --pretrain-epochs 0 --gan-epochs 12 --patch-size 96 --batch-size 8 --steps-per-epoch 100 --content-loss l1 \
  --adversarial-weight 1e-2 --lr-g 1e-4 --lr-d 1e-4 --lr-schedule constant --seed 3

# 5. Video model: the light "video" preset (all convolutions at LR resolution), L1, 18k steps at 1e-3 (cosine).
#    XLA on: for this small network it trains faster than TensorFlow's default graph on a CPU.
"$PY" flow.py train --data data/photos-x4 --out runs/video-x4 --preset video --pretrain-epochs 60 --gan-epochs 0 \
  --steps-per-epoch 300 --batch-size 32 --pretrain-loss l1 --lr-g 1e-3 --lr-schedule cosine --jit on --seed 1

# 6. More photos with what the wallpapers lack (text, buildings, objects): 26 photographs among OpenCV's examples
#    (opencv-doc; drawn, rendered, synthetic, benchmark and near-duplicate images left out, see DATA.md), added to
#    the same photos in a second RAW folder. Old photos keep their splits (the split follows each file's bytes).
(cd "$WORK/debs" && apt-get download opencv-doc)
INCLUDE=()
for photo in $OPENCV_PHOTOS; do INCLUDE+=(--include "usr/share/doc/opencv-doc/examples/$photo"); done
"$PY" fetcher.py debian --deb "$WORK"/debs/opencv-doc_*.deb "${INCLUDE[@]}" --out data/raw-photos2
"$PY" fetcher.py local "$WORK/photos" --out data/raw-photos2
"$PY" create_dataset.py data/raw-photos2 --samples --mode patches --patches 300 --out data/photos2-x4

# 7. Video model, fine-tuned on them: 6k steps at 2e-4 (cosine) from step 5's; the last epoch ships.
"$PY" flow.py train --data data/photos2-x4 --out runs/video2-x4 --preset video --init-generator runs/video-x4/generator.keras \
  --pretrain-epochs 20 --gan-epochs 0 --steps-per-epoch 300 --batch-size 32 --pretrain-loss l1 --lr-g 2e-4 \
  --lr-schedule cosine --jit on --seed 2

# 8. Stream model: the luma-first "stream" preset (13.6 kMAC per LR pixel), first on the clean pairs, then on pairs
#    cut from libx264 streams (clips with motion over the same photos, CRF 18-35, random preset, profile and
#    downscaler, a fifth of the clips clean) from those weights.
"$PY" flow.py train --data data/photos2-x4 --out runs/stream-clean --preset stream --pretrain-epochs 17 --gan-epochs 0 \
  --steps-per-epoch 300 --batch-size 32 --pretrain-loss l1 --lr-g 2e-3 --lr-schedule cosine --jit on --seed 1
"$PY" create_dataset.py data/raw-photos2 --samples --mode patches --patches 300 --codec libx264 --crf 18 35 \
  --clean-share 0.2 --out data/stream-x4
"$PY" flow.py train --data data/stream-x4 --out runs/stream-x4 --preset stream --init-generator runs/stream-clean/generator_last.keras \
  --pretrain-epochs 40 --gan-epochs 0 --steps-per-epoch 300 --batch-size 32 --pretrain-loss l1 --lr-g 1e-3 \
  --lr-schedule cosine --jit on --seed 2

cp runs/psnr-x4/generator.keras weights/srresnet_x4_psnr.keras
cp runs/gan-x4/generator_last.keras weights/srgan_x4.keras
cp runs/video2-x4/generator_last.keras weights/video_x4.keras
cp runs/stream-x4/generator_last.keras weights/stream_x4.keras
# 9. Scores on the standard benchmarks (downloaded once through fetcher.py's registry).
for set in set5 set14; do
  [ -d "data/benchmarks/$set" ] || "$PY" fetcher.py dataset "$set" --out data/benchmarks
  for model in weights/srresnet_x4_psnr.keras weights/srgan_x4.keras weights/video_x4.keras weights/stream_x4.keras; do
    "$PY" flow.py evaluate --model "$model" --data "data/benchmarks/$set" --out runs/weights-eval
  done
done
# 10. The streamed-video benchmark (clips panning over Set14, libx264 medium at each CRF) for the light models.
for model in bicubic video stream; do
  "$PY" flow.py evaluate-stream --model "$model" --data data/benchmarks/set14 --out runs/weights-eval
done
