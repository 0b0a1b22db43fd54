"""weights_manifest.json: valid against its schema, every (name, scale) resolves, facts match the files."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
from manifest_schema import FULL_COMMIT, SCHEMA, SHORT_COMMIT

from upscale import manifest
from upscale.errors import UpscaleError
from upscale.models import FAMILIES

# The short names the issue asks the CLI to offer, with their scales.
EXPECTED = {
    "a2n": [2, 3, 4],
    "a2n-superimage": [2, 3, 4],
    "vapsr": [2, 3, 4],
    "vapsr-s": [4],
    "hat": [2, 3, 4],
    "hat-s": [2, 3, 4],
    "hat-l": [2, 3, 4],
    "hat-imagenet": [4],
    "real-hat-gan": [4],
    "real-hat-gan-sharper": [4],
    "panet": [2, 3, 4],
}
# Which official layout (../shared/reference/checkpoint_layouts.json) each model's files have.
LAYOUT = {
    "a2n": "a2n", "a2n-superimage": "a2n", "vapsr": "vapsr", "vapsr-s": "vapsr-s", "hat": "hat",
    "hat-s": "hat-s", "hat-l": "hat-l", "hat-imagenet": "hat", "real-hat-gan": "hat",
    "real-hat-gan-sharper": "hat", "panet": "pa-edsr",
}


@pytest.fixture(autouse=True)
def packaged_manifest(monkeypatch):
    monkeypatch.delenv("UPSCALE_MANIFEST", raising=False)


def test_validates_against_schema():
    import jsonschema
    data = json.loads(manifest.PACKAGED.read_text())
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(data, SCHEMA)


def test_schema_rejects_mistakes():
    import jsonschema
    data = json.loads(manifest.PACKAGED.read_text())
    bad = json.loads(json.dumps(data))
    bad["models"]["vapsr"]["files"]["4"]["sources"][0] = {"repo_id": "a/b", "filename": "x.pth"}  # no revision
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)
    bad = json.loads(json.dumps(data))
    bad["models"]["vapsr"]["files"]["4"]["sha256"] = "ABC"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)


def test_packaged_manifest_is_the_top_level_file():
    # the wheel ships upscale/weights_manifest.json; it must be the repository's top-level file
    top = manifest.PACKAGED.parent.parent / "weights_manifest.json"
    assert manifest.PACKAGED.resolve() == top.resolve()


def test_every_name_and_scale_the_cli_offers_resolves():
    assert set(manifest.model_names()) == set(EXPECTED)
    for name, scales in EXPECTED.items():
        assert manifest.scales(name) == scales
        for scale in scales:
            v = manifest.resolve(name, scale)
            assert (v.name, v.scale) == (name, scale)
            assert name in FAMILIES[v.family].layouts  # so `upscale bench` can time it without the file
            assert v.family in FAMILIES and v.filename and v.license and v.paper and v.parameters
            assert v.sources or "--from" in v.manual_hint()
        assert manifest.resolve(name).scale == manifest.default_scale(name)


def test_unknown_names_and_scales_are_clear():
    with pytest.raises(UpscaleError, match="unknown model 'nope'.*vapsr"):
        manifest.resolve("nope")
    with pytest.raises(UpscaleError, match="vapsr-s has no x2 weights; available: x4"):
        manifest.resolve("vapsr-s", 2)


def test_revisions_are_full_commits_or_branch_names():
    for v in manifest.variants():
        for s in v.sources:
            if "repo_id" in s:
                rev = s["revision"]
                assert FULL_COMMIT.match(rev) or not SHORT_COMMIT.match(rev), (v.label, rev)
                assert s.get("repo_type", "model") in ("model", "dataset")
            else:
                assert s["url"].startswith("https://")


def test_facts_from_weights_sources():
    hat_l4 = manifest.resolve("hat-l", 4)
    assert hat_l4.sha256.startswith("5992bd38") and hat_l4.size == 165774123
    assert [s["repo_id"] for s in hat_l4.sources] == ["jaideepsingh/upscale_models", "vladmandic/sdnext-upscalers"]
    gan = manifest.resolve("real-hat-gan", 4)
    assert [s.get("repo_type") for s in gan.sources] == ["model", "dataset"]
    assert manifest.resolve("real-hat-gan-sharper", 4).sha256.startswith("5800b671")
    assert manifest.resolve("hat-imagenet", 4).sha256.startswith("4ee053c4")
    assert manifest.resolve("a2n", 3).overrides["input_range"] == 255.0
    assert manifest.resolve("a2n-superimage", 3).overrides["input_range"] == 1.0
    assert manifest.resolve("a2n", 4).sha256 is None  # not obtainable here: recorded at first download
    panet = manifest.resolve("panet", 4)
    assert panet.sources == () and panet.overrides == {"res_scale": 0.1, "rgb_range": 1.0}
    hint = panet.manual_hint()
    assert "drive.google.com" in hint and "upscale download panet -s 4 --from model_x4.pt" in hint


def test_describe_source():
    assert manifest.describe_source({"url": "https://x/y.pth"}) == "https://x/y.pth"
    src = {"repo_id": "o/r", "repo_type": "dataset", "filename": "a/b.pth", "revision": "main"}
    assert manifest.describe_source(src) == "hf://datasets/o/r/a/b.pth@main"


def test_digests_and_sizes_match_the_official_files(shared):
    checked = 0
    for v in manifest.variants():
        path = shared / "weights" / v.filename
        if not path.exists():
            continue
        data = path.read_bytes()
        assert v.size == len(data), v.label
        assert v.sha256 == hashlib.sha256(data).hexdigest(), v.label
        checked += 1
    assert checked == 6  # VapSR x2/x3/x4, VapSR-S, A2N x2/x3


def test_parameter_counts_match_the_official_layouts(layouts):
    """`parameters`: the floating-point values of the official state dict (integer index buffers excluded)."""
    for v in manifest.variants():
        layout = layouts[f"{LAYOUT[v.name]}_x{v.scale}"]
        floats = sum(math.prod(k["shape"]) for k in layout["keys"].values() if k["dtype"].startswith("float"))
        assert v.parameters == floats, v.label


@pytest.mark.parametrize("name,scale", [("vapsr", 4), ("a2n", 2), ("a2n-superimage", 3), ("panet", 2)])
def test_overrides_are_accepted_by_the_family(layouts, name, scale):
    """The manifest's fixed settings use the names the family's build() accepts, on the official layout."""
    from conftest import random_state_dict

    from upscale.models import from_state_dict

    v = manifest.resolve(name, scale)
    sd = random_state_dict(layouts[f"{LAYOUT[name]}_x{scale}"])
    model = from_state_dict(sd, arch=v.family, scale=v.scale, **v.overrides)
    assert model.scale == scale
    if "input_range" in v.overrides:
        assert model.input_range == v.overrides["input_range"]
    if name == "panet":
        assert model.input_range == 1.0 and model.config["res_scale"] == 0.1


def test_hat_overrides_are_hat_settings():
    # building a HAT from a full-size layout is slow; its accepted names are its defaults table
    from upscale.models import hat

    for name in ("hat", "hat-s", "hat-l", "hat-imagenet", "real-hat-gan", "real-hat-gan-sharper"):
        v = manifest.resolve(name)
        assert v.family == "hat" and set(v.overrides) <= set(hat.AUTHORS_DEFAULTS), name


def _broken(tmp_path, edit) -> str:
    data = json.loads(manifest.PACKAGED.read_text())
    edit(data["models"])
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(("edit", "named"), [
    (lambda m: m["vapsr"]["files"]["4"].pop("filename"), "models.vapsr.files.4 has no 'filename'"),
    (lambda m: m["hat"]["files"]["2"].update(filename="../../x.pth"), "models.hat.files.2 has filename '../../x.pth'"),
    (lambda m: m["a2n"]["files"]["3"].update(sources=[{"repo_id": "a/b"}]), "models.a2n.files.3 sources[0]"),
    (lambda m: m["vapsr"]["files"]["2"].update(size="big"), "models.vapsr.files.2 has a 'size'"),
    (lambda m: m["vapsr"]["files"].update(x4={"filename": "a.pth"}), "models.vapsr.files.x4: the key"),
    (lambda m: m["panet"].pop("family"), "models.panet has no 'family'"),
    (lambda m: m["vapsr"].update(default_scale=8), "models.vapsr.default_scale 8"),
])
def test_a_bad_entry_is_named_when_the_manifest_is_loaded(tmp_path, monkeypatch, edit, named):
    monkeypatch.setenv("UPSCALE_MANIFEST", _broken(tmp_path, edit))
    with pytest.raises(UpscaleError, match="check UPSCALE_MANIFEST") as exc:
        manifest.model_names()
    assert named in str(exc.value)


def test_bad_manifests_on_the_command_line_are_one_line(tmp_path):
    from cli_helpers import assert_one_line_error, run_cli
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    folder = run_cli("models", env={"UPSCALE_MANIFEST": str(tmp_path)})
    assert_one_line_error(folder, "cannot read the weights manifest", "Is a directory", "UPSCALE_MANIFEST")
    assert folder.returncode == 1
    no_name = _broken(tmp_path, lambda m: m["vapsr"]["files"]["2"].pop("filename"))
    proc = run_cli(tmp_path / "a.png", "-m", "vapsr", "-s", "2", env={"UPSCALE_MANIFEST": no_name})
    assert_one_line_error(proc, "models.vapsr.files.2 has no 'filename'")
    assert proc.returncode == 1 and not (tmp_path / "a_x2.png").exists()
