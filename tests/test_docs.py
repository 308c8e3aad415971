"""Every relative link and every repository path named in the documentation exists.

Checked: README.md, docs/*.md, benchmarks/README.md and reports/*/README.md. A link `[text](target#anchor)`
must reach a file (relative to the document) and, for a markdown target, a heading with that anchor. A path
in code (inline backticks or a fenced block) is checked when it looks like a repository source: under one of
SOURCE_DIRS or ending in one of SOURCE_SUFFIXES. It may be relative to the repository root or to the document.
Outputs that running the pipeline creates (params.yaml's `paths`, the MLflow store, ad-hoc reports) and
patterns such as `reports/<study>/` or `plots/*.png` are not files to check. A ```tree block (the README's map
of the code) names one file or folder a line, indented two spaces a level.
"""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

SOURCE_DIRS = ("language_entropy/", "stages/", "benchmarks/", "docs/", "reports/", "tests/", ".ci/", ".dvc/")
SOURCE_SUFFIXES = (".py", ".md", ".yaml", ".sh", ".txt", ".toml")
OTHER_OUTPUTS = ("mlflow.db", "mlartifacts", "reports/adhoc", "dvc_plots")  # created by running, git-ignored

FENCE = re.compile(r"^ *```(\w*)[^\n]*\n(.*?)^ *```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
PATTERN = re.compile(r"[<>*{}$]|\.\.\.")  # reports/<study>/, plots/*.png, data/{train,val}.parquet, "$run/params.yaml"
TREE_LINE = re.compile(r"^( *)(\S+)")


def documents(root: Path) -> list[Path]:
    found = [root / "README.md", root / "benchmarks" / "README.md", *sorted((root / "docs").glob("*.md")),
             *sorted((root / "reports").glob("*/README.md"))]
    return [path for path in found if path.is_file()]


def output_locations(root: Path) -> tuple[str, ...]:
    """Where the pipeline writes: each `paths` entry (a file's folder for a file) and the git-ignored stores."""
    paths = yaml.safe_load((root / "params.yaml").read_text())["paths"]
    folders = [str(Path(value).parent) if Path(value).suffix else value for value in paths.values()]
    return (*folders, *OTHER_OUTPUTS)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    text = FENCE.sub("", document.read_text())
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def tree_paths(block: str) -> list[str]:
    """The paths a ```tree block names: `dir/` then its entries indented two spaces deeper."""
    folders: list[str] = []
    paths = []
    for line in block.splitlines():
        match = TREE_LINE.match(line)
        if not match:
            continue
        depth, name = len(match.group(1)) // 2, match.group(2)
        folders = folders[:depth]
        paths.append("/".join([*folders, name.rstrip("/")]))
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
    return paths


def source_paths(code: str) -> list[str]:
    """The words of a piece of code that look like repository sources (a command's arguments included)."""
    paths = []
    for word in code.split():
        word = word.strip("()[],;:.'\"")
        if "://" in word or PATTERN.search(word):
            continue
        if word.startswith(SOURCE_DIRS) or word.endswith(SOURCE_SUFFIXES):
            paths.append(word)
    return paths


def problems(document: Path, root: Path) -> list[str]:
    """One line per link or path in `document` that does not exist."""
    text = document.read_text()
    name = document.relative_to(root)
    found = []
    named = []
    for language, block in FENCE.findall(text):
        named += tree_paths(block) if language == "tree" else source_paths(block)
    prose = FENCE.sub("", text)
    for code in INLINE_CODE.findall(prose):
        named += source_paths(code)
    outputs = output_locations(root)
    for path in named:
        if path.rstrip("/") in outputs or path.startswith(tuple(f"{output}/" for output in outputs)):
            continue
        if not ((root / path).exists() or (document.parent / path).exists()):
            found.append(f"{name}: path `{path}` does not exist")
    for target in LINK.findall(prose):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        linked = (document.parent / file) if file else document
        if not linked.exists():
            found.append(f"{name}: link ({target}) reaches no file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            found.append(f"{name}: link ({target}) names no heading of {file or name}")
    return list(dict.fromkeys(found))  # a link used twice is one problem


def test_every_link_and_path_in_the_documentation_exists():
    checked = documents(ROOT)
    assert {"README.md", "docs/pipeline.md", "docs/params.md"} <= {str(p.relative_to(ROOT)) for p in checked}
    missing = [line for document in checked for line in problems(document, ROOT)]
    assert not missing, "\n".join(missing)


def test_the_check_finds_broken_links_missing_paths_and_wrong_anchors(tmp_path):
    (tmp_path / "params.yaml").write_text("paths: {data: data, model: models/model.pt, metrics: metrics}\n")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "train.py").write_text("")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## The study report\n")
    (tmp_path / "README.md").write_text(
        "# Project\n"
        "Good: [guide](docs/guide.md#the-study-report), `stages/train.py`, `python stages/train.py --base X`,\n"
        "outputs `models/model.pt` and `metrics/eval.json`, patterns `reports/<study>/` and `plots/*.png`,\n"
        "a web link [DVC](https://dvc.org).\n"
        "Broken: [params](docs/params.md), [anchor](docs/guide.md#no-such-heading), `stages/finetune.py`.\n"
        "```bash\npython stages/evaluate.py --quiet\n```\n"
        "```tree\nstages/\n  train.py\n  visualize.py\nparams.yaml\n```\n")
    assert problems(tmp_path / "README.md", tmp_path) == [
        "README.md: path `stages/evaluate.py` does not exist",
        "README.md: path `stages/visualize.py` does not exist",
        "README.md: path `stages/finetune.py` does not exist",
        "README.md: link (docs/params.md) reaches no file",
        "README.md: link (docs/guide.md#no-such-heading) names no heading of docs/guide.md",
    ]


def test_tree_paths_follow_the_indentation():
    block = "language_entropy/   components\n  model.py   the model\n  pipeline/\n    cli.py\nstages/\n"
    assert tree_paths(block) == ["language_entropy", "language_entropy/model.py", "language_entropy/pipeline",
                                 "language_entropy/pipeline/cli.py", "stages"]
