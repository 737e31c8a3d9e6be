"""create_dataset.py: layout and manifest, splits, seeds, degradations, bad files, reruns, interruptions,
sources, the tfrecord format and its reader."""

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import png_header_only
from PIL import Image

import create_dataset
import resizer
from create_dataset import DatasetError, NoPairsError, assign_splits, build_dataset, main

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = Path(__import__("skimage.data").data.data_dir)
NAME = re.compile(r"^(?P<stem>.+)-(?P<hash>[0-9a-f]{8})-(?P<index>\d{3})\.png$")
SMALL = {"hr_size": 32, "scale": 4, "workers": 1, "progress": False}


def photo_crops(count, seed=0, low=60, high=160):
    """`count` distinct natural-looking RGB images: random crops of scikit-image's colour photos."""
    rng = np.random.default_rng(seed)
    photos = [resizer.load_image(SAMPLES / n) for n in ("astronaut.png", "coffee.png", "chelsea.png")]
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = (int(v) for v in rng.integers(low, high, 2))
        top, left = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
        crops.append(photo[top : top + h, left : left + w])
    return crops


@pytest.fixture
def photo_folder(tmp_path):
    """12 photos, PNG and JPEG, in a folder with a sub-folder (sources are searched recursively)."""
    folder = tmp_path / "photos"
    for i, img in enumerate(photo_crops(12)):
        where = folder / "sub" if i % 3 == 0 else folder
        resizer.save_image(where / f"photo{i:02d}.{'jpg' if i % 2 else 'png'}", img)
    return folder


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


def pair_files(out):
    """{split: sorted pair names}, checking every HR has its LR twin."""
    found = {}
    for split in create_dataset.SPLITS:
        hr = sorted(p.name for p in (out / split / "hr").glob("*.png")) if (out / split / "hr").is_dir() else []
        lr = sorted(p.name for p in (out / split / "lr").glob("*.png")) if (out / split / "lr").is_dir() else []
        assert hr == lr, f"{split}: HR and LR names differ"
        found[split] = hr
    return found


def build(sources, out, **kwargs):
    return build_dataset(sources, out, **{**SMALL, **kwargs})


# --------------------------------------------------------------------------- layout, manifest, splits


def test_square_mode_writes_the_dataset_layout_and_manifest(photo_folder, tmp_path):
    out = tmp_path / "ds"
    manifest = build([photo_folder], out)
    files = pair_files(out)
    assert sum(map(len, files.values())) == 12 and all(files.values())
    assert manifest["counts"] == {s: len(n) for s, n in files.items()}
    photos = manifest["photos"]  # 0.8/0.1/0.1 of 12 photos: val and test still get 2 photos each
    assert sum(photos.values()) == 12 and photos["val"] >= 2 and photos["test"] >= 2 and photos["train"] >= 6
    params = manifest["parameters"]
    assert (params["scale"], params["hr_size"], params["lr_size"], params["mode"], params["filter"]) == (
        4, 32, 8, "square", "bicubic")
    assert params["degradations"] == {} and params["seed"] == 0
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["counts"] == manifest["counts"] and not (out / ".progress.jsonl").exists()

    for source in manifest["sources"]:
        path = Path(source["path"])
        assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        name = f"{source['name']}-000.png"
        match = NAME.match(name)
        assert match and match["stem"] == path.stem and match["hash"] == source["sha256"][:8]
        hr = resizer.load_image(out / source["split"] / "hr" / name)
        lr = resizer.load_image(out / source["split"] / "lr" / name)
        assert hr.shape == (32, 32, 3) and lr.shape == (8, 8, 3)
        np.testing.assert_array_equal(lr, resizer.lr_from_hr(hr, 4))
        expected = resizer.resize(resizer.center_square(resizer.load_image(path)), (32, 32))
        if path.suffix == ".png":
            np.testing.assert_array_equal(hr, expected)
        else:  # JPEGs >= 4x hr_size are draft-decoded at >= 2x hr_size: not bit-exact, but very close
            assert psnr(hr, expected) > 35


def fake_photos(n, start=0):
    return [{"path": f"/p/{i}.png", "sha256": hashlib.sha256(str(i).encode()).hexdigest()}
            for i in range(start, start + n)]


FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 20, 40])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_small_sets_get_at_least_two_photos_in_val_and_test(n, seed):
    counts = assign_splits(fake_photos(n), FRACTIONS, seed)
    held_out = 2 if n >= 6 else 1 if n >= 3 else 0
    assert sum(counts.values()) == n and counts["train"] >= 1
    assert counts["val"] >= held_out and counts["test"] >= held_out
    again = fake_photos(n)
    assert assign_splits(again, FRACTIONS, seed) == counts  # deterministic
    no_val = assign_splits(fake_photos(n), {"train": 0.5, "val": 0, "test": 0.5}, seed)
    assert no_val["val"] == 0 and sum(no_val.values()) == n


def test_a_photos_split_does_not_move_when_other_photos_are_added():
    photos = fake_photos(300)
    counts = assign_splits(photos, FRACTIONS, 0)
    assert 200 < counts["train"] < 280 and 15 < counts["val"] < 50 and 15 < counts["test"] < 50
    before = {p["sha256"]: p["split"] for p in photos}
    more = fake_photos(300) + fake_photos(200, start=1000)
    assign_splits(more, FRACTIONS, 0)
    assert {p["sha256"]: p["split"] for p in more if p["sha256"] in before} == before
    reseeded = fake_photos(300)
    assign_splits(reseeded, FRACTIONS, 1)  # another seed, another split
    assert sum(p["split"] != before[p["sha256"]] for p in reseeded) > 30

    small = fake_photos(8)  # topped-up small sets move as few photos as they can
    assign_splits(small, FRACTIONS, 0)
    grown = fake_photos(8) + fake_photos(1, start=500)
    assign_splits(grown, FRACTIONS, 0)
    moved = sum(a["split"] != b["split"] for a, b in zip(small, grown, strict=False))
    assert moved <= 2


def test_a_photo_never_sits_in_two_splits_and_its_split_follows_its_bytes(photo_folder, tmp_path):
    out = tmp_path / "ds"
    manifest = build([photo_folder], out, mode="patches", patches=5, split=(0.5, 0.25, 0.25))
    split_of_hash = {}
    for split, names in pair_files(out).items():
        for name in names:
            short = NAME.match(name)["hash"]
            assert split_of_hash.setdefault(short, split) == split, f"{short} appears in two splits"
    photos = manifest["photos"]
    assert len(split_of_hash) == 12 and sum(photos.values()) == 12 and min(photos.values()) >= 2

    renamed = tmp_path / "renamed"  # other names and order, same bytes: the same split for each photo
    for i, path in enumerate(sorted(photo_folder.rglob("*.*"), reverse=True)):
        renamed.mkdir(exist_ok=True)
        shutil.copy(path, renamed / f"z{i}{path.suffix}")
    again = build([renamed], tmp_path / "ds2", mode="patches", patches=5, split=(0.5, 0.25, 0.25))
    assert {s["sha256"]: s["split"] for s in again["sources"]} == {s["sha256"]: s["split"] for s in manifest["sources"]}


def test_duplicates_are_used_once(photo_folder, tmp_path):
    shutil.copy(photo_folder / "photo01.jpg", photo_folder / "sub" / "copy-of-01.jpg")
    manifest = build([photo_folder], tmp_path / "ds")
    assert len(manifest["sources"]) == 12
    (dup,) = manifest["skipped"]
    assert dup["path"].endswith("photo01.jpg") or dup["path"].endswith("copy-of-01.jpg")
    assert dup["reason"].startswith("duplicate of ")


def test_same_seed_same_dataset_other_seed_other_patches_any_worker_count(photo_folder, tmp_path):
    kwargs = {"mode": "patches", "patches": 4, "noise_sigma": 3.0}
    a = build([photo_folder], tmp_path / "a", **kwargs, seed=7)
    b = build([photo_folder], tmp_path / "b", **kwargs, seed=7, workers=2)  # real worker processes
    c = build([photo_folder], tmp_path / "c", **kwargs, seed=8)
    assert c["parameters"]["seed"] == 8 and sum(c["photos"].values()) == 12  # the seed moves patches and splits
    assert a["counts"] == b["counts"] and a["parameters"] == b["parameters"]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    other = {(p.parent.name, p.name): p.read_bytes() for p in (tmp_path / "c").rglob("*.png")}  # any split
    differ = [rel for rel in files if (rel.parent.name, rel.name) in other
              and (tmp_path / "a" / rel).read_bytes() != other[rel.parent.name, rel.name]]
    assert len(differ) > len(files) // 2  # another seed: other patch positions and noise


def test_degradations_apply_to_lr_and_are_recorded(photo_folder, tmp_path):
    out = tmp_path / "ds"
    manifest = build([photo_folder], out, noise_sigma=5, jpeg_quality=40, blur_sigma=0.5)
    assert manifest["parameters"]["degradations"] == {"blur_sigma": 0.5, "noise_sigma": 5.0, "jpeg_quality": 40}
    name = next((out / "train" / "hr").glob("*.png")).name
    hr, lr = (resizer.load_image(out / "train" / sub / name) for sub in ("hr", "lr"))
    clean = resizer.lr_from_hr(hr, 4)
    assert np.abs(lr.astype(int) - clean).mean() > 1


def colours(img):
    return len(np.unique(img.reshape(-1, 3), axis=0))


def test_palette_degradation_limits_lr_colours_and_is_recorded(photo_folder, tmp_path):
    kwargs = {"hr_size": 64, "split": (1, 0, 0), "min_size": 64}
    plain = build([photo_folder], tmp_path / "plain", palette_colors=8, **kwargs)
    floyd = build([photo_folder], tmp_path / "floyd", palette_colors=8, palette_dither="floyd", **kwargs)
    assert build([photo_folder], tmp_path / "clean", **kwargs)["parameters"]["degradations"] == {}
    assert plain["parameters"]["degradations"] == {"palette_colors": 8, "palette_dither": "none"}
    assert floyd["parameters"]["degradations"] == {"palette_colors": 8, "palette_dither": "floyd"}
    assert json.loads((tmp_path / "floyd" / "manifest.json").read_text())["parameters"] == floyd["parameters"]
    names = sorted(p.name for p in (tmp_path / "plain" / "train" / "lr").glob("*.png"))
    assert names and names == sorted(p.name for p in (tmp_path / "floyd" / "train" / "lr").glob("*.png"))
    dithering_changed = 0
    for name in names:
        lr_plain, lr_floyd, lr_clean = (resizer.load_image(tmp_path / d / "train" / "lr" / name)
                                        for d in ("plain", "floyd", "clean"))
        assert colours(lr_plain) <= 8 and colours(lr_floyd) <= 8 and colours(lr_clean) > 8
        np.testing.assert_array_equal(resizer.load_image(tmp_path / "plain" / "train" / "hr" / name),
                                      resizer.load_image(tmp_path / "clean" / "train" / "hr" / name))  # HR as is
        dithering_changed += not np.array_equal(lr_plain, lr_floyd)
    assert dithering_changed == len(names)
    with pytest.raises(DatasetError, match="other parameters.*degradations"):  # pixels differ: no reuse
        build([photo_folder], tmp_path / "plain", palette_colors=16, **kwargs)
    assert main([str(photo_folder), "--out", str(tmp_path / "cli"), "--palette", "4", "--palette-dither", "floyd",
                 "--hr-size", "32", "--workers", "1", "--quiet"]) == 0
    cli = json.loads((tmp_path / "cli" / "manifest.json").read_text())["parameters"]["degradations"]
    assert cli == {"palette_colors": 4, "palette_dither": "floyd"}
    assert all(colours(resizer.load_image(p)) <= 4 for p in (tmp_path / "cli").glob("*/lr/*.png"))
    with pytest.raises(DatasetError, match="2..256"):
        build([photo_folder], tmp_path / "bad", palette_colors=300)
    with pytest.raises(DatasetError, match="needs a palette size"):
        build([photo_folder], tmp_path / "bad", palette_dither="floyd")


# --------------------------------------------------------------------------- bad files, odd files


def test_bad_and_odd_files(tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    good = photo_crops(6, seed=1, low=80, high=120)
    resizer.save_image(src / "plain.png", good[0])
    Image.fromarray(good[1]).convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray(good[2][..., 0].astype(np.uint16) * 257).save(src / "sixteen.png")
    Image.fromarray(good[3]).quantize(64).save(src / "palette.png", transparency=0)
    Image.fromarray(good[4][..., 0]).convert("LA").save(src / "grey-alpha.png")
    portrait = np.concatenate([good[5], np.zeros((60, good[5].shape[1], 3), np.uint8)])  # black band at the bottom
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: the black band ends up on the left
    Image.fromarray(portrait).save(src / "rotated.jpg", exif=exif, quality=95)
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.png").write_text("not an image")
    resizer.save_image(src / "whole.jpg", np.random.default_rng(0).integers(0, 256, (300, 300, 3), np.uint8))
    (src / "truncated.jpg").write_bytes((src / "whole.jpg").read_bytes()[:3000])
    (src / "whole.jpg").unlink()
    resizer.save_image(src / "tiny.png", good[0][:20, :20])
    (src / "bomb.png").write_bytes(png_header_only(12_000, 12_000, bit_depth=8, colour_type=2))
    (src / "README.txt").write_text("not an image extension: not even considered")

    out = tmp_path / "ds"
    manifest = build([src], out, split=(1, 0, 0))
    reasons = {Path(s["path"]).name: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"empty.jpg", "notes.png", "truncated.jpg", "tiny.png", "bomb.png"}
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["notes.png"]
    assert "truncated" in reasons["truncated.jpg"] and "decompression bomb" in reasons["bomb.png"]
    assert "too small: 20x20" in reasons["tiny.png"]
    used = {Path(s["path"]).name: s for s in manifest["sources"]}
    assert set(used) == {"plain.png", "cmyk.jpg", "sixteen.png", "palette.png", "grey-alpha.png", "rotated.jpg"}
    assert (used["rotated.jpg"]["width"], used["rotated.jpg"]["height"]) == (portrait.shape[0], portrait.shape[1])
    hr = resizer.load_image(out / "train" / "hr" / f"{used['rotated.jpg']['name']}-000.png")
    assert hr[:, :4].mean() < 10 and hr[:, -4:].mean() > 20  # orientation applied before cropping
    sixteen = resizer.load_image(out / "train" / "hr" / f"{used['sixteen.png']['name']}-000.png")
    assert sixteen.mean() > 40  # scaled from 16 bits, not clipped to white or black
    assert manifest["counts"]["train"] == 6



def test_a_folder_without_image_files_is_an_error_that_writes_nothing(tmp_path, capsys):
    src = tmp_path / "notes"
    for i in range(7):
        (src / ("sub" if i % 2 else "") / f"n{i}.txt").parent.mkdir(parents=True, exist_ok=True)
        (src / ("sub" if i % 2 else "") / f"n{i}.txt").write_text("text")
    for i in range(5):
        (src / f"d{i}.json").write_text("{}")
    (src / ".hidden.png").write_bytes(b"")  # hidden files are neither used nor counted
    out = tmp_path / "ds"
    assert main([str(src), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"no image files in {src}: 12 files: 7 .txt, 5 .json; 0 images" in err
    assert "skipped" not in err and not out.exists()
    (tmp_path / "void").mkdir()
    with pytest.raises(NoPairsError, match="no image files in .*void: 0 files; 0 images"):
        build([tmp_path / "void"], out)
    assert not out.exists()


def test_every_file_skipped_is_an_error_that_leaves_no_empty_dataset(photo_folder, tmp_path, capsys):
    src = tmp_path / "bad"
    src.mkdir()
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.png").write_text("not an image")
    resizer.save_image(src / "tiny.png", photo_crops(1)[0][:20, :20])
    for i in range(3):
        resizer.save_image(src / f"small{i}.png", photo_crops(1, seed=i)[0][:24, :24])
    for out in (tmp_path / "new", tmp_path / "was-empty"):
        (tmp_path / "was-empty").mkdir(exist_ok=True)
        assert main([str(src), "--out", str(out), "--hr-size", "32", "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "no pairs were made: all 6 image files were skipped" in err and "and 3 more" in err
        assert f"{src / 'empty.jpg'}: empty file" in err and "skipped (" in err
        assert not (out / "manifest.json").exists() and not (out / ".progress.jsonl").exists()
    assert not (tmp_path / "new").exists() and not any((tmp_path / "was-empty").iterdir())

    # an existing dataset whose sources have all gone bad is left as it was
    good = build([photo_folder], tmp_path / "ds")
    before = (tmp_path / "ds" / "manifest.json").read_text()
    pngs = sorted((tmp_path / "ds").rglob("*.png"))
    with pytest.raises(NoPairsError, match="all 6 image files were skipped"):
        build([src], tmp_path / "ds")
    assert (tmp_path / "ds" / "manifest.json").read_text() == before and sum(good["counts"].values()) == 12
    assert sorted((tmp_path / "ds").rglob("*.png")) == pngs and not (tmp_path / "ds" / ".progress.jsonl").exists()
    # a flat photo passes the checks but gives no patch: the same error, after trying
    resizer.save_image(tmp_path / "flat" / "flat.png", np.full((64, 64, 3), 90, np.uint8))
    with pytest.raises(NoPairsError, match="the only image file was skipped.*flatness"):
        build([tmp_path / "flat"], tmp_path / "flat-ds", mode="patches")
    assert not (tmp_path / "flat-ds").exists()


def test_patches_mode_rejects_flat_patches(tmp_path):
    src = tmp_path / "src"
    textured = photo_crops(1, seed=3, low=150, high=151)[0][:, :150]
    half_flat = np.concatenate([np.full((150, 150, 3), 128, np.uint8), textured], axis=1)  # 150x300
    resizer.save_image(src / "half.png", half_flat)
    resizer.save_image(src / "flat.png", np.full((150, 150, 3), 90, np.uint8))
    out = tmp_path / "ds"
    manifest = build([src], out, mode="patches", patches=100, split=(1, 0, 0))
    (skip,) = manifest["skipped"]
    assert skip["path"].endswith("flat.png") and "flatness" in skip["reason"]
    for path in (out / "train" / "hr").glob("*.png"):
        img = resizer.load_image(path).astype(float)
        assert (img @ [0.299, 0.587, 0.114]).var() >= create_dataset.MIN_VARIANCE
    # grid of 9 x 4 positions with stride 16: the 2 columns fully inside the flat half are left out
    assert 0 < manifest["counts"]["train"] < 9 * 16


def test_min_size_and_max_images(photo_folder, tmp_path):
    manifest = build([photo_folder], tmp_path / "a", min_size=100)
    small = [s for s in manifest["skipped"] if "too small" in s["reason"]]
    assert small and all("at least 100" in s["reason"] for s in small)
    assert all(min(s["width"], s["height"]) >= 100 for s in manifest["sources"])
    chosen = build([photo_folder], tmp_path / "b", max_images=5, seed=3)
    assert len(chosen["sources"]) == 5
    assert chosen["sources"] == build([photo_folder], tmp_path / "c", max_images=5, seed=3)["sources"]


def test_draft_decoding_of_large_jpegs_is_close_to_a_full_decode(tmp_path):
    big = resizer.resize(resizer.load_image(SAMPLES / "coffee.png"), (1600, 1000))
    resizer.save_image(tmp_path / "src" / "big.jpg", big)
    fast = build([tmp_path / "src"], tmp_path / "a", hr_size=64, split=(1, 0, 0))
    slow = build([tmp_path / "src"], tmp_path / "b", hr_size=64, split=(1, 0, 0), draft=False)
    assert fast["parameters"]["draft"] and not slow["parameters"]["draft"]
    a, b = (resizer.load_image(tmp_path / d / "train" / "hr" / "big-" f"{fast['sources'][0]['sha256'][:8]}-000.png")
            for d in ("a", "b"))
    assert psnr(a, b) > 38


# --------------------------------------------------------------------------- sources


def test_fetcher_manifest_paths_and_attribution(tmp_path):
    raw = tmp_path / "RAW"
    entries = []
    for i, img in enumerate(photo_crops(4, seed=5)):
        rel = f"images/pic{i}.jpg"
        resizer.save_image(raw / rel, img)
        data = (raw / rel).read_bytes()
        entries.append({"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                        "source": "pixabay", "url": f"https://example.org/{i}.jpg", "user": f"ann{i}",
                        "pageURL": f"https://pixabay.com/photos/{i}/", "license": "Pixabay Content License"})
    entries[3]["sha256"] = "0" * 64  # the file changed since it was fetched
    entries.append({"path": "images/gone.jpg", "sha256": "1" * 64, "source": "url"})
    lines = [json.dumps(e) for e in entries] + ["{not json"]
    (raw / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    resizer.save_image(raw / "images" / "not-in-manifest.png", photo_crops(1, seed=9)[0])  # ignored

    for source in (raw, raw / "manifest.jsonl"):
        out = tmp_path / f"ds-{source.name}"
        manifest = build([source], out, split=(1, 1, 1))
        used = {Path(s["path"]).name: s for s in manifest["sources"]}
        assert set(used) == {"pic0.jpg", "pic1.jpg", "pic2.jpg"}
        origin = used["pic1.jpg"]["provenance"]
        assert origin["user"] == "ann1" and origin["pageURL"].endswith("/1/") and origin["source"] == "pixabay"
        assert origin["license"] == "Pixabay Content License" and "sha256" not in origin
        assert origin["manifest"] == str(raw / "manifest.jsonl")
        reasons = {Path(s["path"]).name: s["reason"] for s in manifest["skipped"]}
        assert set(reasons) == {"pic3.jpg", "gone.jpg"}  # the torn line is ignored, as fetcher.py reads it
        assert "sha256 differs" in reasons["pic3.jpg"] and "no such file" in reasons["gone.jpg"]


def test_raw_folder_from_fetcher_fetch_local(photo_folder, tmp_path):
    fetcher = pytest.importorskip("fetcher")
    fetcher.fetch_local(photo_folder, tmp_path / "RAW", progress=False)
    manifest = build([tmp_path / "RAW"], tmp_path / "ds")
    assert len(manifest["sources"]) == 12 and not manifest["skipped"]
    assert all(s["path"].startswith(str(tmp_path / "RAW")) for s in manifest["sources"])
    assert {s["provenance"]["source"] for s in manifest["sources"]} == {"local"}


# --------------------------------------------------------------------------- reruns and interruptions


def test_rerun_skips_finished_work_and_follows_the_sources(photo_folder, tmp_path):
    out = tmp_path / "ds"
    first = build([photo_folder], out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = build([photo_folder], out)
    assert again["run"]["photos_reused"] == 12 and again["run"]["photos_processed"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps
    assert again["counts"] == first["counts"]

    gone = sorted(photo_folder.glob("*.jpg"))[0]
    victim = next(s for s in first["sources"] if s["path"] == str(gone))
    gone.unlink()
    resizer.save_image(photo_folder / "new.png", photo_crops(1, seed=11)[0])
    third = build([photo_folder], out)
    assert third["run"]["photos_processed"] >= 1 and third["run"]["photos_reused"] >= 9
    names = {n for ns in pair_files(out).values() for n in ns}
    assert not any(n.startswith(victim["name"]) for n in names)  # a dropped photo's pairs go with it
    assert any(n.startswith("new-") for n in names) and sum(third["counts"].values()) == len(names) == 12

    with pytest.raises(DatasetError, match="other parameters.*scale 4 -> 2"):
        build([photo_folder], out, scale=2)
    assert build([photo_folder], out, scale=2, overwrite=True)["parameters"]["scale"] == 2
    assert all(resizer.load_image(p).shape[0] == 16 for p in out.glob("*/lr/*.png"))


def test_interrupted_run_leaves_no_partial_png_and_the_next_run_finishes(photo_folder, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    calls = {"n": 0}
    real_save = Image.Image.save

    def save_until_interrupted(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # Ctrl-C in the middle of writing a PNG
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n half")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_until_interrupted)
    with pytest.raises(KeyboardInterrupt):
        build([photo_folder], out)
    monkeypatch.undo()
    assert not (out / "manifest.json").exists() and (out / ".progress.jsonl").exists()
    written = list(out.rglob("*.png"))
    assert len(written) == 8 and not [p for p in out.rglob("*") if resizer.is_temp_output(p)]
    for path in written:
        resizer.load_image(path)  # every PNG under its final name is whole

    finished = build([photo_folder], out)
    assert finished["run"]["photos_reused"] == 4 and finished["run"]["photos_processed"] == 8
    assert sum(map(len, pair_files(out).values())) == 12 and not (out / ".progress.jsonl").exists()


def test_killed_cli_run_leaves_only_whole_pngs(tmp_path):
    src = tmp_path / "src"
    for i, img in enumerate(photo_crops(40, seed=4, low=140, high=200)):
        resizer.save_image(src / f"p{i:02d}.png", img)
    out = tmp_path / "ds"
    command = [sys.executable, str(ROOT / "create_dataset.py"), str(src), "--out", str(out), "--workers", "1",
               "--mode", "patches", "--patches", "20", "--hr-size", "64", "--quiet"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(out.glob("*/hr/*.png"))) < 30 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "manifest.json").exists() and (out / ".progress.jsonl").exists()
    for path in out.glob("*/*/*.png"):
        if not resizer.is_temp_output(path):
            resizer.load_image(path)
    assert main([str(src), "--out", str(out), "--workers", "1", "--mode", "patches", "--patches", "20",
                 "--hr-size", "64", "--quiet"]) == 0
    assert not [p for p in out.rglob("*") if resizer.is_temp_output(p)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(manifest["counts"].values()) == sum(map(len, pair_files(out).values()))


# --------------------------------------------------------------------------- command line


def test_cli_samples_default_gives_hundreds_of_pairs_in_every_split(tmp_path, capsys):
    assert main(["--samples", "--out", str(tmp_path / "samples"), "--workers", "1", "--quiet"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    manifest = json.loads((tmp_path / "samples" / "manifest.json").read_text())
    counts = manifest["counts"]
    assert manifest["parameters"]["mode"] == "patches" and len(manifest["sources"]) == 8
    assert counts["train"] >= 200 and counts["val"] >= 5 and counts["test"] >= 5
    assert f"{counts['train']} train / {counts['val']} val / {counts['test']} test pairs" in line
    assert str(tmp_path / "samples") in line
    assert all(s["provenance"]["source"] == "scikit-image sample data" for s in manifest["sources"])
    # recorded by name, not by where this install keeps them
    assert sorted(s["path"] for s in manifest["sources"]) == sorted(f"skimage:{n}" for n in create_dataset.SAMPLE_PHOTOS)
    for split in ("val", "test"):  # at least two photos in each held-out split, and pairs on disk from each
        photos = {s["name"] for s in manifest["sources"] if s["split"] == split}
        assert len(photos) >= 2 and manifest["photos"][split] == len(photos)
        on_disk = {NAME.match(p.name)["stem"] + "-" + NAME.match(p.name)["hash"]
                   for p in (tmp_path / "samples" / split / "hr").glob("*.png")}
        assert on_disk == photos


def test_default_hr_size_follows_the_scale(photo_folder, tmp_path):
    assert create_dataset.hr_size_for(3) == 96 and create_dataset.hr_size_for(8) == 256  # 32 x 32 LR at any scale
    assert main([str(photo_folder), "--out", str(tmp_path / "x2"), "--scale", "2", "--workers", "1", "--quiet"]) == 0
    params = json.loads((tmp_path / "x2" / "manifest.json").read_text())["parameters"]
    assert (params["scale"], params["hr_size"], params["lr_size"]) == (2, 64, 32)


def test_cli_errors(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x")]) == 2
    assert "no sources" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("precious")
    (tmp_path / "busy" / "train").mkdir()
    (tmp_path / "busy" / "train" / "notes.txt").write_text("also precious")
    for extra in ([], ["--overwrite"]):
        assert main(["--samples", "--out", str(tmp_path / "busy"), *extra]) == 2
        assert "holds no manifest.json" in capsys.readouterr().err
    assert (tmp_path / "busy" / "thesis.tex").exists() and (tmp_path / "busy" / "train" / "notes.txt").exists()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text('{"parameters": ')
    assert main(["--samples", "--out", str(tmp_path / "broken")]) == 2
    assert "unreadable: use --overwrite" in capsys.readouterr().err
    assert main(["--samples", "--out", str(tmp_path / "y"), "--scale", "3", "--hr-size", "128"]) == 2
    assert "multiple of scale 3" in capsys.readouterr().err and not (tmp_path / "y").exists()
    with pytest.raises(SystemExit):
        main(["--samples", "--out", str(tmp_path / "y"), "--scale", "5"])
    empty = tmp_path / "nothing-usable"
    empty.mkdir()
    (empty / "a.png").write_bytes(b"")
    assert main([str(empty), "--out", str(tmp_path / "z"), "--quiet"]) == 1
    assert "a.png: empty file" in capsys.readouterr().err and not (tmp_path / "z").exists()


# --------------------------------------------------------------------------- tfrecord format


def tfrecord_pairs(dataset, split, **kwargs):
    """Every (lr, hr) of a tfrecord split as numpy arrays, in record order."""
    files = create_dataset.tfrecord_files(dataset, split)
    return [(lr.numpy(), hr.numpy()) for lr, hr in create_dataset.tfrecord_pair_dataset(files, **kwargs)]


def png_pairs(dataset, split):
    return [(resizer.load_image(dataset / split / "lr" / name), resizer.load_image(dataset / split / "hr" / name))
            for name in pair_files(dataset)[split]]


def pixel_set(pairs):
    return sorted(hashlib.sha256(lr.tobytes() + hr.tobytes()).hexdigest() for lr, hr in pairs)


def test_tfrecord_dataset_holds_the_same_pixels_as_the_png_one(photo_folder, tmp_path):
    kwargs = {"mode": "patches", "patches": 6, "noise_sigma": 2.0, "split": (0.5, 0.25, 0.25)}
    png = build([photo_folder], tmp_path / "png", **kwargs)
    tfr = build([photo_folder], tmp_path / "tfr", **kwargs, format="tfrecord", shard_mb=0.02, workers=2)
    assert tfr["counts"] == png["counts"] and tfr["parameters"]["format"] == "tfrecord"
    assert [(s["sha256"], s["split"], s["name"], s["pairs"]) for s in tfr["sources"]] == [
        (s["sha256"], s["split"], s["name"], s["pairs"]) for s in png["sources"]]
    on_disk = sorted(p.name for p in (tmp_path / "tfr").iterdir())
    listed = sorted(shard["file"] for shards in tfr["shards"].values() for shard in shards)
    assert on_disk == sorted([*listed, "manifest.json"])  # nothing else: no PNG folders, no temporaries
    for split in create_dataset.SPLITS:
        shards = tfr["shards"][split]
        assert len(shards) >= 2 and sum(s["records"] for s in shards) == tfr["counts"][split]
        assert [s["file"] for s in shards] == [f"{split}-{i:05d}-of-{len(shards):05d}.tfrecord"
                                               for i in range(len(shards))]
        from_records = tfrecord_pairs(tmp_path / "tfr", split)
        assert all(lr.dtype == np.uint8 and lr.shape == (8, 8, 3) and hr.shape == (32, 32, 3)
                   for lr, hr in from_records)
        assert pixel_set(from_records) == pixel_set(png_pairs(tmp_path / "png", split))
        lr_list, hr_list = create_dataset.load_tfrecord_arrays(tmp_path / "tfr", split)
        assert pixel_set(list(zip(lr_list, hr_list, strict=True))) == pixel_set(from_records)
        # sharding by file: two workers read disjoint halves that together make the whole split
        halves = [tfrecord_pairs(tmp_path / "tfr", split, num_workers=2, worker_index=i) for i in (0, 1)]
        assert sorted(pixel_set(halves[0]) + pixel_set(halves[1])) == pixel_set(from_records)
        assert halves[0] and halves[1] and not set(pixel_set(halves[0])) & set(pixel_set(halves[1]))
    assert create_dataset.read_manifest(tmp_path / "tfr")["counts"] == tfr["counts"]
    assert create_dataset.read_manifest(tmp_path / "nothing") is None
    with pytest.raises(DatasetError, match="tfrecord DATASET.*tfrecord_files"):
        create_dataset.scan_split(tmp_path / "tfr", "train")
    with pytest.raises(DatasetError, match="not a tfrecord DATASET"):
        create_dataset.tfrecord_files(tmp_path / "png", "train")
    with pytest.raises(DatasetError, match="cannot be shared among 9 workers"):
        create_dataset.tfrecord_pair_dataset(create_dataset.tfrecord_files(tmp_path / "tfr", "val"), num_workers=9)


def test_tfrecord_rerun_reuses_a_finished_dataset_and_rewrites_a_changed_or_interrupted_one(
        photo_folder, tmp_path, monkeypatch):
    out = tmp_path / "tfr"
    kwargs = {"format": "tfrecord", "shard_mb": 0.01}
    first = build([photo_folder], out, **kwargs)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")}
    again = build([photo_folder], out, **kwargs)
    assert again["run"]["photos_reused"] == 12 and again["run"]["photos_processed"] == 0
    assert again["shards"] == first["shards"] and {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")} == stamps

    resizer.save_image(photo_folder / "new.png", photo_crops(1, seed=11)[0])
    grown = build([photo_folder], out, **kwargs)
    assert grown["run"]["photos_processed"] == 13 and sum(grown["counts"].values()) == 13
    listed = {shard["file"] for shards in grown["shards"].values() for shard in shards}
    assert {p.name for p in out.iterdir()} == listed | {"manifest.json"}  # old shards gone

    real_add = create_dataset._ShardWriter.add
    calls = {"n": 0}

    def add_until_interrupted(self, result):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_add(self, result)

    monkeypatch.setattr(create_dataset._ShardWriter, "add", add_until_interrupted)
    with pytest.raises(KeyboardInterrupt):
        build([photo_folder], out, **{**kwargs, "shard_mb": 0.005})
    monkeypatch.undo()
    assert not (out / "manifest.json").exists()  # no manifest that could list a missing or partial shard
    assert not [p for p in out.iterdir() if resizer.is_temp_output(p)]
    finished = build([photo_folder], out, **{**kwargs, "shard_mb": 0.005})
    assert finished["counts"] == grown["counts"] and finished["run"]["photos_processed"] == 13
    listed = {shard["file"] for shards in finished["shards"].values() for shard in shards}
    assert {p.name for p in out.iterdir()} == listed | {"manifest.json"}
    assert sum(len(tfrecord_pairs(out, s)) for s in create_dataset.SPLITS) == 13


def test_tfrecord_output_folder_checks_and_command_line(photo_folder, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetError, match="not empty and holds no manifest.json"):
        build([photo_folder], busy, format="tfrecord")
    build([photo_folder], tmp_path / "ds")  # a png dataset: another format is other parameters
    with pytest.raises(DatasetError, match="other parameters.*format 'png' -> 'tfrecord'"):
        build([photo_folder], tmp_path / "ds", format="tfrecord")
    converted = build([photo_folder], tmp_path / "ds", format="tfrecord", overwrite=True)
    assert not any((tmp_path / "ds" / s).exists() for s in create_dataset.SPLITS)
    assert sum(converted["counts"].values()) == 12
    with pytest.raises(DatasetError, match="png format writes a local folder"):
        build([photo_folder], "gs://bucket/ds")

    out = tmp_path / "cli"
    assert main([str(photo_folder), "--out", str(out), "--format", "tfrecord", "--hr-size", "32", "--workers", "1",
                 "--quiet"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert f"{len(manifest['shards']['train']) + 2} TFRecord shards in {out}" in line  # one shard for val, test
    assert manifest["parameters"]["shard_mb"] == create_dataset.SHARD_MB
    assert main([str(tmp_path / "busy"), "--out", str(tmp_path / "none"), "--format", "tfrecord", "--quiet"]) == 1
    assert "no image files in" in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_tfrecord_dataset_on_a_filesystem_named_by_scheme(photo_folder, tmp_path):
    """gs://, s3://, ... go through tf.io.gfile; TensorFlow's in-memory ram:// filesystem stands in for them."""
    tf = pytest.importorskip("tensorflow")
    out = f"ram://{tmp_path.name}/dataset"
    made = build([photo_folder], out, format="tfrecord", shard_mb=0.01)
    assert tf.io.gfile.exists(f"{out}/manifest.json") and create_dataset.dataset_format(out) == "tfrecord"
    listed = {shard["file"] for shards in made["shards"].values() for shard in shards}
    assert set(tf.io.gfile.listdir(out)) == listed | {"manifest.json"}
    local = build([photo_folder], tmp_path / "local", format="tfrecord")
    for split in create_dataset.SPLITS:
        assert all(f.startswith(f"{out}/{split}-") for f in create_dataset.tfrecord_files(out, split))
        assert pixel_set(tfrecord_pairs(out, split)) == pixel_set(tfrecord_pairs(tmp_path / "local", split))
    assert build([photo_folder], out, format="tfrecord", shard_mb=0.01)["run"]["photos_reused"] == 12
    assert local["counts"] == made["counts"]


def test_tensorflow_is_imported_only_for_the_tfrecord_format(photo_folder, tmp_path):
    code = ("import sys, create_dataset; "
            f"create_dataset.build_dataset([{str(photo_folder)!r}], {str(tmp_path / 'ds')!r}, workers=1, progress=False); "
            "print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
