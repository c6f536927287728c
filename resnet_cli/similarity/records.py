"""The results of index, search, duplicates and audit: plain records with a JSON form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class IndexSummary:
    """What `build_index` wrote."""

    path: str
    rows: int  # rows in the index now
    added: int  # rows this run added
    failed: int  # inputs that could not be read
    dim: int
    model: str  # the model the rows come from, for messages


@dataclass(frozen=True)
class Neighbor:
    """An indexed image and its cosine similarity to the query."""

    path: str
    similarity: float


@dataclass(frozen=True)
class SearchHit:
    """One query and its nearest indexed images, nearest first."""

    path: str
    neighbors: tuple[Neighbor, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "neighbors": [
            {"path": n.path, "similarity": round(n.similarity, 6)} for n in self.neighbors]}


@dataclass(frozen=True)
class Group:
    """Copies ("copy": the same picture re-encoded, resized or slightly cropped) or near
    duplicates ("near": close in feature space). `paths[0]` is the representative; every other
    member is within the threshold of it, and `similarity` is the lowest member's."""

    paths: tuple[str, ...]
    kind: str
    similarity: float

    def to_dict(self) -> dict[str, Any]:
        return {"paths": list(self.paths), "kind": self.kind,
                "similarity": round(self.similarity, 6)}


@dataclass(frozen=True)
class Unreadable:
    """An input the reader refused, with its one-line reason."""

    path: str
    error: str


@dataclass(frozen=True)
class DuplicatesResult:
    """The groups found among `inputs` images (copies first, then near duplicates)."""

    groups: tuple[Group, ...]
    inputs: int
    copy_bits: int  # the Hamming-distance threshold of copies (of 64 bits)
    threshold: float | None  # the cosine threshold of near duplicates; None: not searched
    unreadable: tuple[Unreadable, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [g.to_dict() for g in self.groups]}


@dataclass(frozen=True)
class LabelIssue:
    """A likely label error: the folder's label, the class the out-of-sample model suggests,
    and cleanlab's label quality score (low: likely wrong)."""

    path: str
    label: str
    suggested: str
    score: float


@dataclass(frozen=True)
class Leak:
    """A training image with a copy or near duplicate in the test set."""

    paths: tuple[str, str]
    similarity: float
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return {"paths": list(self.paths), "similarity": round(self.similarity, 6),
                "kind": self.kind}


@dataclass(frozen=True)
class Outlier:
    """An image far from every neighbour: `score` is its mean cosine distance to its
    nearest neighbours."""

    path: str
    score: float


@dataclass(frozen=True)
class ClassRow:
    """One class: its images, its share, whether it is underrepresented."""

    name: str
    count: int
    share: float
    underrepresented: bool


@dataclass(frozen=True)
class Overlap:
    """Two classes the out-of-sample model confuses: cleanlab's joint probability of the
    pair, and the images of one labelled as the other."""

    classes: tuple[str, str]
    joint_probability: float
    examples: int

    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes),
                "joint_probability": round(self.joint_probability, 6),
                "examples": self.examples}


@dataclass(frozen=True)
class AuditResult:
    """Everything `audit` found, most important first within each list."""

    data_dir: str
    test_dir: str | None
    model: str
    images: int
    test_images: int
    label_issues: tuple[LabelIssue, ...]
    duplicates: tuple[Group, ...]
    leaks: tuple[Leak, ...]
    outliers: tuple[Outlier, ...]
    unreadable: tuple[Unreadable, ...]
    classes: tuple[ClassRow, ...]
    overlaps: tuple[Overlap, ...]
    cv_accuracy: float  # accuracy of the out-of-sample probabilities against the labels
    # neighbours of each finding's image, for the page: path -> [(path, similarity), ...]
    neighbors: dict[str, tuple[Neighbor, ...]] = field(default_factory=dict, repr=False)
    labels: dict[str, str] = field(default_factory=dict, repr=False)  # path -> class name

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir, "test_dir": self.test_dir, "model": self.model,
            "images": self.images, "test_images": self.test_images,
            "cv_accuracy": round(self.cv_accuracy, 6),
            "label_issues": [{**asdict(i), "score": round(i.score, 6)}
                             for i in self.label_issues],
            "duplicates": [g.to_dict() for g in self.duplicates],
            "leaks": [leak.to_dict() for leak in self.leaks],
            "outliers": [{"path": o.path, "score": round(o.score, 6)} for o in self.outliers],
            "unreadable": [asdict(u) for u in self.unreadable],
            "classes": [{**asdict(c), "share": round(c.share, 6)} for c in self.classes],
            "overlapping_classes": [o.to_dict() for o in self.overlaps],
        }
