"""create_dataset.py: layout and manifest, sha256 splits, seeds, bad files, reruns, interruptions, sources."""

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
from create_dataset import DatasetError, build_dataset, main, split_counts

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


def test_square_mode_writes_the_design_layout_and_manifest(photo_folder, tmp_path):
    out = tmp_path / "ds"
    manifest = build([photo_folder], out)
    files = pair_files(out)
    assert sum(map(len, files.values())) == 12 and all(files.values())
    assert manifest["counts"] == {s: len(n) for s, n in files.items()}
    assert manifest["photos"] == {"train": 10, "val": 1, "test": 1}  # 0.8/0.1/0.1 of 12, val/test never empty
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


@pytest.mark.parametrize(("n", "expected"), [(8, [6, 1, 1]), (100, [80, 10, 10]), (3, [1, 1, 1]),
                                             (2, [2, 0, 0]), (0, [0, 0, 0]), (7, [5, 1, 1])])
def test_split_counts(n, expected):
    assert split_counts(n, [0.8, 0.1, 0.1]) == expected
    assert sum(split_counts(n, [0.5, 0, 0.5])) == n and split_counts(10, [0.5, 0, 0.5])[1] == 0


def test_a_photo_never_sits_in_two_splits_and_its_split_follows_its_hash(photo_folder, tmp_path):
    out = tmp_path / "ds"
    manifest = build([photo_folder], out, mode="patches", patches=5, split=(0.5, 0.25, 0.25))
    split_of_hash = {}
    for split, names in pair_files(out).items():
        for name in names:
            short = NAME.match(name)["hash"]
            assert split_of_hash.setdefault(short, split) == split, f"{short} appears in two splits"
    assert len(split_of_hash) == 12 and manifest["photos"] == {"train": 6, "val": 3, "test": 3}

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
    assert c["parameters"]["seed"] == 8 and c["photos"] == a["photos"]  # the seed moves patches, not photos
    assert a["counts"] == b["counts"] and a["parameters"] == b["parameters"]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    differ = [rel for rel in files if (tmp_path / "c" / rel).exists()
              and (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes()]
    assert len(differ) > len(files) // 2  # another seed: other patch positions and noise


def test_degradations_apply_to_lr_and_are_recorded(photo_folder, tmp_path):
    out = tmp_path / "ds"
    manifest = build([photo_folder], out, noise_sigma=5, jpeg_quality=40, blur_sigma=0.5)
    assert manifest["parameters"]["degradations"] == {"blur_sigma": 0.5, "noise_sigma": 5.0, "jpeg_quality": 40}
    name = next((out / "train" / "hr").glob("*.png")).name
    hr, lr = (resizer.load_image(out / "train" / sub / name) for sub in ("hr", "lr"))
    clean = resizer.lr_from_hr(hr, 4)
    assert np.abs(lr.astype(int) - clean).mean() > 1


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
    assert main(["--samples", "--out", str(tmp_path / "y"), "--scale", "3"]) == 2
    assert "multiple of scale 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--samples", "--out", str(tmp_path / "y"), "--scale", "5"])
    empty = tmp_path / "nothing-usable"
    empty.mkdir()
    (empty / "a.png").write_bytes(b"")
    assert main([str(empty), "--out", str(tmp_path / "z"), "--quiet"]) == 1
    assert "a.png: empty file" in capsys.readouterr().err
