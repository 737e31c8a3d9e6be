"""upscale.py's streams: a URL in (HLS from a local 127.0.0.1 server), YUV4MPEG2 out to a pipe, --realtime,
and the fastest runtime chosen by timing.

The HLS playlist and its MPEG-TS segments are made here with PyAV; tests/fakeserver.py serves them and
breaks them on request. A tiny untrained generator stands in for a trained one: these tests check frames,
sizes, timing and failure, not picture quality.
"""

import io
import os
import queue
import re
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import keras
import numpy as np
import pytest
from conftest import with_fixed_runtime
from fakeserver import FakeServer

import inference
import media
import upscale
from generator import build_generator

ROOT = Path(__file__).resolve().parents[1]
SCALE = 4
SIZE = (32, 24)  # LR width, height of the test streams
FPS = 12
SEGMENT_FRAMES = 12  # one second a segment: a lost one leaves a gap far above STREAM_GAP_SECONDS


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """An untrained stream-preset generator (luma-first, bicubic skip), its residual damped so the output
    looks like its input."""
    keras.utils.set_random_seed(0)
    generator = build_generator(SCALE, preset="stream")
    last_conv = [layer for layer in generator.layers if isinstance(layer, keras.layers.Conv2D)][-1]
    kernel, bias = last_conv.get_weights()
    last_conv.set_weights([kernel * 0.05, bias * 0])
    path = tmp_path_factory.mktemp("model") / "stream_x4.keras"
    generator.save(path)
    return path


def test_frame(k, size=SIZE):
    """Frame k of the test streams: moving gradients."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    return np.dstack([(xx * 5 + k * 9) % 256, (yy * 7) % 256, np.full_like(xx, 30 * k % 256)]).astype(np.uint8)


test_frame.__test__ = False  # a helper, not a test


def encode_frames(target, frames, *, fmt=None, fps=FPS, size=SIZE):
    """Encode test_frame(k) for k in frames with libx264 into target (a path or a BytesIO), timestamps k/fps."""
    with av.open(target, "w", format=fmt) as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = size[0], size[1], "yuv420p"
        v.options = {"crf": "20", "preset": "ultrafast"}
        v.codec_context.time_base = Fraction(1, fps)
        for k in frames:
            frame = av.VideoFrame.from_ndarray(test_frame(k, size), format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, fps)
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
    return target


def serve_hls(server, segments=3, path="/live"):
    """Put an HLS VOD playlist of `segments` MPEG-TS segments (SEGMENT_FRAMES frames each, FPS) on the server;
    returns the playlist's URL."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1", "#EXT-X-MEDIA-SEQUENCE:0",
             "#EXT-X-PLAYLIST-TYPE:VOD"]
    for i in range(segments):
        first = i * SEGMENT_FRAMES
        ts = encode_frames(io.BytesIO(), range(first, first + SEGMENT_FRAMES), fmt="mpegts").getvalue()
        server.add(f"{path}/seg{i}.ts", ts, "video/mp2t")
        lines += [f"#EXTINF:{SEGMENT_FRAMES / FPS:.6f},", f"seg{i}.ts"]
    lines.append("#EXT-X-ENDLIST")
    server.add(f"{path}/index.m3u8", ("\n".join(lines) + "\n").encode(), "application/vnd.apple.mpegurl")
    return server.url(f"{path}/index.m3u8")


def read_y4m(stream, max_frames=None):
    """(header fields, [raw 4:2:0 frames]) read from a YUV4MPEG2 byte stream, up to max_frames."""
    header = stream.readline().decode().split()
    assert header[0] == "YUV4MPEG2"
    fields = {item[0]: item[1:] for item in header[1:]}
    width, height = int(fields["W"]), int(fields["H"])
    size = width * height * 3 // 2
    frames = []
    while max_frames is None or len(frames) < max_frames:
        marker = stream.readline()
        if not marker:
            break
        assert marker == b"FRAME\n"
        data = stream.read(size)
        assert len(data) == size  # whole frames only
        frames.append(data)
    return fields, frames


def cli(*args, **kwargs):
    """upscale.py as a separate process (its stdout a pipe), as a player would run it; float32 without XLA unless
    args say otherwise (conftest.FIXED_RUNTIME)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    return subprocess.Popen([sys.executable, str(ROOT / "upscale.py"), *with_fixed_runtime(args), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT, **kwargs)


def bt601_luma(rgb):
    """Limited-range BT.601 luma of uint8 RGB (what a player assumes for a y4m frame up to 576 lines)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255


# --- a URL in, y4m out -------------------------------------------------------------------------------------


def test_hls_url_plays_through_a_y4m_pipe(model_path):
    with FakeServer() as server:
        url = serve_hls(server)
        proc = cli(url, "-o", "-", "--model", model_path)
        fields, frames = read_y4m(proc.stdout)  # this process is the player
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0, err
        with av.open(url) as c:
            first = next(c.decode(video=0)).to_ndarray(format="rgb24")
    width, height = SIZE[0] * SCALE, SIZE[1] * SCALE
    assert (fields["W"], fields["H"], fields["F"], fields["C"]) == (str(width), str(height), f"{FPS}:1", "420jpeg")
    assert len(frames) == 3 * SEGMENT_FRAMES
    # the first frame is the model's output for the stream's first frame (to x264 and 4:2:0 rounding)
    expected = bt601_luma(upscale.upscale_array(upscale.load_model(model_path), first))
    luma = np.frombuffer(frames[0][: width * height], np.uint8).reshape(height, width)
    assert np.abs(luma - expected).mean() < 1.5
    assert "1 done, 0 skipped, 0 failed" in err and "36 frames" in err  # the summary went to stderr
    assert "Traceback" not in err


def test_a_player_that_quits_ends_the_run_cleanly(model_path, tmp_path):
    clip = encode_frames(str(tmp_path / "long.mp4"), range(120))
    proc = cli(clip, "-o", "-", "--model", model_path)
    fields, frames = read_y4m(proc.stdout, max_frames=1)
    proc.stdout.close()  # the player quits
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert len(frames) == 1 and "the reader closed the pipe" in err and "1 done" in err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_pipe_output_takes_one_video(model_path, tmp_path, capsys):
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    assert upscale.main([str(image), "-o", "-", "--model", str(model_path)]) == 2
    assert "-o - (YUV4MPEG2 to stdout, for a player) takes one video" in capsys.readouterr().err
    assert upscale.main([str(tmp_path / "missing.mp4"), "-o", "-", "--model", str(model_path)]) == 2  # as any missing input
    out, err = capsys.readouterr()
    assert not out and "missing.mp4: no such file or folder" in err  # stdout is the video's: all else to stderr


# --- a URL that fails ---------------------------------------------------------------------------------------


def upscale_url(model_path, url, dst, **kwargs):
    inference = upscale.Inference(upscale.load_model(model_path))
    options = dict(codec=None, crf=20, preset="ultrafast", pix_fmt="yuv420p")
    return upscale.upscale_video_file(inference, url, dst, video_options=options, progress=False, **kwargs)


def frame_count(path):
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.parametrize("fault, says", [
    ({"body": b"G" + bytes(1500), "content_type": "video/mp2t"}, "of the stream are missing"),  # broken segment
    ({"status": 404}, "of the stream are missing"),  # a segment that is gone (FFmpeg retries, then skips it)
])
def test_a_broken_segment_stops_with_the_url_and_keeps_the_frames_before_it(model_path, tmp_path, fault, says):
    dst = tmp_path / "out.mp4"
    with FakeServer() as server:
        url = serve_hls(server, segments=3)
        server.fault("/live/seg1.ts", *[fault] * 8)
        with pytest.raises(upscale.StreamError) as error:
            upscale_url(model_path, url, dst)
    message = str(error.value)
    assert message.startswith(url) and says in message and "\n" not in message
    assert f"stopped after {SEGMENT_FRAMES} frames, 0.92 s into the stream" in message
    assert f"{dst} is kept, with the {SEGMENT_FRAMES} frames before it" in message
    assert frame_count(dst) == SEGMENT_FRAMES  # a whole, playable file


def test_a_stalled_or_short_stream_is_named_with_where_it_stopped(model_path, tmp_path, monkeypatch):
    monkeypatch.setattr(media, "STREAM_READ_TIMEOUT", 1.0)
    with FakeServer() as server:
        url = serve_hls(server, segments=4)
        server.fault("/live/seg3.ts", {"sleep": 4})  # the server stops answering
        started = time.perf_counter()
        with pytest.raises(upscale.StreamError, match=r"the stream stalled \(no data for 1 s\); stopped after") as error:
            upscale_url(model_path, url, tmp_path / "stalled.mp4")
        assert time.perf_counter() - started < 4
        # what the demuxer had read ahead of the stall is lost; the frames before it are all in the file
        kept = int(re.search(r"stopped after (\d+) frames", str(error.value)).group(1))
        assert SEGMENT_FRAMES <= kept < 4 * SEGMENT_FRAMES and frame_count(tmp_path / "stalled.mp4") == kept

        url = serve_hls(server, segments=3, path="/short")
        server.fault("/short/seg2.ts", *[{"drop_after": 400}] * 8)  # the connection drops in the last segment
        with pytest.raises(upscale.StreamError, match="ended early, at 2.00 s of the 3.00 s its header states"):
            upscale_url(model_path, url, "-", pipe=io.BytesIO())


def test_an_unreachable_url_fails_before_the_model_loads(model_path, tmp_path, capsys):
    with FakeServer() as server:
        url = server.url("/gone/index.m3u8")
        assert upscale.main([url, "-o", str(tmp_path / "out.mp4"), "--model", str(model_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"FAILED  {url}: cannot open as a video" in err and "404" in err
    assert not list(tmp_path.iterdir())


# --- --realtime ---------------------------------------------------------------------------------------------


def slow_frames(monkeypatch, seconds):
    """Make the model take `seconds` per call more than it does (a model slower than the source)."""
    for method in ("frames", "planes"):  # the RGB and the YUV video path (the stream model's, by default)
        real = getattr(upscale.Inference, method)

        def frames(self, rgbs, *args, real=real):
            time.sleep(seconds)
            return real(self, rgbs, *args)

        monkeypatch.setattr(upscale.Inference, method, frames)


def test_realtime_drops_frames_when_the_model_is_behind_and_counts_them(model_path, tmp_path, monkeypatch):
    clip = encode_frames(str(tmp_path / "fast.mp4"), range(40), fps=100)  # 0.4 s of video
    upscale.upscale_array(upscale.load_model(model_path), test_frame(0))  # TensorFlow started before the clock
    slow_frames(monkeypatch, 0.05)  # 20 frames/s at best, against the source's 100
    stats, pipe = upscale.StreamStats(), io.BytesIO()
    upscale_url(model_path, clip, "-", pipe=pipe, realtime=True, stats=stats)
    assert stats.decoded == 40 and stats.shown + stats.dropped == 40
    assert 2 <= stats.shown <= 20 and stats.dropped >= 20
    pipe.seek(0)
    fields, frames = read_y4m(pipe)
    assert fields["F"] == "100:1" and len(frames) == 40  # dropped frames repeat the last one: the clock holds


def test_realtime_summary_names_shown_dropped_and_the_rate(model_path, tmp_path, monkeypatch, capsys):
    clip = encode_frames(str(tmp_path / "fast.mp4"), range(30), fps=100)
    slow_frames(monkeypatch, 0.05)
    assert upscale.main([clip, "-o", str(tmp_path / "out.mp4"), "--model", str(model_path), "--realtime",
                         "--no-progress"]) == 0
    note = capsys.readouterr().out
    shown, dropped = map(int, re.search(r"realtime: (\d+) frames shown, (\d+) dropped of 30 \(", note).groups())
    assert shown + dropped == 30 and dropped > 0 and "frames/s shown" in note
    with av.open(str(tmp_path / "out.mp4")) as c:
        times = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    assert len(times) == shown and times == sorted(times)  # the frames shown, at their source times


def test_realtime_inbox_never_blocks_and_keeps_the_newest_frame():
    stats = upscale.StreamStats(realtime=True)
    inbox = upscale.RealtimeInbox(stats)
    frames = [upscale.DecodedFrame(np.zeros((2, 2, 3), np.uint8), k, k / 10, index=k) for k in range(5)]
    audio = upscale.AudioPacket(packet=None)
    for item in (frames[0], frames[1], audio, frames[2]):
        inbox.put(item)  # never waits
    assert [inbox.get(), inbox.get()] == [audio, frames[2]] and stats.dropped == 2
    with pytest.raises(queue.Empty):
        inbox.get(timeout=0.01)


def test_y4m_keeps_the_clock_when_the_first_frames_are_dropped():
    """Under --realtime the model may not take the first frames (busy, or slow to start under load): the stream
    still has one frame per source frame, the first shown standing in for those before it."""
    pipe = io.BytesIO()
    writer = media.Y4MWriter(pipe, 4, 2, rate=10)
    for k in (2, 5):  # frames 0, 1, 3, 4 and 6 dropped
        writer(media.DecodedFrame(None, k, k / 10, sr=np.full((2, 4, 3), 40 * k, np.uint8), index=k))
    writer.finish(7)
    pipe.seek(0)
    _, frames = read_y4m(pipe)
    lumas = [frame[0] for frame in frames]  # the first luma sample of each frame
    assert len(frames) == 7 and lumas == [lumas[0]] * 5 + [lumas[5]] * 2 and lumas[0] != lumas[5]  # 2 as 0-4, 5 as 6


# --- the fastest runtime, chosen by timing --------------------------------------------------------------------


def test_the_fastest_candidate_is_chosen_by_timing():
    calls = []

    def candidate(name, seconds):
        return lambda: (time.sleep(seconds), calls.append(name))

    best, seconds = upscale.fastest({"slow": candidate("slow", 0.03), "quick": candidate("quick", 0.005)}, trials=3)
    assert best == "quick" and seconds["slow"] > seconds["quick"]
    assert calls.count("slow") == calls.count("quick") == 4  # a warm-up, then three timed calls each


def test_auto_runs_what_timed_fastest_and_the_summary_says_so(model_path, tmp_path, monkeypatch, capsys):
    clip = encode_frames(str(tmp_path / "clip.mp4"), range(4))
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: True)  # bf16 is a candidate on any CPU
    timed, used = [], []
    fake = {"fp32": 0.2, "fp32 XLA": 0.1, "bf16": 0.25, "bf16 XLA": 0.4}  # seconds per frame, as if measured

    lumas = []
    real_upscale_luma = inference.upscale_luma
    monkeypatch.setattr(inference, "upscale_luma", lambda *a, **k: lumas.append(1) or real_upscale_luma(*a, **k))

    def fake_fastest(candidates, trials=upscale.RUNTIME_TRIALS):
        timed.append(sorted(candidates))
        candidates["fp32"]()  # what a candidate runs: the YUV path's luma, as the video will
        assert lumas == [1]
        return "fp32 XLA", {name: fake[name] for name in candidates}

    monkeypatch.setattr(inference, "fastest", fake_fastest)
    real_run_job = upscale.run_job
    monkeypatch.setattr(upscale, "run_job", lambda inference, *a: used.append(inference.model) or real_run_job(inference, *a))
    assert upscale.main([clip, "-o", str(tmp_path / "out.mp4"), "--model", str(model_path), "--no-progress"]) == 0
    assert timed == [sorted(fake)]
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("upscale: 1 done") and ("; ran fp32 XLA, the fastest for the YUV path's luma on 32x24 frames here (frames/s: "
                                                      "fp32 5.00, fp32 XLA 10.00, bf16 4.00, bf16 XLA 2.50; timed in") in summary
    assert inference._state(used[0]).compiled is not None  # the XLA-compiled fp32 model ran
    assert {layer.dtype_policy.name for layer in used[0].layers} == {"float32"}
    # a fixed setting is not timed, and a still image is not either
    assert upscale.main([clip, "-o", str(tmp_path / "fixed.mp4"), "--model", str(model_path), "--no-progress",
                         "--precision", "fp32", "--compile", "off"]) == 0
    assert len(timed) == 1 and "ran " not in capsys.readouterr().out
