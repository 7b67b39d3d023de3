"""train.data: IDX parsing, the Fashion-MNIST lookup order and download, load_image and image folders."""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers_train import DEBIAN_FASHION_MNIST, idx_bytes, make_shape_folder, tiny_fashion_mnist, write_idx
from PIL import Image

from train import data
from train.data import DatasetError

needs_debian_copy = pytest.mark.skipif(
    not all((DEBIAN_FASHION_MNIST / name).is_file() for name in data.PUBLISHED_MD5),
    reason="Debian package dataset-fashion-mnist is not installed",
)


# ------------------------------------------------------------------ IDX parsing
@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_load_idx_pair_valid(tmp_path, gz):
    images = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    labels = np.array([0, 2, 1, 2, 0], np.uint8)
    ds = data.load_idx_pair(
        write_idx(tmp_path / "img", images, gz), write_idx(tmp_path / "lbl", labels, gz), name="mine"
    )
    assert ds.images.shape == (5, 4, 3, 1) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[..., 0], images)
    assert ds.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.class_names == ("0", "1", "2")
    assert ds.name == "mine" and len(ds) == 5


def test_read_idx_gzip_and_plain_agree(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (3, 2, 2, 3), dtype=np.uint8)
    a = data.read_idx(write_idx(tmp_path / "a.gz", array, gz=True))
    b = data.read_idx(write_idx(tmp_path / "b", array, gz=False))
    np.testing.assert_array_equal(a, array)
    np.testing.assert_array_equal(b, array)


def test_four_dimensional_images_keep_their_channels(tmp_path):
    images = np.zeros((2, 6, 6, 3), np.uint8)
    ds = data.load_idx_pair(write_idx(tmp_path / "i", images), write_idx(tmp_path / "l", np.array([0, 1], np.uint8)))
    assert ds.images.shape == (2, 6, 6, 3)


def test_corrupt_gzip(tmp_path):
    blob = bytearray(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8).reshape(2, 10, 10))))
    for i in range(12, len(blob) - 8):  # keep the gzip header, wreck the deflate stream
        blob[i] ^= 0xFF
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(DatasetError, match=r"bad\.gz: corrupt gzip"):
        data.read_idx(path)


def test_gzip_with_wrong_crc(tmp_path):
    blob = bytearray(gzip.compress(idx_bytes(np.zeros((2, 3, 3), np.uint8))))
    blob[-8] ^= 0xFF  # CRC32 of the trailer
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(DatasetError, match="corrupt gzip"):
        data.read_idx(path)


def test_truncated_gzip(tmp_path):
    blob = gzip.compress(idx_bytes(np.random.default_rng(1).integers(0, 256, (4, 8, 8), dtype=np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match="corrupt gzip"):
        data.read_idx(path)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00\x00", "truncated IDX file"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
        (idx_bytes(np.zeros((2, 3, 3), np.uint8))[:-1], "size mismatch"),
    ],
    ids=["no-magic", "short-header", "short-data"],
)
def test_truncated_file(tmp_path, raw, message):
    path = tmp_path / "short"
    path.write_bytes(raw)
    with pytest.raises(DatasetError, match=message) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "magic",
    [b"\x00\x00\x0d\x03", b"\x01\x00\x08\x03", b"\x00\x00\x08\x00", b"\x00\x00\x08\x09", b"\x89PNG"],
    ids=["float-dtype", "nonzero-lead", "ndim-0", "ndim-9", "png"],
)
def test_wrong_magic(tmp_path, magic):
    path = tmp_path / "magic"
    path.write_bytes(magic + b"\x00" * 64)
    with pytest.raises(DatasetError, match=f"bad magic {magic.hex()}"):
        data.read_idx(path)


def test_header_size_mismatch(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(np.zeros((2, 3, 3), np.uint8)) + b"\x00\x00")
    with pytest.raises(DatasetError, match=r"size mismatch: header says \(2, 3, 3\) \(34 bytes\), file has 36"):
        data.read_idx(path)


def test_parse_idx_source_in_message():
    with pytest.raises(DatasetError, match="^<bytes>: truncated"):
        data.parse_idx(b"")


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="file not found"):
        data.read_idx(tmp_path / "nope.gz")


def test_image_label_count_mismatch(tmp_path):
    images = write_idx(tmp_path / "i", np.zeros((5, 4, 4), np.uint8))
    labels = write_idx(tmp_path / "l", np.zeros(4, np.uint8))
    with pytest.raises(DatasetError, match="5 images but 4 labels"):
        data.load_idx_pair(images, labels)


def test_images_and_labels_of_wrong_rank(tmp_path):
    images = write_idx(tmp_path / "i", np.zeros((5, 4), np.uint8))
    labels = write_idx(tmp_path / "l", np.zeros(5, np.uint8))
    with pytest.raises(DatasetError, match=r"expected \(N,H,W\[,C\]\) images and \(N,\) labels"):
        data.load_idx_pair(images, labels)


def test_label_out_of_range(tmp_path):
    images = write_idx(tmp_path / "i", np.zeros((3, 4, 4), np.uint8))
    labels = write_idx(tmp_path / "l", np.array([0, 3, 1], np.uint8))
    with pytest.raises(DatasetError, match="label 3 out of range for 3 classes"):
        data.load_idx_pair(images, labels, class_names=("a", "b", "c"))
    ds = data.load_idx_pair(images, labels, class_names=("a", "b", "c", "d"))
    assert ds.class_names == ("a", "b", "c", "d")


# ------------------------------------------------------------ lookup order
@pytest.fixture
def no_fashion_env(monkeypatch):
    for var in ("FASHION_MNIST_DIR", "FASHION_MNIST_URL", "FASHION_MNIST_NO_DOWNLOAD"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_env_dir_wins(tmp_path, no_fashion_env):
    images, labels = tiny_fashion_mnist(tmp_path / "fm")
    no_fashion_env.setenv("FASHION_MNIST_DIR", str(tmp_path / "fm"))
    no_fashion_env.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tiny_fashion_mnist(tmp_path / "cache" / "fashion-mnist", seed=7)  # must not be used
    assert data.find_fashion_mnist("test") == tmp_path / "fm"
    ds = data.load_fashion_mnist("test")
    np.testing.assert_array_equal(ds.images[..., 0], images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.class_names == data.FASHION_MNIST_CLASSES and ds.name == "fashion_mnist"
    assert len(data.load_fashion_mnist("test", limit=5)) == 5


def test_env_dir_without_files_says_how_to_fix(tmp_path, no_fashion_env):
    no_fashion_env.setenv("FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DatasetError) as info:
        data.find_fashion_mnist("train")
    message = str(info.value)
    assert f"$FASHION_MNIST_DIR={tmp_path}" in message
    assert "train-images-idx3-ubyte.gz" in message
    assert "apt-get install dataset-fashion-mnist" in message


@needs_debian_copy
def test_debian_copy_is_found(no_fashion_env):
    assert data.find_fashion_mnist("test") == data.DEBIAN_DIR


def test_cache_dir_after_debian(tmp_path, no_fashion_env):
    no_fashion_env.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    no_fashion_env.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tiny_fashion_mnist(tmp_path / "cache" / "fashion-mnist")
    assert data.cache_dir() == tmp_path / "cache" / "fashion-mnist"
    assert data.find_fashion_mnist("test") == tmp_path / "cache" / "fashion-mnist"


def test_not_found_without_download(tmp_path, no_fashion_env):
    no_fashion_env.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    no_fashion_env.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    no_fashion_env.setenv("FASHION_MNIST_NO_DOWNLOAD", "1")
    with pytest.raises(DatasetError, match="Fashion-MNIST not found; install it with 'apt-get install"):
        data.find_fashion_mnist("test")
    with pytest.raises(DatasetError, match="not found"):
        data.find_fashion_mnist("test", allow_download=False)


# ---------------------------------------------------------------- download
class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - keep the test output quiet
        pass


@pytest.fixture
def serve(tmp_path):
    """serve(folder) -> base URL of a threading HTTP server on 127.0.0.1 (stopped after the test)."""
    servers = []

    def start(folder: Path) -> str:
        requests: list[str] = []

        class Handler(_Handler):
            def do_GET(self):
                requests.append(self.path)
                super().do_GET()

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        start.requests = requests
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@needs_debian_copy
@pytest.mark.timeout(60)
def test_download_real_files(tmp_path, serve):
    url = serve(DEBIAN_FASHION_MNIST)
    target = tmp_path / "dl"
    assert data.download(target, url) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(data.PUBLISHED_MD5)
    for name in data.PUBLISHED_MD5:
        data.verify_checksum(target / name)
        assert (target / name).read_bytes() == (DEBIAN_FASHION_MNIST / name).read_bytes()
    assert len(serve.requests) == 4
    data.download(target, url)  # everything present: nothing fetched again
    assert len(serve.requests) == 4


def _tampered_mirror(folder: Path, payload_edit=None, raw_edit=None) -> Path:
    """A mirror of the Debian copy whose t10k-labels file is altered (the others are symlinks)."""
    folder.mkdir()
    for name in data.PUBLISHED_MD5:
        if name != "t10k-labels-idx1-ubyte.gz":
            (folder / name).symlink_to(DEBIAN_FASHION_MNIST / name)
    raw = (DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()
    if payload_edit:
        raw = gzip.compress(payload_edit(bytearray(gzip.decompress(raw))))
    if raw_edit:
        raw = raw_edit(bytearray(raw))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(raw))
    return folder


def _flip_labels(payload: bytearray) -> bytes:
    for i in range(100, 110):
        payload[i] = (payload[i] + 1) % 10  # still a valid label file, but not Fashion-MNIST
    return bytes(payload)


def _wreck_deflate(raw: bytearray) -> bytes:
    for i in range(20, 40):
        raw[i] ^= 0xFF
    return bytes(raw)


@needs_debian_copy
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("edit", "message"),
    [({"payload_edit": _flip_labels}, "checksum mismatch"), ({"raw_edit": _wreck_deflate}, "not gzip")],
    ids=["valid-gzip-wrong-data", "broken-gzip"],
)
def test_download_rejects_tampered_file(tmp_path, serve, edit, message):
    url = serve(_tampered_mirror(tmp_path / "mirror", **edit))
    target = tmp_path / "dl"
    with pytest.raises(DatasetError, match=message):
        data.download(target, url)
    left = sorted(p.name for p in target.iterdir())
    assert "t10k-labels-idx1-ubyte.gz" not in left
    assert not [name for name in left if name.endswith(".part")], left


def test_download_http_error(tmp_path, serve):
    (tmp_path / "empty-mirror").mkdir()
    url = serve(tmp_path / "empty-mirror")
    with pytest.raises(DatasetError, match="download of train-images-idx3-ubyte.gz failed .*apt-get install"):
        data.download(tmp_path / "dl", url)
    assert list((tmp_path / "dl").iterdir()) == []


@needs_debian_copy
@pytest.mark.timeout(60)
def test_find_falls_back_to_download_into_cache(tmp_path, serve, no_fashion_env):
    empty = tmp_path / "no-debian"
    empty.mkdir()
    no_fashion_env.setattr(data, "DEBIAN_DIR", empty)
    no_fashion_env.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    no_fashion_env.setenv("FASHION_MNIST_URL", serve(DEBIAN_FASHION_MNIST))
    folder = data.find_fashion_mnist("test")
    assert folder == tmp_path / "cache" / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(data.PUBLISHED_MD5)
    ds = data.load_fashion_mnist("test")
    assert ds.images.shape == (10000, 28, 28, 1) and len(ds.labels) == 10000


# -------------------------------------------------------------- load_image
def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _garment(mode: str, size=(40, 60), background=0, foreground=230) -> Image.Image:
    """A light rectangle ('garment') centred on a uniform background."""
    arr = np.full((size[1], size[0]), background, np.uint8)
    h, w = arr.shape
    arr[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = foreground
    return Image.fromarray(arr).convert(mode)


@pytest.mark.parametrize(
    "img",
    [
        _garment("RGB"),
        _garment("RGBA"),
        _garment("L"),
        _garment("P"),
        _garment("1", background=0, foreground=255),
        _garment("L", size=(5, 7)),
        _garment("RGB", size=(300, 200)),
        _garment("L", size=(28, 28)),
    ],
    ids=["RGB", "RGBA", "L", "P", "1-bit", "tiny-5x7", "large-300x200", "exact-28"],
)
def test_load_image_modes_and_sizes(tmp_path, img):
    path = tmp_path / "x.png"
    img.save(path)
    out = data.load_image(path, (28, 28, 1))
    assert out.shape == (28, 28, 1) and out.dtype == np.uint8
    # dark background stays dark, the light garment stays light
    assert out[0, 0, 0] < 40 and out[-1, -1, 0] < 40
    assert out[14, 14, 0] > 150


def test_load_image_inverts_white_background(tmp_path):
    path = tmp_path / "photo.png"
    _garment("RGB", size=(80, 100), background=255, foreground=40).save(path)
    out = data.load_image(path, (28, 28, 1))
    assert out.shape == (28, 28, 1) and out.dtype == np.uint8
    corners = out[[0, 0, -1, -1], [0, -1, 0, -1], 0]
    assert corners.max() < 20, corners  # white background became dark
    assert out[14, 14, 0] > 180  # the dark garment became light
    assert out.mean() < 128


def test_load_image_jpeg(tmp_path):
    path = tmp_path / "x.jpg"
    _garment("RGB", size=(50, 50)).save(path, quality=95)
    out = data.load_image(path, (28, 28, 1))
    assert out.shape == (28, 28, 1) and out[14, 14, 0] > 150


@pytest.mark.parametrize("shape", [(28, 28, 3), (16, 20, 1), (32, 32, 3)])
def test_load_image_other_shapes(tmp_path, shape):
    path = tmp_path / "x.png"
    Image.new("RGB", (30, 20), (200, 30, 30)).save(path)
    out = data.load_image(path, shape)
    assert out.shape == shape and out.dtype == np.uint8
    if shape[2] == 3:
        assert tuple(out[shape[0] // 2, shape[1] // 2]) == pytest.approx((200, 30, 30), abs=2)


def test_load_image_bytes_equals_path(tmp_path):
    img = _garment("RGB", size=(33, 47))
    path = tmp_path / "x.png"
    img.save(path)
    from_bytes = data.load_image(_png(img), (28, 28, 1))
    np.testing.assert_array_equal(from_bytes, data.load_image(path, (28, 28, 1)))


def test_load_image_text_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(DatasetError, match=r"notes\.png: not a readable image"):
        data.load_image(path, (28, 28, 1))


def test_load_image_truncated_png(tmp_path):
    blob = _png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    path = tmp_path / "cut.png"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match="not a readable image"):
        data.load_image(path, (28, 28, 1))
    with pytest.raises(DatasetError, match="^image bytes: not a readable image"):
        data.load_image(blob[: len(blob) // 2], (28, 28, 1))


def test_load_image_garbage_bytes_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="image bytes"):
        data.load_image(b"\x00\x01garbage", (28, 28, 1))
    with pytest.raises(DatasetError, match="not a readable image"):
        data.load_image(tmp_path / "missing.png", (28, 28, 1))


def test_load_image_refuses_decompression_bomb(monkeypatch, tmp_path):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # load_image sets PIL's global
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / "big.png"
    Image.new("L", (30, 30)).save(path)
    with pytest.raises(DatasetError, match="not a readable image"):
        data.load_image(path, (28, 28, 1))


# ------------------------------------------------------------ image folders
def test_image_folder_classes_labels_shape(tmp_path):
    root = make_shape_folder(tmp_path / "shapes", per_class=3, size=20, classes=("zebra", "apple", "mango"))
    ds = data.load_image_folder(root, (16, 16, 1))
    assert ds.class_names == ("apple", "mango", "zebra")  # sorted folder names
    assert ds.images.shape == (9, 16, 16, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert ds.name == "shapes"
    ds3 = data.load_image_folder(root, (12, 24, 3))
    assert ds3.images.shape == (9, 12, 24, 3)


def test_image_folder_respects_configured_class_order(tmp_path):
    root = make_shape_folder(tmp_path / "shapes", per_class=2, classes=("a", "b", "c"))
    ds = data.load_image_folder(root, (28, 28, 1), class_names=("c", "extra", "a", "b"))
    assert ds.class_names == ("c", "extra", "a", "b")
    np.testing.assert_array_equal(ds.labels, [2, 2, 3, 3, 0, 0])  # folders a, b, c in sorted order


def test_image_folder_unknown_class(tmp_path):
    root = make_shape_folder(tmp_path / "shapes", per_class=1, classes=("a", "b"))
    with pytest.raises(DatasetError, match="not one of the configured classes"):
        data.load_image_folder(root, (28, 28, 1), class_names=("a",))


def test_image_folder_ignores_other_files(tmp_path):
    root = make_shape_folder(tmp_path / "shapes", per_class=2, classes=("a", "b"))
    (root / "a" / "README.txt").write_text("notes")
    (root / "labels.csv").write_text("x")
    ds = data.load_image_folder(root, (28, 28, 1))
    assert len(ds) == 4 and ds.class_names == ("a", "b")


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="image folder not found"):
        data.load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no class subfolders \(expected root/<class>/\*\.png\)"):
        data.load_image_folder(tmp_path / "empty")
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    (tmp_path / "hollow" / "b").mkdir()
    (tmp_path / "hollow" / "b" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="no PNG/JPEG images found"):
        data.load_image_folder(tmp_path / "hollow")


def test_image_folder_bad_picture(tmp_path):
    root = make_shape_folder(tmp_path / "shapes", per_class=1, classes=("a",))
    (root / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"broken\.png: not a readable image"):
        data.load_image_folder(root)


def test_split_dataset_is_deterministic_partition(tmp_path):
    root = make_shape_folder(tmp_path / "shapes", per_class=5, size=8)
    ds = data.load_image_folder(root, (8, 8, 1))
    train, test = data.split_dataset(ds, 0.2, seed=3)
    assert (len(train), len(test)) == (12, 3)
    again = data.split_dataset(ds, 0.2, seed=3)
    np.testing.assert_array_equal(train.labels, again[0].labels)
    np.testing.assert_array_equal(test.images, again[1].images)
    assert sorted(np.concatenate([train.labels, test.labels])) == sorted(ds.labels)
