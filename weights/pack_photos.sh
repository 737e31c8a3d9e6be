#!/usr/bin/env bash
# Pack the licensed training photos for a machine with no network (`make accelerator-pack`): the same 57 photos
# as weights/DATA.md's data/photos2-x4 less the 8 scikit-image samples (create_dataset.py --samples finds those in
# scikit-image itself), taken from the Debian packages train.sh downloads, as a RAW folder whose manifest.jsonl
# records each photo's package, version and licence. Files are the packages' own bytes (JPEG originals, and
# OpenCV's three PNGs): no re-encoding, so nothing is lost and each photo's sha256, which picks its split, stays.
#
#   DEBS=data/weights-work/debs PACK=data/accel-photos weights/pack_photos.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEBS=${DEBS:-data/weights-work/debs}
PACK=${PACK:-data/accel-photos}
LIMIT_MIB=${LIMIT_MIB:-40}

for package in mate-backgrounds plasma-workspace-wallpapers opencv-doc; do
  ls "$DEBS"/"${package}"_*.deb >/dev/null 2>&1 || {
    echo "error: $DEBS/${package}_*.deb not found: run weights/train.sh's downloads (apt-get download $package) or set DEBS" >&2
    exit 2
  }
done

. weights/photos.sh  # PLASMA_PHOTOS, OPENCV_PHOTOS (the script runs from the repository root)
PLASMA=()
for name in $PLASMA_PHOTOS; do PLASMA+=(--include "usr/share/wallpapers/$name/contents/images/2560x1600.jpg"); done
OPENCV=()
for photo in $OPENCV_PHOTOS; do OPENCV+=(--include "usr/share/doc/opencv-doc/examples/$photo"); done

"$PY" fetcher.py debian -q --deb "$DEBS"/mate-backgrounds_*.deb --include 'usr/share/backgrounds/mate/nature/*.jpg' --out "$PACK"
"$PY" fetcher.py debian -q --deb "$DEBS"/plasma-workspace-wallpapers_*.deb "${PLASMA[@]}" --out "$PACK"
"$PY" fetcher.py debian -q --deb "$DEBS"/opencv-doc_*.deb "${OPENCV[@]}" --out "$PACK"

photos=$(grep -c . "$PACK/manifest.jsonl")
bytes=$(du -sb "$PACK" | cut -f1)
if [ "$bytes" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
  echo "error: $PACK holds $((bytes / 1048576)) MiB, over the ${LIMIT_MIB} MiB that may travel with the device run" >&2
  exit 1
fi
echo "packed $photos photos, $((bytes / 1048576)) MiB, in $PACK (carry it with the device run)"
