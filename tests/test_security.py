"""Security guards: no unsafe deserialisation, bounded decoding, hostile attributes.

The server-level test runs against Google's real Pub/Sub emulator; the rest are static or
in-process checks. docs/reliability.md lists what each one covers.
"""

from __future__ import annotations

import ast
import io
import json
import shutil
import struct
import subprocess
import sys
import time

import pytest
from PIL import Image

from broker import wire
from tests.conftest import REPO, ResultWatcher, publish_images, publish_messages

SOURCE_DIRS = ("broker", "server", "streamer", "train", "configs", "bench", "results")
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle", "joblib"}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}


def unsafe_deserialisation(source: str, name: str = "<source>") -> list[str]:
    """Every import of a pickle-like module, eval/exec/compile call, yaml.load and allow_pickle=True."""
    problems = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            modules = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [(node.module or "").split(".")[0]]
        else:
            modules = []
        problems += [f"{name}:{node.lineno}: imports {m}" for m in modules if m in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in UNSAFE_BUILTINS:
            problems.append(f"{name}:{node.lineno}: calls {func.id}()")
        if (
            isinstance(func, ast.Attribute)
            and func.attr in ("load", "unsafe_load", "full_load")
            and isinstance(func.value, ast.Name)
            and func.value.id == "yaml"
        ):
            problems.append(f"{name}:{node.lineno}: calls yaml.{func.attr}()")
        for keyword in node.keywords:
            if keyword.arg == "allow_pickle" and not (
                isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            ):
                problems.append(f"{name}:{node.lineno}: allow_pickle")
    return problems


def test_the_deserialisation_guard_catches_what_it_looks_for():
    bad = "import pickle\nfrom marshal import loads\nx = eval('1')\nimport yaml\nyaml.load(s)\nnp.load(f, allow_pickle=True)\n"
    assert len(unsafe_deserialisation(bad)) == 5
    assert unsafe_deserialisation("import json\nre.compile('x')\nmodel.eval()\nnp.load(f)\n") == []


def test_nothing_deserialises_untrusted_bytes_with_pickle_or_eval():
    files = sorted(path for folder in SOURCE_DIRS for path in (REPO / folder).rglob("*.py"))
    assert len(files) > 20
    problems = [p for path in files for p in unsafe_deserialisation(path.read_text(), str(path.relative_to(REPO)))]
    assert not problems, problems


def test_checkpoints_load_only_through_orbax_and_json(model_dir, tmp_path):
    """train/checkpoint.py reads through Orbax and json only, and refuses a checkpoint that was changed."""
    from train.checkpoint import ModelError, load_model

    tree = ast.parse((REPO / "train" / "checkpoint.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "hashlib", "json", "pathlib", "orbax.checkpoint", "flax", "train.model"}, imported

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    marker = tmp_path / "unpickled"
    # A pickle that would create `marker` if anything ever unpickled it, planted in the checkpoint.
    payload = b"cbuiltins\nopen\n(S" + repr(str(marker)).encode() + b"\nS'w'\ntR."  # protocol 0, by hand
    (copy / "checkpoint" / "evil.pkl").write_bytes(payload)
    with pytest.raises(ModelError, match="digest"):
        load_model(copy)
    model, _ = load_model(copy, verify=False)  # even unverified, Orbax ignores the stray file
    assert model is not None and not marker.exists()
    (copy / "metadata.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(copy)


# ----------------------------------------------------------------- hostile input
def png_bomb(side: int) -> bytes:
    """A 1-bit side x side PNG: tiny compressed, side**2 pixels decoded."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header (SOF0) claims width x height."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.timeout(180)
def test_decompression_bombs_and_absurd_attributes_get_error_results(shared, test_images):
    bomb = png_bomb(20_000)  # 400 Mpx, > 2x Pillow's limit as the server sets it: DecompressionBombError
    assert len(bomb) < 100_000
    cases: dict[str, tuple[bytes, dict, str]] = {
        "png-bomb-20000": (bomb, {"content_type": wire.PNG}, "undecodable_image"),
        "png-bomb-5000": (png_bomb(5_000), {"content_type": wire.PNG}, "undecodable_image"),  # 1x-2x: the warning
        "jpeg-claims-60000": (jpeg_claiming(60_000, 60_000), {"content_type": wire.JPEG}, "undecodable_image"),
        # Capped before decode: a bomb padded past the wire limit is refused for its size, never opened.
        "png-bomb-padded": (bomb + b"\0" * wire.MAX_REQUEST_BYTES, {"content_type": wire.PNG}, "oversized"),
    }
    pixels = test_images.images[0].tobytes()
    shapes = {
        "999999999,1,1": "bad_attribute",
        "-1,28,28": "bad_attribute",
        "28,28": "bad_attribute",
        "0,28,28": "bad_attribute",
        "28,28,1,1": "bad_attribute",
        "9" * 1000: "bad_attribute",
        "1e9,1,1": "bad_attribute",
        "nan,nan,nan": "bad_attribute",
        "28,28,1" + "," * 900: "bad_attribute",
        "28,28,3": "shape_mismatch",
        "": "missing_attribute",
    }
    for k, (shape, reason) in enumerate(shapes.items()):
        cases[f"shape-{k}"] = (pixels, {"content_type": wire.RAW, "shape": shape}, reason)
    cases["long-request-id"] = (pixels, {"content_type": wire.RAW, "shape": "28,28,1"}, "bad_attribute")
    messages = []
    for name, (data, attrs, _) in cases.items():
        request_id = "r" * 1000 if name == "long-request-id" else name
        messages.append((data, "bombs", {"request_id": request_id, "seq": "0", "sent_ns": "1", **attrs}))
    # A good request with a 1,000-character stream attribute: answered, on the empty stream.
    good_attrs = wire.encode_request(test_images.images[0], "long-stream", stream="x" * 1000, seq=0)[1]
    messages.append((pixels, "bombs", good_attrs))

    topology, server = shared.topology, shared.server
    pid = server.proc.pid
    log_mark = len(server.log_text())
    with ResultWatcher(topology) as watcher:
        started = time.monotonic()
        message_ids = publish_messages(topology, messages)
        assert watcher.wait_until(lambda a: {r.get("message_id") for _, r, _ in a} >= set(message_ids[:-1]), 60)
        assert watcher.wait_for(["long-stream"], timeout=30)
        elapsed = time.monotonic() - started
    by_message = {r.get("message_id"): r for _, r, _ in watcher.snapshot() if "error" in r}
    wrong = {
        name: by_message[mid]["error"]
        for (name, (_, _, reason)), mid in zip(cases.items(), message_ids)
        if by_message[mid]["error"] != reason
    }
    assert not wrong, wrong
    assert by_message[message_ids[len(cases) - 1]]["request_id"] == "r" * wire.MAX_ID_CHARS  # truncated echo
    good = [r for _, r, _ in watcher.snapshot() if r.get("request_id") == "long-stream"]
    assert good and "label" in good[0] and good[0]["stream"] == ""
    assert elapsed < 30, f"hostile input took {elapsed:.1f}s to answer"
    assert server.proc.pid == pid and server.proc.poll() is None, "the server must survive hostile input"
    assert "Traceback" not in shared.log_since(log_mark)
    publish_images(topology, test_images.images[1:2], run_id="bombs-after", stream_prefix="bombs-after")
    with ResultWatcher(topology) as again:
        assert again.wait_for(["bombs-after-0"], timeout=30)


def test_unicode_digits_in_attributes_get_an_error_not_an_exception():
    pixels = b"\0" * 784
    for field in ("seq", "sent_ns"):
        attrs = {"request_id": "u", "content_type": wire.RAW, "shape": "28,28,1", "seq": "0", "sent_ns": "1"}
        attrs[field] = "²"
        with pytest.raises(wire.WireError):
            wire.check_request(pixels, attrs)
        wire.error_result(attrs, "", wire.WireError("bad_attribute"), "m")  # must not raise either


_ASPECT_BOMB = """
import io, resource, sys
from PIL import Image
from train.data import DatasetError, load_image
buf = io.BytesIO()
Image.new("1", (1, 100_000)).save(buf, format="PNG")  # 100,000 pixels: far below any pixel limit
data = buf.getvalue()
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a bug here must fail, not eat the machine
try:
    load_image(data, (28, 28, 1))
    print("decoded", len(data))
except DatasetError as err:
    print("refused", len(data), err)
except MemoryError:
    print("MemoryError", len(data))
"""


@pytest.mark.timeout(60)
def test_extreme_aspect_ratio_png_is_refused_before_it_is_decoded():
    proc = subprocess.run([sys.executable, "-c", _ASPECT_BOMB], cwd=REPO, capture_output=True, text=True, timeout=50)
    assert proc.stdout.startswith("refused"), proc.stdout + proc.stderr[-2000:]


def test_only_png_and_jpeg_payloads_are_decoded():
    from train.data import DatasetError, load_image

    accepted = []
    for fmt in ("TIFF", "BMP", "GIF", "WEBP", "ICO"):
        buf = io.BytesIO()
        Image.new("L", (28, 28)).save(buf, format=fmt)
        try:
            load_image(buf.getvalue(), (28, 28, 1))
            accepted.append(fmt)
        except DatasetError:
            pass
    assert accepted == [], f"decoded as if they were PNG/JPEG: {accepted}"


def test_bomb_helpers_make_what_they_claim():
    """Guards the hostile-input test: the JPEG header really claims the size, the PNG bomb really is one."""
    with Image.open(io.BytesIO(jpeg_claiming(300, 200))) as img:
        assert img.size == (300, 200)
    with Image.open(io.BytesIO(png_bomb(3_000))) as img:
        assert img.size == (3_000, 3_000)
    long = wire.ErrorResult(None, "", None, None, "x", "d" * 10_000, "m")
    assert len(json.dumps(long.to_json())) < 1_000  # bounded echo
