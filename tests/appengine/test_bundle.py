"""The uploadable bundle: the zip the App Engine reads (descriptor.yml + an image tar whose name
gives the image), built through a container engine (a stand-in here) and checked."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from mtdp_core.appengine.bundle import (
    build_command,
    bundle,
    bundle_problems,
    dockerfile_target,
    save_command,
    write_bundle,
)
from mtdp_core.appengine.errors import BundleError, ContainerEngineError
from mtdp_core.appengine.spec import descriptor_yaml
from mtdp_core.appengine.tasks import get_task


def docker_archive(path: Path, entrypoint: list[str], *, manifest: bool = True, blob_config: bool = False) -> Path:
    """A minimal `docker save` archive: manifest.json, the image config, one layer."""
    config_name = "blobs/sha256/abc" if blob_config else "abc.json"
    config = {"config": {"Entrypoint": entrypoint, "User": "1000:1000"}, "rootfs": {"type": "layers"}}
    files = {config_name: json.dumps(config).encode(), "layer1/layer.tar": b"\0" * 1024}
    if manifest:
        files["manifest.json"] = json.dumps(
            [{"Config": config_name, "RepoTags": ["whatever:tag"], "Layers": ["layer1/layer.tar"]}]
        ).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def task():
    return get_task("classify")


def test_a_bundle_is_what_the_app_engine_reads(tmp_path, task):
    tar = docker_archive(tmp_path / "image.tar", task.entrypoint)
    zip_path = write_bundle(task, tar, tmp_path / "bundle.zip")
    report = bundle_problems(zip_path, task)
    assert report.problems == []
    assert report.image_name == f"org/mtdp/classify:{task.version}"  # from the tar's name, split at the first '-'
    assert report.entrypoint == ["python", "-m", "mtdp_core.appengine", "classify"]
    with zipfile.ZipFile(zip_path) as archive:
        assert sorted(archive.namelist()) == ["descriptor.yml", f"org.mtdp.classify-{task.version}.tar"]
        assert archive.read("descriptor.yml").decode() == descriptor_yaml(task)


def test_newer_archives_with_blob_configs_are_read(tmp_path, task):
    tar = docker_archive(tmp_path / "image.tar", task.entrypoint, blob_config=True)
    assert bundle_problems(write_bundle(task, tar, tmp_path / "b.zip"), task).problems == []


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda t, tar: docker_archive(tar, ["python", "run.py"]), "entrypoint is ['python', 'run.py']"),
        (lambda t, tar: docker_archive(tar, t.entrypoint, manifest=False), "no manifest.json"),
        (lambda t, tar: (tar.write_bytes(b"not a tar at all" * 100), tar)[1], "not a tar archive"),
    ],
)
def test_a_wrong_image_is_found(tmp_path, task, make, expected):
    tar = make(task, tmp_path / "image.tar")
    report = bundle_problems(write_bundle(task, tar, tmp_path / "b.zip"), task)
    assert any(expected in p for p in report.problems), report.problems


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def test_names_and_layout_the_app_engine_cannot_use(tmp_path, task):
    tar = docker_archive(tmp_path / "image.tar", task.entrypoint).read_bytes()
    descriptor = descriptor_yaml(task).encode()
    problems = bundle_problems(_zip(tmp_path / "a.zip", {"descriptor.yml": descriptor, "classify.tar": tar})).problems
    assert any("name it <namespace>-<version>.tar" in p for p in problems)
    problems = bundle_problems(
        _zip(tmp_path / "b.zip", {"descriptor.yml": descriptor, "org.mtdp.classify-9.9.9.tar": tar})
    ).problems
    assert any("does not match the descriptor's namespace-version" in p for p in problems)
    problems = bundle_problems(
        _zip(tmp_path / "c.zip", {"descriptor.yml": descriptor, f"dist/{task.tar_name}": tar})
    ).problems
    assert any("put the tar at the root" in p for p in problems)
    problems = bundle_problems(_zip(tmp_path / "d.zip", {task.tar_name: tar})).problems
    assert any("0 descriptor.yml" in p for p in problems)
    broken = descriptor_yaml(task).replace("name_short: mtdp-classify\n", "").encode()
    problems = bundle_problems(_zip(tmp_path / "e.zip", {"descriptor.yml": broken, task.tar_name: tar})).problems
    assert any("name_short is missing" in p for p in problems)


def test_commands_name_the_image_as_the_app_engine_will(task, tmp_path):
    build = build_command(task, "docker", tmp_path, buildx=True, build_args=["TORCH_INDEX_URL=x"])
    assert build[:6] == ["docker", "build", "--target", "appengine_classify", "-t", task.image_name]
    assert "--provenance=false" in build and "--sbom=false" in build and "TORCH_INDEX_URL=x" in build
    assert "--provenance=false" not in build_command(task, "podman", tmp_path)
    assert save_command(task, "podman", tmp_path / "x.tar")[-3:] == ["--format", "docker-archive", task.image_name]


def fake_engine(folder: Path, name: str) -> Path:
    """A stand-in `docker`/`podman`: answers info and buildx, records builds, saves an archive."""
    script = folder / name
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys, pathlib\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from tests.appengine.test_bundle import docker_archive\n"
        "args = sys.argv[1:]\n"
        f"log = pathlib.Path({str(folder / 'calls.jsonl')!r})\n"
        "log.open('a').write(json.dumps(args) + '\\n')\n"
        "if args[0] == 'save':\n"
        "    docker_archive(pathlib.Path(args[args.index('-o') + 1]), "
        "['python', '-m', 'mtdp_core.appengine', 'classify'])\n"
    )
    script.chmod(0o755)
    return script


def test_bundle_builds_saves_zips_and_checks(tmp_path, task, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_engine(bin_dir, "docker")
    monkeypatch.setenv("PATH", str(bin_dir))
    context = tmp_path / "src"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM base AS {dockerfile_target(task)}\nENTRYPOINT {json.dumps(task.entrypoint)}\n"
    )
    zip_path, report = bundle(task, output_dir=tmp_path / "dist", engine="docker", context=context)
    assert zip_path.name == f"org.mtdp.classify-{task.version}.zip" and report.problems == []
    calls = [json.loads(line) for line in (bin_dir / "calls.jsonl").read_text().splitlines()]
    build = next(c for c in calls if c[0] == "build")
    assert "--provenance=false" in build and task.image_name in build
    assert not (tmp_path / "dist" / task.tar_name).exists()  # only inside the zip


def test_bundle_without_the_dockerfile_target_says_what_to_add(tmp_path, task, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_engine(bin_dir, "podman")
    monkeypatch.setenv("PATH", str(bin_dir))
    (tmp_path / "Dockerfile").write_text("FROM base AS svm_train\n")
    with pytest.raises(BundleError, match="Add the target appengine_classify"):
        bundle(task, output_dir=tmp_path / "dist", context=tmp_path)


def test_bundle_without_any_engine_says_so_and_takes_a_saved_archive(tmp_path, task, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ContainerEngineError, match="Install podman or start Docker"):
        bundle(task, output_dir=tmp_path / "dist")
    tar = docker_archive(tmp_path / "saved.tar", task.entrypoint)
    zip_path, report = bundle(task, output_dir=tmp_path / "dist", image_tar=tar)
    assert report.problems == [] and zip_path.is_file()
    wrong = docker_archive(tmp_path / "other.tar", ["python", "-m", "mtdp_core.appengine", "train"])
    with pytest.raises(BundleError, match="entrypoint"):
        bundle(task, output_dir=tmp_path / "dist2", image_tar=wrong)
