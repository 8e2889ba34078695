"""CoOp dataset loaders on the real published split files, and the layouts of the other CoOp datasets."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from rlptune.data import COOP_11, COOP_DATASETS, COOP_TEMPLATES, IMAGENET_SHIFTS, list_datasets, load_dataset
from rlptune.errors import RlptuneError

# The real split files live next to the repository: <repo>/../shared/fixtures/coop_splits
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "coop_splits"

# In CI the fixtures must be there (a missing copy fails loudly); elsewhere their absence skips.
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir() and not os.environ.get("CI"), reason="CoOp split fixtures not available"
)

# name -> (folder under $DATA, image folder, split file, train, val, test, classes) - sizes from the fixtures' README
REAL = {
    "Caltech101": ("caltech-101", "101_ObjectCategories", 4128, 1649, 2465, 100),
    "DescribableTextures": ("dtd", "images", 2820, 1128, 1692, 47),
    "EuroSAT": ("eurosat", "2750", 13500, 5400, 8100, 10),
    "OxfordFlowers": ("oxford_flowers", "jpg", 4093, 1633, 2463, 102),
    "OxfordPets": ("oxford_pets", "images", 2944, 736, 3669, 37),
}


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def populate(image_root: Path, rel_paths, seed_file: Path) -> None:
    """Put a tiny image at every path: hard links to one file (file creation is slow on some CI disks)."""
    made: set[Path] = set()
    for rel in rel_paths:
        target = image_root / rel
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        if target.exists():
            continue
        try:
            os.link(seed_file, target)
        except OSError:
            shutil.copyfile(seed_file, target)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """$DATA with the five fixture datasets laid out as CoOp expects, images included."""
    if not FIXTURES.is_dir() and not os.environ.get("CI"):
        pytest.skip("CoOp split fixtures not available")
    root = tmp_path_factory.mktemp("DATA")
    seed_file = root / "seed.png"
    seed_file.write_bytes(_png_bytes())
    for name, (folder, image_dir, *_sizes) in REAL.items():
        ddir = root / folder
        ddir.mkdir()
        split_path = FIXTURES / f"split_zhou_{name}.json"
        shutil.copyfile(split_path, ddir / split_path.name)
        split = json.loads(split_path.read_text())
        populate(ddir / image_dir, (e[0] for s in split.values() for e in s), seed_file)
    shutil.copyfile(FIXTURES / "cat_to_name.json", root / "oxford_flowers" / "cat_to_name.json")
    return root


@needs_fixtures
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_split_sizes_classes_and_names(data_root, name):
    folder, image_dir, n_train, n_val, n_test, n_cls = REAL[name]
    splits = load_dataset(name, data_root)
    assert (len(splits.train), len(splits.val), len(splits.test), splits.num_classes) == (n_train, n_val, n_test, n_cls)
    assert splits.name == name
    assert splits.template == COOP_TEMPLATES[name]
    assert Path(splits.root) == data_root / folder / image_dir
    # class names exactly as the split file has them, indexed by label
    raw = json.loads((FIXTURES / f"split_zhou_{name}.json").read_text())
    expected = {}
    for entries in raw.values():
        for path, label, cname in entries:
            expected[label] = cname
    assert splits.classnames == [expected[i] for i in range(n_cls)]
    # items keep the split file's order and relative paths
    assert [(it.path, it.label, it.classname) for it in splits.train[:50]] == [tuple(e) for e in raw["train"][:50]]
    assert all(not Path(it.path).is_absolute() for it in splits.test)
    assert splits.abspath(splits.test[0]).is_file()


@needs_fixtures
def test_real_class_names_spot_checks(data_root):
    eurosat = load_dataset("eurosat", data_root)
    assert eurosat.classnames == [
        "Annual Crop Land",
        "Forest",
        "Herbaceous Vegetation Land",
        "Highway or Road",
        "Industrial Buildings",
        "Pasture Land",
        "Permanent Crop Land",
        "Residential Buildings",
        "River",
        "Sea or Lake",
    ]
    assert eurosat.template == "a centered satellite photo of {}."
    pets = load_dataset("OxfordPets", data_root)
    assert pets.classnames[:3] == ["abyssinian", "american_bulldog", "american_pit_bull_terrier"]
    assert pets.template == "a photo of a {}, a type of pet."
    caltech = load_dataset("caltech-101", data_root)
    assert caltech.classnames[:4] == ["face", "leopard", "motorbike", "accordion"]
    assert "BACKGROUND_Google" not in caltech.classnames
    flowers = load_dataset("flowers102", data_root)
    cat_to_name = json.loads((FIXTURES / "cat_to_name.json").read_text())
    assert flowers.classnames == [cat_to_name[str(i + 1)] for i in range(102)]
    assert load_dataset("DTD", data_root).template == "{} texture."


@needs_fixtures
def test_dataset_folder_itself_as_root(data_root):
    splits = load_dataset("dtd", data_root / "dtd")
    assert len(splits.train) == 2820


@needs_fixtures
def test_missing_images_are_one_error_naming_the_split_file(data_root, tmp_path):
    ddir = tmp_path / "eurosat"
    (ddir / "2750").mkdir(parents=True)
    shutil.copyfile(FIXTURES / "split_zhou_EuroSAT.json", ddir / "split_zhou_EuroSAT.json")
    with pytest.raises(RlptuneError, match=r"split_zhou_EuroSAT\.json: 27000 of 27000 listed images are missing"):
        load_dataset("EuroSAT", tmp_path)
    assert len(load_dataset("EuroSAT", tmp_path, check_files=False).test) == 8100


@needs_fixtures
def test_flowers_names_must_agree_with_cat_to_name(data_root, tmp_path):
    ddir = tmp_path / "oxford_flowers"
    shutil.copytree(data_root / "oxford_flowers", ddir, symlinks=True, copy_function=os.link)
    (ddir / "cat_to_name.json").write_text(json.dumps({"77": "not a passion flower"}))
    with pytest.raises(RlptuneError, match=r"split_zhou_OxfordFlowers\.json: train\[0\]: .*cat_to_name\.json"):
        load_dataset("OxfordFlowers", tmp_path)


def test_registry_names_aliases_and_templates():
    names = list_datasets()
    for name in COOP_11 + IMAGENET_SHIFTS:
        assert name in names
    assert {"folder", "csv", "split-json"} <= set(names)
    assert len(COOP_11) == 11 and len(IMAGENET_SHIFTS) == 4
    assert COOP_TEMPLATES["EuroSAT"] == "a centered satellite photo of {}."
    assert COOP_TEMPLATES["OxfordPets"] == "a photo of a {}, a type of pet."
    assert COOP_TEMPLATES["OxfordFlowers"] == "a photo of a {}, a type of flower."
    assert COOP_TEMPLATES["FGVCAircraft"] == "a photo of a {}, a type of aircraft."
    assert COOP_TEMPLATES["DescribableTextures"] == "{} texture."
    assert COOP_TEMPLATES["Food101"] == "a photo of {}, a type of food."
    assert COOP_TEMPLATES["UCF101"] == "a photo of a person doing {}."
    for name in ("ImageNet", "Caltech101", "StanfordCars", "SUN397") + IMAGENET_SHIFTS:
        assert COOP_TEMPLATES[name] == "a photo of a {}."
    layout = {n: (d.folder, d.image_dir, d.split_file) for n, d in COOP_DATASETS.items()}
    assert layout["StanfordCars"] == ("stanford_cars", "", "split_zhou_StanfordCars.json")
    assert layout["SUN397"] == ("sun397", "SUN397", "split_zhou_SUN397.json")
    assert layout["Food101"] == ("food-101", "images", "split_zhou_Food101.json")
    assert layout["UCF101"] == ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json")


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("eurosat", "EuroSAT"),
        ("EUROSAT", "EuroSAT"),
        ("imagenet-sketch", "ImageNetSketch"),
        ("imagenet_a", "ImageNetA"),
        ("imagenet-r", "ImageNetR"),
        ("imagenetv2", "ImageNetV2"),
        ("dtd", "DescribableTextures"),
        ("flowers102", "OxfordFlowers"),
        ("fgvc_aircraft", "FGVCAircraft"),
        ("food-101", "Food101"),
        ("sun397", "SUN397"),
        ("ucf101", "UCF101"),
        ("stanford_cars", "StanfordCars"),
        ("oxford_pets", "OxfordPets"),
    ],
)
def test_aliases(alias, canonical):
    from rlptune.data import canonical_name

    assert canonical_name(alias) == canonical


def _tiny(path: Path, seed_file: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(seed_file, path)


@pytest.fixture()
def seed_png(tmp_path) -> Path:
    path = tmp_path / "seed.png"
    path.write_bytes(_png_bytes())
    return path


def test_eurosat_folder_names_are_rewritten_as_coop_does(tmp_path, seed_png):
    ddir = tmp_path / "eurosat"
    entries = [["AnnualCrop/a.jpg", 0, "AnnualCrop"], ["SeaLake/b.jpg", 1, "SeaLake"]]
    tests = [["AnnualCrop/c.jpg", 0, "AnnualCrop"], ["SeaLake/d.jpg", 1, "SeaLake"]]  # an image has one split
    (ddir).mkdir()
    (ddir / "split_zhou_EuroSAT.json").write_text(json.dumps({"train": entries, "val": [], "test": tests}))
    for e in entries + tests:
        _tiny(ddir / "2750" / e[0], seed_png)
    splits = load_dataset("EuroSAT", tmp_path)
    assert splits.classnames == ["Annual Crop Land", "Sea or Lake"]
    assert splits.train[1].classname == "Sea or Lake"


def test_fgvc_aircraft_variant_files(tmp_path, seed_png):
    ddir = tmp_path / "fgvc_aircraft"
    ddir.mkdir()
    (ddir / "variants.txt").write_text("707-320\nA300B4\nBoeing 717\n")
    files = {
        "train": ["1025794 707-320", "1340192 A300B4", "0056978 Boeing 717", "0062765 707-320"],
        "val": ["0064481 A300B4"],
        "test": ["1123456 Boeing 717"],
    }
    for split, lines in files.items():
        (ddir / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            _tiny(ddir / "images" / (line.split(" ")[0] + ".jpg"), seed_png)
    splits = load_dataset("fgvc-aircraft", tmp_path)
    assert splits.classnames == ["707-320", "A300B4", "Boeing 717"]
    assert [(i.path, i.label) for i in splits.train] == [
        ("1025794.jpg", 0),
        ("1340192.jpg", 1),
        ("0056978.jpg", 2),
        ("0062765.jpg", 0),
    ]
    assert splits.template == "a photo of a {}, a type of aircraft."
    (ddir / "images_variant_test.txt").write_text("1123456 Concorde\n")
    with pytest.raises(RlptuneError, match=r"images_variant_test\.txt: line 1"):
        load_dataset("FGVCAircraft", tmp_path)


def _imagenet_names(path: Path, wnids: list[str]) -> None:
    names = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}
    path.write_text("".join(f"{w} {names[w]}\n" for w in wnids))


WNIDS = ["n01440764", "n01443537", "n01484850"]


def test_imagenet_layout_and_classnames(tmp_path, seed_png):
    ddir = tmp_path / "imagenet"
    ddir.mkdir()
    _imagenet_names(ddir / "classnames.txt", WNIDS)
    for split, count in (("train", 3), ("val", 2)):
        for w in WNIDS:
            for i in range(count):
                _tiny(ddir / "images" / split / w / f"{w}_{i}.JPEG", seed_png)
    splits = load_dataset("imagenet", tmp_path)
    assert splits.classnames == ["tench", "goldfish", "great white shark"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 0, 6)
    assert splits.train[0].path == "train/n01440764/n01440764_0.JPEG"
    assert splits.test[-1].path == "val/n01484850/n01484850_1.JPEG"
    shutil.rmtree(ddir / "images" / "val" / "n01484850")
    with pytest.raises(RlptuneError, match="same 3 class folders"):
        load_dataset("imagenet", tmp_path)


def test_imagenet_unknown_folder_names_classnames_file(tmp_path, seed_png):
    ddir = tmp_path / "imagenet"
    ddir.mkdir()
    _imagenet_names(ddir / "classnames.txt", WNIDS[:2])
    for split in ("train", "val"):
        for w in WNIDS:
            _tiny(ddir / "images" / split / w / "a.JPEG", seed_png)
    with pytest.raises(RlptuneError, match=r"classnames\.txt: class folder 'n01484850'"):
        load_dataset("imagenet", tmp_path)


@pytest.mark.parametrize(
    "name, folder, image_dir",
    [
        ("ImageNetSketch", "imagenet-sketch", "images"),
        ("ImageNetA", "imagenet-adversarial", "imagenet-a"),
        ("ImageNetR", "imagenet-rendition", "imagenet-r"),
    ],
)
def test_imagenet_shift_class_subsets(tmp_path, seed_png, name, folder, image_dir):
    ddir = tmp_path / folder
    ddir.mkdir()
    _imagenet_names(ddir / "classnames.txt", WNIDS)
    for w in (WNIDS[2], WNIDS[0]):  # a subset of the 1000 classes, as ImageNet-A/-R have 200
        for i in range(2):
            _tiny(ddir / image_dir / w / f"{i}.jpg", seed_png)
    (ddir / image_dir / "README.txt").write_text("not a class")
    splits = load_dataset(name, tmp_path)
    assert splits.classnames == ["tench", "great white shark"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (0, 0, 4)
    assert [i.label for i in splits.test] == [0, 0, 1, 1]


def test_imagenet_v2_numbered_folders(tmp_path, seed_png):
    ddir = tmp_path / "imagenetv2"
    ddir.mkdir()
    _imagenet_names(ddir / "classnames.txt", WNIDS)
    image_dir = ddir / "imagenetv2-matched-frequency-format-val"
    for label in range(3):
        _tiny(image_dir / str(label) / "x.jpeg", seed_png)
    splits = load_dataset("imagenet-v2", tmp_path)
    assert splits.classnames == ["tench", "goldfish", "great white shark"]
    assert [(i.path, i.label) for i in splits.test] == [("0/x.jpeg", 0), ("1/x.jpeg", 1), ("2/x.jpeg", 2)]
    shutil.rmtree(image_dir / "1")
    with pytest.raises(RlptuneError, match="class folder '1' not found"):
        load_dataset("ImageNetV2", tmp_path)


def test_missing_dataset_and_root_errors(tmp_path):
    with pytest.raises(RlptuneError, match=r"split_zhou_UCF101\.json not found.*DATASETS\.md"):
        load_dataset("ucf101", tmp_path)
    with pytest.raises(RlptuneError, match="dataset root does not exist"):
        load_dataset("sun397", tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RlptuneError, match="not a folder"):
        load_dataset("food101", tmp_path / "file")


def test_root_from_environment(tmp_path, monkeypatch, seed_png):
    ddir = tmp_path / "stanford_cars"
    ddir.mkdir()
    entries = [["cars_train/00001.jpg", 0, "2012 Tesla Model S"], ["cars_train/00002.jpg", 1, "2012 BMW M3 coupe"]]
    tests = [["cars_test/00003.jpg", 0, "2012 Tesla Model S"], ["cars_test/00004.jpg", 1, "2012 BMW M3 coupe"]]
    (ddir / "split_zhou_StanfordCars.json").write_text(json.dumps({"train": entries, "test": tests}))
    for e in entries + tests:
        _tiny(ddir / e[0], seed_png)
    monkeypatch.setenv("RLPTUNE_DATA", str(tmp_path))
    splits = load_dataset("cars")
    assert Path(splits.root) == ddir  # StanfordCars paths are relative to the dataset folder itself
    assert splits.classnames == ["2012 Tesla Model S", "2012 BMW M3 coupe"]
    monkeypatch.delenv("RLPTUNE_DATA")
    with pytest.raises(RlptuneError, match="RLPTUNE_DATA"):
        load_dataset("cars")
