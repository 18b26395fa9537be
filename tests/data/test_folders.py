"""The one folder reader: class folders, labels.csv, group ids from file names."""

from __future__ import annotations

import pytest

from mtdp_core.data.folders import groups_from_names, labelled_images, list_images, read_image_folder
from mtdp_core.errors import ConfigurationError, DataError
from tests.helpers.images import make_image


def test_list_images_is_sorted_recursive_and_filters_extensions(tiny_image_folder):
    (tiny_image_folder / "notes.txt").write_text("x")
    paths = list_images(tiny_image_folder)
    assert len(paths) == 8 and paths == sorted(paths)
    assert all(p.suffix in (".png", ".jpg") for p in paths)
    with pytest.raises(ConfigurationError, match="does not exist"):
        list_images(tiny_image_folder / "missing")


def test_class_folders_labels_file_and_hidden_folders(tmp_path):
    make_image(tmp_path / "alpha" / "a1.png", (20, 16))
    make_image(tmp_path / "beta" / "sub" / "b1.jpg", (20, 16))
    make_image(tmp_path / ".thumbnails" / "t.png", (20, 16))
    make_image(tmp_path / "x.png", (20, 16))
    make_image(tmp_path / "y.png", (20, 16))
    (tmp_path / "labels.csv").write_text("filename,label,patient\nx.png,beta,p1\nalpha/a1.png,ignored,p2\n")
    images = read_image_folder(tmp_path)
    assert [(i.key, i.label, i.group) for i in images] == [
        ("alpha/a1.png", "alpha", "p2"),  # the class folder names the class; the file may give the group
        ("beta/sub/b1.jpg", "beta", None),
        ("x.png", "beta", "p1"),
        ("y.png", None, None),
    ]
    assert [i.label for i in read_image_folder(tmp_path, labels_file=None)] == ["alpha", "beta", None, None]
    (tmp_path / "labels.csv").write_text("file;kind\nx.png;a\n")
    with pytest.raises(DataError, match="Name the columns"):
        read_image_folder(tmp_path)


def test_labelled_images_need_every_image_in_a_class_folder(tmp_path, tiny_image_folder):
    paths, labels = labelled_images(tiny_image_folder)
    assert len(paths) == 8 and labels == ["blue"] * 4 + ["red"] * 4
    make_image(tiny_image_folder / "loose.png")
    with pytest.raises(ConfigurationError, match="outside class folders"):
        labelled_images(tiny_image_folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigurationError, match="No images under"):
        labelled_images(tmp_path / "empty")


def test_groups_from_file_names():
    assert groups_from_names(["a/12_3.png", "b/7_1.png"], "prefix").tolist() == ["12", "7"]
    assert groups_from_names(["img04_red.png"], r"img(\d+)").tolist() == ["04"]
    assert groups_from_names(["x.png"], None) is None
    with pytest.raises(ConfigurationError, match="does not match the group pattern"):
        groups_from_names(["nounderscore.png"], "prefix")
