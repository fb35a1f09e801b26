"""Every bad file the data layer reads ends in one DataError line naming the row and file.

Manifest problems (paths, labels, CSV syntax) fail when the datasets are built;
undecodable images fail when they are read, naming the manifest row too.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metamorphosis.config import DataConfig, LabelSpec
from metamorphosis.data import build_datasets
from metamorphosis.data.transforms import ImageTransform
from metamorphosis.errors import DataError

SMILE = (LabelSpec("smile", kind="binary"),)
KIND = (LabelSpec("kind", kind="multiclass"),)


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message and "\r" not in message, message
    return message


def _csv_root(root: Path, write_image: Callable[..., Path], rows: list[str] | None = None) -> Path:
    """Twelve images and a manifest ``image,smile,kind`` (rows replace the default ones)."""
    for i in range(12):
        write_image(root / f"img/a{i}.png", seed=i)
    rows = rows or [f"img/a{i}.png,{i % 2},{i % 3}" for i in range(12)]
    (root / "labels.csv").write_text("\n".join(["image,smile,kind", *rows]) + "\n")
    return root


def _build(root: Path, labels=SMILE, **kwargs: object):  # noqa: ANN202
    data = DataConfig(name="csv", root=str(root), image_size=8, **kwargs)  # type: ignore[arg-type]
    return build_datasets(data, labels, seed=0)


def _replace(root: Path, row: int, text: str) -> None:
    """Replace manifest row ``row`` (the header is row 1)."""
    lines = (root / "labels.csv").read_text().splitlines()
    lines[row - 1] = text
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


# -- manifest rows that fail when the datasets are built ------------------------------------

ROW_CASES = {  # row 5 (img/a3.png) replaced by -> (labels, expected message)
    "outside by ..": ("../outside.png,1,0", SMILE, r"'\.\./outside\.png' resolves to .*outside"),
    "absolute outside": ("/etc/hostname,1,0", SMILE, r"'/etc/hostname' resolves to /etc/hostname"),
    "passwd": (
        "../" * 40 + "etc/passwd,1,0",
        SMILE,
        r"resolves to /etc/passwd, outside data\.root",
    ),
    "same file twice": ("./img/a0.png,1,0", SMILE, r"listed twice \(first at row 2 as 'img/a0"),
    "same file, //": ("img//a0.png,1,0", SMILE, r"listed twice \(first at row 2"),
    "directory": ("img,1,0", SMILE, r"is a directory, not an image file"),
    "binary 2": ("img/a3.png,2,0", SMILE, r"'smile' value '2' is not a binary label"),
    "binary nan": ("img/a3.png,nan,0", SMILE, r"'smile' value 'nan' is not a binary label"),
    "binary inf": ("img/a3.png,inf,0", SMILE, r"'smile' value 'inf' is not a binary label"),
    "binary empty": ("img/a3.png,,0", SMILE, r"'smile' is empty"),
    "class nan": ("img/a3.png,1,nan", KIND, r"'kind' value 'nan' is not an integer class id"),
    "class inf": ("img/a3.png,1,-inf", KIND, r"'kind' value '-inf' is not an integer class id"),
    "class 1.5": ("img/a3.png,1,1.5", KIND, r"'kind' value '1\.5' is not an integer class id"),
    "class name": ("img/a3.png,1,cat", KIND, r"value 'cat' is not an integer class id; row 2"),
    "class -1": ("img/a3.png,1,-1", KIND, r"'kind' value -1 is out of range"),
    "class huge": ("img/a3.png,1,99999999999999999999999", KIND, r"out of range; expected 0\.\.9"),
    "class 50M": ("img/a3.png,1,50000000", KIND, r"value 50000000 is out of range"),
    "ragged": ("img/a3.png,1,0,extra", SMILE, r"expected 3 fields, got 4"),
    "control char": ("img/a3\x00.png,1,0", SMILE, r"'img/a3\\x00\.png' holds a control character"),
}


@pytest.mark.parametrize("case", sorted(ROW_CASES))
def test_bad_row_fails_at_build_naming_row_and_file(
    case: str, tmp_path: Path, write_image: Callable[..., Path]
) -> None:
    text, labels, pattern = ROW_CASES[case]
    root = _csv_root(tmp_path / "data", write_image)
    write_image(tmp_path / "outside.png")
    _replace(root, 5, text)
    with pytest.raises(DataError, match=pattern) as info:
        _build(root, labels)
    message = _one_line(info.value)
    assert message.startswith(f"{root / 'labels.csv'}, row 5")


def test_symlink_out_of_the_root_is_refused(tmp_path: Path, write_image: Callable[..., Path]):
    root = _csv_root(tmp_path / "data", write_image)
    write_image(tmp_path / "secret" / "face.png")
    os.symlink(tmp_path / "secret" / "face.png", root / "img" / "link.png")
    os.symlink(tmp_path / "secret", root / "linked")
    for row, name in ((5, "img/link.png"), (6, "linked/face.png")):
        _replace(_csv_root(root, write_image), row, f"{name},1,0")
        with pytest.raises(DataError, match=rf"row {row} .*resolves to .*secret.*outside"):
            _build(root)


def test_symlink_loop_is_a_data_error(tmp_path: Path, write_image: Callable[..., Path]):
    root = _csv_root(tmp_path, write_image)
    os.symlink(root / "img" / "loop2.png", root / "img" / "loop1.png")
    os.symlink(root / "img" / "loop1.png", root / "img" / "loop2.png")
    _replace(root, 5, "img/loop1.png,1,0")
    with pytest.raises(DataError, match=r"row 5 .*'img/loop1\.png' cannot be resolved"):
        _build(root)


def test_paths_inside_the_root_are_accepted(tmp_path: Path, write_image: Callable[..., Path]):
    root = _csv_root(tmp_path / "data", write_image)
    os.symlink(root / "img" / "a3.png", root / "img" / "alias.png")  # a link inside the root
    _replace(root, 5, f"{root / 'img' / 'a4.png'},1,0")  # absolute, inside
    _replace(root, 6, "img/alias.png,0,1")
    splits = _build(root, val_fraction=0.0, test_fraction=0.0)
    assert str(root / "img" / "a4.png") in splits.train.item_ids
    assert splits.train.get_item_by_id("img/alias.png")[0].shape == (3, 8, 8)


MANIFEST_CASES = {  # manifest bytes -> expected message
    "empty": (b"", r"row 1: the manifest is empty"),
    "blank lines": (b"\n\n", r"row 1: the manifest is empty"),
    "header only": (b"image,smile\n", r"the manifest has a header but no rows"),
    "no image column": (b"file,smile\nimg/a0.png,1\n", r"row 1: no 'image' column"),
    "no label column": (b"image,happy\nimg/a0.png,1\n", r"row 1: no column 'smile'"),
    "repeated column": (b"image,smile,smile\nimg/a0.png,1,1\n", r"row 1: repeated column"),
    "not utf-8": (b"image,smile\nimg/a0.png,1\nimg/a\xff1.png,0\n", r"row 3: byte 0xff is not"),
    "unclosed quote": (
        b'image,smile\nimg/a0.png,1\n"img/a1.png,0\nimg/a2.png,1\n',
        r"row 3: expected 2 fields, got 1 \(the row runs to line 4: unclosed quote\?\)",
    ),
    "huge field": (b"image,smile\nimg/a0.png," + b"1" * 200_000 + b"\n", r"row 2: not valid CSV"),
    "newline in name": (b'image,smile\n"img/a0\n.png",1\n', r"row 2 .*holds a control character"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_bad_manifest_is_one_line(
    case: str, tmp_path: Path, write_image: Callable[..., Path]
) -> None:
    content, pattern = MANIFEST_CASES[case]
    root = _csv_root(tmp_path, write_image)
    (root / "labels.csv").write_bytes(content)
    with pytest.raises(DataError, match=pattern) as info:
        _build(root)
    assert str(root / "labels.csv") in _one_line(info.value)


def test_manifest_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").mkdir()
    with pytest.raises(DataError, match=r"labels\.csv is a directory, not a file"):
        _build(tmp_path)


def test_bom_extra_columns_and_class_names_load(
    tmp_path: Path, write_image: Callable[..., Path]
) -> None:
    rows = [f"img/a{i}.png,{i % 2},{['cat', 'dog'][i % 2]},note {i}" for i in range(12)]
    root = _csv_root(tmp_path, write_image)
    text = "\n".join(["image,smile,kind,comment", *rows]) + "\n"
    (root / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    splits = _build(root, (*SMILE, *KIND))
    assert splits.num_classes == {"smile": 2, "kind": 2}
    assert splits.train.class_names["kind"] == ["cat", "dog"]


def test_split_values_other_than_train_val_test(
    tmp_path: Path, write_image: Callable[..., Path]
) -> None:
    root = _csv_root(tmp_path, write_image)
    for value in ("dev", ""):
        rows = [f"img/a{i}.png,{i % 2},{value if i == 3 else 'train'}" for i in range(12)]
        (root / "labels.csv").write_text("\n".join(["image,smile,split", *rows]) + "\n")
        with pytest.raises(DataError, match=rf"row 5 .*split '{value}' is invalid"):
            _build(root)


# -- images that fail when they are read ----------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width × height`` pixels and holds almost none."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _truncated(path: Path) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path.read_bytes()[:300]


IMAGE_CASES: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "zero bytes": (lambda path: b"", r"cannot read image file .*a3\.png: cannot identify"),
    "text file": (lambda path: b"not an image\n", r"cannot read image file .*a3\.png"),
    "truncated": (_truncated, r"cannot read image file .*a3\.png: image file is truncated"),
    "bomb": (lambda path: _png_header(200_000, 200_000), r"a3\.png is refused as a decompression"),
    "bomb within 2x": (lambda path: _png_header(10_000, 10_000), r"refused as a decompression"),
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_undecodable_image_names_row_and_file_when_read(
    case: str, tmp_path: Path, write_image: Callable[..., Path]
) -> None:
    make, pattern = IMAGE_CASES[case]
    root = _csv_root(tmp_path, write_image)
    path = root / "img" / "a3.png"
    path.write_bytes(make(path))
    splits = _build(root, val_fraction=0.0, test_fraction=0.0)  # the manifest is fine
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's bomb warning must not reach the user either
        with pytest.raises(DataError, match=pattern) as info:
            splits.train.get_item_by_id("img/a3.png")
    assert _one_line(info.value).startswith(f"{root / 'labels.csv'}, row 5: ")


def _save_mode(path: Path, mode: str) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    if mode == "P":
        image.info["transparency"] = 0
    image.save(path)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "CMYK"])
def test_other_image_modes_are_converted(
    mode: str, tmp_path: Path, write_image: Callable[..., Path]
) -> None:
    root = _csv_root(tmp_path, write_image)
    suffix = "jpg" if mode == "CMYK" else "png"
    _save_mode(root / "img" / f"odd.{suffix}", mode)
    _replace(root, 5, f"img/odd.{suffix},1,0")
    splits = _build(root, val_fraction=0.0, test_fraction=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, _ = splits.train.get_item_by_id(f"img/odd.{suffix}")
    assert image.shape == (3, 8, 8)


def test_tiny_image_is_resized(tmp_path: Path, write_image: Callable[..., Path]) -> None:
    root = _csv_root(tmp_path, write_image)
    write_image(root / "img" / "a3.png", size=(1, 1))
    splits = _build(root, val_fraction=0.0, test_fraction=0.0)
    assert splits.train.get_item_by_id("img/a3.png")[0].shape == (3, 8, 8)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((4, 4), 30000, dtype=np.uint16)).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")
        pixels = ImageTransform(4).resize(image)
    assert pixels.shape == (4, 4, 3) and np.all(pixels == round(30000 / 257))


# -- the official layouts' annotation files ---------------------------------------------------


def _celeba(root: Path, write_image: Callable[..., Path]) -> Path:
    names = [f"{i:06d}.jpg" for i in range(1, 7)]
    for i, name in enumerate(names):
        write_image(root / "img_align_celeba" / name, seed=i)
    rows = [f"{name} {1 if i % 2 else -1} -1" for i, name in enumerate(names)]
    (root / "list_attr_celeba.txt").write_text("\n".join(["6", "Smiling Male", *rows]) + "\n")
    split = [f"{name} {min(i // 2, 2)}" for i, name in enumerate(names)]
    (root / "list_eval_partition.txt").write_text("\n".join(split) + "\n")
    return root


def _statefarm(root: Path, write_image: Callable[..., Path]) -> Path:
    rows = []
    for i in range(10):
        write_image(root / "train" / f"c{i % 2}" / f"img_{i}.jpg", seed=i)
        rows.append(f"p{i % 3},c{i % 2},img_{i}.jpg")
    (root / "driver_imgs_list.csv").write_text("\n".join(["subject,classname,img", *rows]) + "\n")
    return root


def _camvid(root: Path, write_image: Callable[..., Path]) -> Path:
    for split in ("train", "val", "test"):
        write_image(root / "images" / f"{split}.png")
        labels = np.random.default_rng(0).integers(0, 12, size=(8, 10), dtype=np.uint8)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(root / "labels" / f"{split}.png")
        (root / f"{split}.txt").write_text(f"images/{split}.png labels/{split}.png\n")
    return root


LAYOUTS = {
    "celeba": (_celeba, (LabelSpec("smile", column="Smiling"),)),
    "statefarm": (_statefarm, (LabelSpec("behaviour", kind="multiclass"),)),
    "camvid": (_camvid, (LabelSpec("seg", kind="segmentation"),)),
}
LAYOUT_CASES = {  # (dataset, file, content) -> expected message
    ("celeba", "list_attr_celeba.txt", None): r"CelebA file .*list_attr_celeba\.txt does not",
    ("celeba", "list_attr_celeba.txt", b""): r"list_attr_celeba\.txt: expected a count line",
    ("celeba", "list_attr_celeba.txt", b"\x89PNG\r\n\x1a\n\xff\xd8"): r"line 1: byte 0x89 is not",
    ("celeba", "list_eval_partition.txt", b"000001.jpg 7\n"): r"split value '7' is invalid",
    ("celeba", "list_eval_partition.txt", b"\n"): r"list_eval_partition\.txt lists no images",
    ("statefarm", "driver_imgs_list.csv", None): r"StateFarm manifest .* does not exist",
    ("statefarm", "driver_imgs_list.csv", b""): r"row 1: missing column\(s\)",
    ("statefarm", "driver_imgs_list.csv", b"subject,classname,img\n"): r"header but no rows",
    ("statefarm", "driver_imgs_list.csv", b"\xff\xfe\x00garbage"): r"line 1: byte 0xff",
    ("statefarm", "driver_imgs_list.csv", b"subject,classname,img\np1,c0\n"): r"row 2: expected",
    ("statefarm", "driver_imgs_list.csv", b"subject,classname,img\np1,c0,../../../x.jpg\n"): (
        r"row 2: StateFarm image path 'train/c0/\.\./\.\./\.\./x\.jpg' points outside"
    ),
    ("camvid", "train.txt", None): r"CamVid split file .*train\.txt does not exist",
    ("camvid", "train.txt", b"images/a.png\xff labels/a.png\n"): r"train\.txt line 1: byte 0xff",
    ("camvid", "train.txt", b"/etc/hostname labels/train.png\n"): r"'/etc/hostname' points outside",
    ("camvid", "train.txt", b"images labels/train.png\n"): r"CamVid image .*images is a directory",
}


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES, key=str), ids=str)
def test_bad_annotation_file_of_an_official_layout(
    case: tuple[str, str, bytes | None], tmp_path: Path, write_image: Callable[..., Path]
) -> None:
    dataset, name, content = case
    make, labels = LAYOUTS[dataset]
    root = make(tmp_path / dataset, write_image)
    if content is None:
        (root / name).unlink()
    else:
        (root / name).write_bytes(content)
    data = DataConfig(name=dataset, root=str(root), image_size=8, val_fraction=0.2)
    with pytest.raises(DataError, match=LAYOUT_CASES[case]) as info:
        build_datasets(data, labels, seed=0)
    _one_line(info.value)


def test_celeba_partition_cannot_leave_the_image_folder(
    tmp_path: Path, write_image: Callable[..., Path]
) -> None:
    root = _celeba(tmp_path, write_image)
    name = "../" * 40 + "etc/hostname"
    with open(root / "list_attr_celeba.txt", "a") as handle:
        handle.write(f"{name} 1 1\n")
    (root / "list_eval_partition.txt").write_text(f"{name} 0\n000002.jpg 2\n")
    data = DataConfig(name="celeba", root=str(root), image_size=8)
    with pytest.raises(DataError, match=r"list_eval_partition\.txt: CelebA image path .* outside"):
        build_datasets(data, LAYOUTS["celeba"][1], seed=0)


def test_garbage_camvid_label_map_is_named_when_read(
    tmp_path: Path, write_image: Callable[..., Path]
) -> None:
    root = _camvid(tmp_path, write_image)
    (root / "labels" / "train.png").write_bytes(_png_header(200_000, 200_000))
    data = DataConfig(name="camvid", root=str(root), image_size=8)
    splits = build_datasets(data, LAYOUTS["camvid"][1], seed=0)
    with pytest.raises(DataError, match=r"CamVid label map .*train\.png is refused as a decomp"):
        splits.train[0]


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"", r"cannot read .*0\.npy: "),
        (b"\x93NUMPY garbage", r"cannot read .*0\.npy"),
        ("strings", r"0\.npy holds dtype <U1; expected numbers"),
        ("npz", r"0\.npy is not a \.npy array file"),
    ],
)
def test_bad_npy_files_are_named(tmp_path: Path, content: bytes | str, pattern: str) -> None:
    for split in ("train", "val"):
        for folder in ("image", "label", "depth"):
            (tmp_path / split / folder).mkdir(parents=True)
            for i in range(4):
                shape = (8, 8, 3) if folder == "image" else (8, 8)
                np.save(tmp_path / split / folder / f"{i}.npy", np.zeros(shape, np.float32))
    bad = tmp_path / "train" / "label" / "0.npy"
    if content == "strings":
        np.save(bad, np.array([["a"]]))
    elif content == "npz":
        with open(bad, "wb") as handle:
            np.savez(handle, x=np.zeros(2))
    else:
        bad.write_bytes(content)  # type: ignore[arg-type]
    data = DataConfig(name="cityscapes", root=str(tmp_path), image_size=8, val_fraction=0.25)
    splits = build_datasets(data, (LabelSpec("seg", kind="segmentation"),), seed=0)
    dataset = splits.train if "train/0" in splits.train.item_ids else splits.val
    with pytest.raises(DataError, match=pattern) as info:
        dataset.get_item_by_id("train/0")
    _one_line(info.value)
